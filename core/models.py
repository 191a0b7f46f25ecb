"""Model loading: the one place that calls Unsloth's and PEFT's loaders.

`load_model_and_tokenizer` takes a hub id, a local model, a LoRA adapter directory or the name
`embedded`, through the `unsloth` backend (FastLanguageModel; on a GPU its kernels and vLLM) or
the plain `hf` one, in the precision core/precision.py decided, 4-bit or 16-bit, and attaches
LoRA. It also owns the checks a loaded model must pass (a chat template, a pad token distinct
from eos, at least one trainable weight).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.adapters import adapter_base, adapter_rank, adapter_view, is_local_path, is_prequantized
from core.cli import UserError
from core.config import ModelArguments
from core.embedded import resolve_model_name
from core.launch import check_launch, hf_device_map, quant_storage_for_launch
from core.precision import check_device, precision_for


def default_target_modules(model) -> list[str]:
    """LoRA targets: every attention/MLP projection of the architecture (GPT-2 uses Conv1D)."""
    names = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        kind = type(module).__name__
        if kind in ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D") and leaf not in ("lm_head", "score", "embed_out"):
            names.add(leaf)
    if not names:
        raise UserError(f"found no linear layers to attach LoRA to in {type(model).__name__}; set lora_target_modules")
    return sorted(names)


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give the tokenizer a pad token that is not eos.

    TRL builds attention masks as `ids != pad_token_id` (PPO) and masks labels at pad; with
    pad == eos a chat prompt containing eos would be silently masked.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<|fim_pad|>", "<|PAD_TOKEN|>", "<pad>", "[PAD]"):
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            break
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def model_name(margs: ModelArguments) -> str:
    """`model_name_or_path` as something to load: `embedded` resolved to its directory, `~` expanded;
    a missing name or a local path that does not exist is one clear error."""
    margs.model_name_or_path = resolve_model_name(margs.model_name_or_path)  # "embedded" -> its directory
    name = os.path.expanduser(margs.model_name_or_path or "")
    if not name:
        raise UserError("model_name_or_path is not set: give a hub id, a local model directory or `embedded`")
    if is_local_path(name) and not os.path.exists(name):
        raise UserError(f"model path not found: {name} (check the path, or run `make tiny-models` for the tiny configs)")
    return name


def load_model_and_tokenizer(margs: ModelArguments, seed: int = 42, for_training: bool = True):
    """Load a causal LM and tokenizer through the chosen backend and attach LoRA.

    `model_name_or_path` may be a hub id, a local model directory, or a LoRA adapter directory (its
    base is loaded and the adapter continues training). Returns `(model, tokenizer)`; prints one
    line saying which backend, device and precision were chosen.
    """
    name = model_name(margs)
    device = check_device(margs)
    check_launch(margs)
    base = adapter_base(name) if os.path.isdir(name) else None
    load_name = base or name
    want_4bit = bool(margs.load_in_4bit)
    # Without LoRA every weight trains. Unsloth must be told: on a GPU an architecture without a
    # fast path (GPT-2) goes through FastModel, which otherwise switches to "16-bit LoRA" mode and
    # freezes every weight - the run would finish with 0 trainable parameters.
    full_finetuning = for_training and not margs.use_peft and base is None
    if full_finetuning and want_4bit:
        raise UserError("use_peft: false trains every weight, which 4-bit weights cannot do; "
                        "set load_in_4bit: false (or use_peft: true for QLoRA)")
    # Frozen (LoRA base) weights in the decided dtype; weights that all train keep float32 masters
    # and compute under the trainer's bf16/fp16 autocast (set from the same decision).
    precision = precision_for(margs.dtype, device, margs.backend)
    dtype = __import__("torch").float32 if full_finetuning else precision.torch_dtype()

    fast_inference = False
    if margs.fast_inference:
        refusal = vllm_refusal(margs, device, dtype, want_4bit or is_prequantized(load_name), full_finetuning)
        if refusal is None:
            fast_inference = True
        else:
            print(f"[model] {refusal}: generating with Hugging Face generate instead")

    t0 = time.time()
    try:
        if margs.backend == "unsloth":
            # An adapter directory goes to Unsloth as is: it loads the base, attaches the adapter
            # trainable and patches it (fast LoRA kernels, offloaded checkpointing, and on a GPU
            # with vLLM the LoRA request that makes generation sample from the adapter).
            source = adapter_view(name, base) if base is not None else name
            model, tokenizer = _load_unsloth(margs, source, dtype, want_4bit, fast_inference, full_finetuning)
        else:
            model, tokenizer = _load_hf(margs, load_name, dtype, want_4bit, device)
    except OSError as err:
        raise UserError(
            f"could not load model {load_name!r}: {str(err).splitlines()[0]} "
            "(offline? use a local directory, e.g. the embedded model: make demo)"
        ) from None

    where = f"CUDA ({__import__('torch').cuda.get_device_name(0)})" if device == "cuda" else "CPU"
    print(
        f"[model] {load_name}: backend={margs.backend} on {where}, "
        f"{'4-bit' if want_4bit else str(dtype).replace('torch.', '')} weights, "
        f"generation={'vLLM' if fast_inference else 'HF generate'} ({time.time() - t0:.1f}s)"
    )

    if tokenizer.chat_template is None and margs.require_chat_template:
        raise UserError(
            f"{load_name} has no chat template; use an -Instruct model or set require_chat_template: false"
        )
    ensure_pad_token(tokenizer, model)
    tokenizer.padding_side = "left"  # generation appends to the right end of every row

    if base is not None:
        if margs.backend != "unsloth":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, name, is_trainable=for_training)
        elif not for_training:
            model.requires_grad_(False)
        # "continuing" only when it trains: eval and chat load adapters too, and must not say so.
        print(f"[model] continuing the LoRA adapter from {name}" if for_training
              else f"[model] with the LoRA adapter {name} (frozen: inference only)")
    elif margs.use_peft and for_training:
        model = _attach_lora(margs, model, seed)
    if for_training:
        require_trainable(model, load_name)
    return model, tokenizer


def vllm_refusal(margs: ModelArguments, device: str, dtype, bitsandbytes: bool,
                 full_finetuning: bool = False) -> str | None:
    """Why Unsloth's vLLM path (`fast_inference`) cannot start for this load, or None when it can.

    Checked before loading, because unsloth_zoo's `load_vllm` raises deep inside the load instead:
    since vLLM 0.28 a bitsandbytes model (`load_in_4bit`, or a `-bnb-4bit` checkpoint) needs the
    `vllm-bnb-plugin` package, and vLLM computes in bfloat16 or float16 only ("We do not support
    dtype = torch.float32"). tests/test_vllm_path.py drives the installed `load_vllm` to pin both.
    """
    import importlib.util
    import sys

    if device != "cuda":
        return "fast_inference (vLLM) needs a CUDA GPU"
    if margs.backend != "unsloth":
        return "fast_inference is Unsloth's vLLM path and this run uses backend: hf (TRL's use_vllm serves vLLM there)"
    try:
        import vllm  # noqa: F401
    except ImportError:
        if sys.version_info < (3, 11):
            return "fast_inference needs vLLM, and the vllm extra needs Python >= 3.11 (vLLM 0.33 does not install on 3.10)"
        return "fast_inference needs vLLM, which is not installed (pip install -e '.[vllm]')"
    if bitsandbytes and importlib.util.find_spec("vllm_bnb_plugin") is None:
        return ("fast_inference with 4-bit weights needs the vllm-bnb-plugin package (vLLM >= 0.28 moved "
                "bitsandbytes loading out of vLLM): pip install -e '.[vllm]' installs it")
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        why = "full finetuning keeps float32 master weights" if full_finetuning else "set dtype: auto"
        return f"vLLM computes in bfloat16 or float16, not {str(dtype).replace('torch.', '')} ({why})"
    return None


def load_tokenizer(margs: ModelArguments):
    """The tokenizer a run will use, without loading the model: the adapter directory's own when it
    has one, else the (base) model's. For checks that should fail before minutes of model loading."""
    from transformers import AutoTokenizer

    name = model_name(margs)
    base = adapter_base(name) if os.path.isdir(name) else None
    source = name if base is None or (Path(name) / "tokenizer_config.json").is_file() else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=margs.trust_remote_code)
    except OSError as err:
        raise UserError(f"could not load the tokenizer of {source!r}: {str(err).splitlines()[0]} "
                        "(offline? use a local directory, e.g. the embedded model: make demo)") from None
    return tokenizer


def _load_unsloth(margs, name, dtype, want_4bit, fast_inference, full_finetuning):
    from unsloth import FastLanguageModel

    kwargs = dict(
        model_name=name,
        max_seq_length=margs.max_seq_length,
        dtype=dtype,
        load_in_4bit=want_4bit,
        full_finetuning=full_finetuning,
        trust_remote_code=margs.trust_remote_code,
    )
    if fast_inference:
        # vLLM's LoRA slots must hold the adapter being continued, whatever lora_r says.
        rank = max(margs.lora_r, adapter_rank(name) or 0)
        kwargs.update(fast_inference=True, gpu_memory_utilization=margs.gpu_memory_utilization,
                      max_lora_rank=rank)
    return FastLanguageModel.from_pretrained(**kwargs)


def trainable_parameters(model) -> int:
    """Parameters that receive gradients (DeepSpeed ZeRO-3 keeps the real count in `ds_numel`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def require_trainable(model, name: str = "the model") -> int:
    """Fail when nothing in `model` would train; returns the trainable parameter count."""
    count = trainable_parameters(model)
    if count == 0:
        raise UserError(
            f"{name} has 0 trainable parameters: the run would change nothing. Set use_peft: true (LoRA) "
            "or check lora_target_modules; with use_peft: false every weight must be trainable"
        )
    return count


def _load_hf(margs, name, dtype, want_4bit, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = None
    if want_4bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=margs.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=margs.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=quant_storage_for_launch(margs, dtype),
        )
    model = AutoModelForCausalLM.from_pretrained(
        name,
        dtype=dtype,
        quantization_config=quant,
        device_map=hf_device_map(device),
        trust_remote_code=margs.trust_remote_code,
        attn_implementation=margs.attn_implementation,
    )
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=margs.trust_remote_code)
    return model, tokenizer


def _attach_lora(margs: ModelArguments, model, seed: int):
    targets = margs.lora_target_modules or default_target_modules(model)
    checkpointing = {"unsloth": "unsloth", "true": True, "false": False}[margs.gradient_checkpointing_mode]
    if margs.backend == "unsloth":
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model,
            r=margs.lora_r,
            lora_alpha=margs.lora_alpha,
            lora_dropout=margs.lora_dropout,
            target_modules=targets,
            bias="none",
            use_gradient_checkpointing=checkpointing,
            use_rslora=margs.use_rslora,
            random_state=seed,
            max_seq_length=margs.max_seq_length,
        )
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if margs.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(checkpointing))
        elif checkpointing:
            model.gradient_checkpointing_enable()
        config = LoraConfig(
            r=margs.lora_r,
            lora_alpha=margs.lora_alpha,
            lora_dropout=margs.lora_dropout,
            target_modules=targets,
            use_rslora=margs.use_rslora,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[model] LoRA r={margs.lora_r} alpha={margs.lora_alpha} on {','.join(targets)}: {trainable:,} trainable")
    return model
