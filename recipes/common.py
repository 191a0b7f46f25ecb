"""What every recipe shares: config parsing, the one model loader, run directories, saving.

This is the only module that calls `FastLanguageModel.from_pretrained` and `get_peft_model`.
Recipes import `recipes.boot` first (it imports Unsloth before transformers/TRL), then this.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback, TrainingArguments
from trl import ModelConfig, TrlParser

from data.common import DataError
from data.files import write_json_atomic as write_json
from data.files import write_text_atomic
from recipes.precision import Precision, decide_for
from recipes.threads import apply_cpu_threads


class UserError(Exception):
    """A mistake the user can fix; `run_cli` prints it as one line and exits non-zero."""


def run_cli(main, argv: list[str] | None = None) -> None:
    """Run a recipe's `main(argv)`, turning user mistakes into one clear line and exit code 2. On a
    CPU it first sets the thread count to the cores other jobs leave free (`recipes.threads`)."""
    try:
        apply_cpu_threads()
        main(argv)
    except (UserError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with --resume to continue from the last checkpoint",
              file=sys.stderr)
        sys.exit(130)


# --------------------------------------------------------------------------------------- configs
@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig` plus what the Unsloth loader needs.

    Fields added to (or changed from) TRL's:
        dtype (`str`, defaults to `"auto"`): bf16 where the hardware has it, else fp16.
        backend (`str`, defaults to `"unsloth"`): `unsloth` (FastLanguageModel) or `hf` (plain
            transformers + PEFT + bitsandbytes), same LoRA settings and outputs.
        max_seq_length (`int`, defaults to `2048`): longest prompt + completion the model sees.
        gradient_checkpointing_mode (`str`, defaults to `"unsloth"`): `unsloth` (offloaded, least
            memory), `true` (standard) or `false`.
        fast_inference (`bool`, defaults to `False`): generate with vLLM through Unsloth. Needs a
            GPU and the `vllm` extra; otherwise the run says so and uses HF `generate`.
        gpu_memory_utilization (`float`, defaults to `0.6`): vLLM's share of GPU memory.
        trust_remote_code (`bool`, defaults to `False`): allow model code from the hub.
        require_chat_template (`bool`, defaults to `True`): fail when the tokenizer has no chat
            template (chat recipes need one; the PPO GPT-2 does not).
        device (`str`, defaults to `"auto"`): `auto`, `cuda` or `cpu`; `cuda` fails on a machine
            without a GPU instead of silently training on the CPU.
    """

    dtype: str | None = field(
        default="auto", metadata={"help": "'auto' (bf16 where supported), 'bfloat16', 'float16' or 'float32'."}
    )
    backend: str = field(default="unsloth", metadata={"help": "Model backend: 'unsloth' or 'hf'."})
    max_seq_length: int = field(default=2048, metadata={"help": "Maximum prompt + completion tokens."})
    gradient_checkpointing_mode: str = field(
        default="unsloth", metadata={"help": "Gradient checkpointing: 'unsloth', 'true' or 'false'."}
    )
    fast_inference: bool = field(default=False, metadata={"help": "Use vLLM through Unsloth for generation."})
    gpu_memory_utilization: float = field(default=0.6, metadata={"help": "vLLM share of GPU memory."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub."})
    require_chat_template: bool = field(default=True, metadata={"help": "Fail if the tokenizer lacks a chat template."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cuda' or 'cpu'."})

    def __post_init__(self):
        super().__post_init__()
        if self.backend not in ("unsloth", "hf"):
            raise UserError(f"backend must be 'unsloth' or 'hf', got {self.backend!r}")
        if self.gradient_checkpointing_mode not in ("unsloth", "true", "false"):
            raise UserError("gradient_checkpointing_mode must be 'unsloth', 'true' or 'false'")
        if self.device not in ("auto", "cuda", "cpu"):
            raise UserError(f"device must be 'auto', 'cuda' or 'cpu', got {self.device!r}")


@dataclass
class RunArguments:
    """Options about the run directory, shared by every recipe.

    Fields:
        resume (`bool`, defaults to `False`): continue from the last checkpoint in `output_dir`.
        save_merged (`bool`, defaults to `False`): also save the model with the adapter merged, in
            16-bit, under `output_dir/merged` (for vLLM serving or as the next stage's base).
        on_bad_rows (`str`, defaults to `"skip"`): `skip` or `fail` on malformed data rows.
        on_long_rows (`str`, defaults to `"fail"`): rows longer than the model's window (prompt +
            completion budget): `fail` stops before training with the numbers and the fix, `drop`
            trains without them.
    """

    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})
    save_merged: bool = field(default=False, metadata={"help": "Also save a merged 16-bit model."})
    on_bad_rows: str = field(default="skip", metadata={"help": "'skip' or 'fail' on malformed data rows."})
    on_long_rows: str = field(default="fail", metadata={"help": "'fail' or 'drop' rows longer than the model's window."})


class _SharedFieldParser(TrlParser):
    """TrlParser where a field declared by several dataclasses is ONE option whose value reaches all
    of them: `trust_remote_code` is in ModelArguments and in TRL's SFT/DPO/GRPO/Reward configs, and
    plain argparse refuses the duplicate option."""

    def __init__(self, dataclass_types):
        super().__init__(dataclass_types, conflict_handler="resolve")

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        namespace, remaining = self.parse_known_args(args=args)
        values = vars(namespace)
        if any(issubclass(t, TrainingArguments) for t in self.dataclass_types):
            apply_precision(values)
        outputs = [
            dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values})
            for dtype in self.dataclass_types
        ]
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:
            raise ValueError(f"unknown command-line option(s): {' '.join(remaining)}")
        return tuple(outputs)


def parse_args(dataclass_types: list[type], argv: list[str] | None = None) -> tuple[Any, ...]:
    """`--config file.yaml` plus `--key value` overrides -> dataclasses, through TRL's parser.

    Unknown YAML keys fail before any model is loaded, with the closest known names suggested.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise UserError("--config needs a YAML file path")
        path = argv[index + 1]
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path} (see configs/ for the shipped ones)")
        try:
            with open(path, encoding="utf-8") as fh:
                config = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise UserError(f"{path} must be a YAML mapping of option: value")
        unknown = sorted(set(config) - known - {"env"})
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
            raise UserError(f"unknown key(s) in {path}: {', '.join(hints)}. Remove them or fix the spelling.")
    explicit = set(config) if "--config" in argv else set()
    explicit |= {a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and a != "--config"}
    LAST_PARSE["explicit"] = explicit
    parser = _SharedFieldParser(dataclass_types)
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as err:  # TRL/HF raise ValueError for bad values
        raise UserError(str(err).splitlines()[0]) from None


def config_to_dict(*configs: Any) -> dict[str, Any]:
    """Flatten dataclass configs into one JSON-able dict (later configs win on shared names)."""
    resolved: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if hasattr(value, "value"):  # enums
                value = value.value
            try:
                json.dumps(value)
            except TypeError:
                value = repr(value)
            resolved[f.name] = value
    return resolved


# --------------------------------------------------------------------------------------- devices
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(requested: str | None) -> str:
    """`auto`/`cuda`/`cpu` -> the device a run uses, failing clearly when `cuda` is asked of a machine
    without a GPU (instead of silently training on the CPU)."""
    requested = requested or "auto"
    if requested == "cuda" and not has_cuda():
        raise UserError("device: cuda was requested but no CUDA GPU is visible; use device: auto (or cpu)")
    return "cuda" if (requested != "cpu" and has_cuda()) else "cpu"


def check_device(margs: ModelArguments) -> str:
    """Resolve `margs.device` (see `resolve_device`)."""
    return resolve_device(margs.device)


_ANNOUNCED: set[Precision] = set()


def precision_for(requested: str | None, device: str) -> Precision:
    """The precision decision (recipes/precision.py) for this machine, printed once per process."""
    try:
        precision = decide_for(requested, device)
    except ValueError as err:
        raise UserError(str(err)) from None
    if precision not in _ANNOUNCED and is_main_process():
        _ANNOUNCED.add(precision)
        print(precision.line())
    return precision


def apply_precision(values: dict[str, Any]) -> Precision:
    """Set the trainer's bf16/fp16 (and use_cpu on a CPU) from the precision decision, in the parsed
    option values, before any `TrainingArguments` validates them.

    The config's `dtype` (ModelArguments; `auto` for recipes without one) is the preference; the
    config's own `bf16`/`fp16` are overruled by the decision, and the line printed says so.
    """
    device = resolve_device(values.get("device"))
    precision = precision_for(values.get("dtype"), device)
    stated = {k: values.get(k) for k in ("bf16", "fp16") if isinstance(values.get(k), bool)}
    overruled = [f"{k}: {str(v).lower()}" for k, v in stated.items() if v != getattr(precision, k)]
    if overruled and is_main_process():
        print(f"[precision] the config's {', '.join(overruled)} follows the decision: "
              f"bf16={str(precision.bf16).lower()}, fp16={str(precision.fp16).lower()}")
    values["bf16"], values["fp16"] = precision.bf16, precision.fp16
    if device == "cpu" and "use_cpu" in values:
        values["use_cpu"] = True  # TrainingArguments accepts bf16 without a GPU only with use_cpu
    LAST_PARSE["precision"] = precision
    return precision


# What the last `parse_args` decided and which keys the user stated (YAML or command line):
# recipes record the first in run_info.json and check the second against what the trainer got.
LAST_PARSE: dict[str, Any] = {"precision": None, "explicit": set()}


# ------------------------------------------------------------------------------------ model load
def is_local_path(name: str) -> bool:
    """A model name that can only be a local path (hub ids look like 'org/name')."""
    return name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1


def adapter_base(path: str) -> str | None:
    """The base model named by a LoRA adapter directory, or None if `path` is not an adapter."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    from recipes.adapters import resolve_adapter_base  # any working directory, moved run folders

    return resolve_adapter_base(path)


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


def load_model_and_tokenizer(margs: ModelArguments, seed: int = 42, for_training: bool = True):
    """Load a causal LM and tokenizer through the chosen backend and attach LoRA.

    `model_name_or_path` may be a hub id, a local model directory, or a LoRA adapter directory (its
    base is loaded and the adapter continues training). Returns `(model, tokenizer)`; prints one
    line saying which backend, device and precision were chosen.
    """
    name = os.path.expanduser(margs.model_name_or_path or "")
    if not name:
        raise UserError("model_name_or_path is not set: give a hub id or a local model directory")
    if is_local_path(name) and not os.path.exists(name):
        raise UserError(f"model path not found: {name} (check the path, or run `make tiny-models` for the tiny configs)")
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
    precision = precision_for(margs.dtype, device)
    dtype = __import__("torch").float32 if full_finetuning else precision.torch_dtype()

    fast_inference = False
    if margs.fast_inference:
        if device != "cuda":
            print("[model] fast_inference (vLLM) needs a CUDA GPU: generating with Hugging Face generate instead")
        elif margs.backend != "unsloth":
            print("[model] fast_inference is Unsloth's vLLM path; backend hf generates with HF generate "
                  "(use TRL's use_vllm for a vLLM server)")
        else:
            try:
                import vllm  # noqa: F401
                fast_inference = True
            except ImportError:
                print("[model] fast_inference requested but vLLM is not installed (pip install '.[vllm]'): "
                      "generating with Hugging Face generate")

    t0 = time.time()
    try:
        if margs.backend == "unsloth":
            # An adapter directory goes to Unsloth as is: it loads the base, attaches the adapter
            # trainable and patches it (fast LoRA kernels, offloaded checkpointing, and on a GPU
            # with vLLM the LoRA request that makes generation sample from the adapter).
            source = _adapter_view(name, base) if base is not None else name
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
        print(f"[model] continuing the LoRA adapter from {name}")
    elif margs.use_peft and for_training:
        model = _attach_lora(margs, model, seed)
    if for_training:
        require_trainable(model, load_name)
    return model, tokenizer


def load_tokenizer(margs: ModelArguments):
    """The tokenizer a run will use, without loading the model: the adapter directory's own when it
    has one, else the (base) model's. For checks that should fail before minutes of model loading."""
    from transformers import AutoTokenizer

    name = os.path.expanduser(margs.model_name_or_path or "")
    if not name:
        raise UserError("model_name_or_path is not set: give a hub id or a local model directory")
    if is_local_path(name) and not os.path.exists(name):
        raise UserError(f"model path not found: {name} (check the path, or run `make tiny-models` for the tiny configs)")
    base = adapter_base(name) if os.path.isdir(name) else None
    source = name if base is None or (Path(name) / "tokenizer_config.json").is_file() else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=margs.trust_remote_code)
    except OSError as err:
        raise UserError(f"could not load the tokenizer of {source!r}: {str(err).splitlines()[0]} "
                        "(offline? use a local directory, e.g. the embedded model: make demo)") from None
    return tokenizer


def _adapter_view(adapter_dir: str, base: str) -> str:
    """The adapter as Unsloth should see it. Unsloth reads `base_model_name_or_path` as written, so
    a base recorded as a relative path (run from another directory, or a moved run folder) would
    not load; then a temporary view of the adapter (its files linked, its config naming the base
    resolved by recipes/adapters.py) is handed over instead. Nothing in the run folder changes."""
    import atexit
    import shutil
    import tempfile

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    recorded = config.get("base_model_name_or_path") or ""
    if recorded == base or not os.path.isdir(base) or (
            os.path.isdir(recorded) and Path(recorded).resolve() == Path(base).resolve()):
        return adapter_dir  # it loads as written (a hub id, or a path valid from here)
    view = Path(tempfile.mkdtemp(prefix="virl-adapter-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for item in Path(adapter_dir).iterdir():
        if item.name != "adapter_config.json":
            (view / item.name).symlink_to(item.resolve())
    config["base_model_name_or_path"] = base
    (view / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return str(view)


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


def adapter_rank(path: str) -> int | None:
    """The LoRA rank `r` of an adapter directory (None when `path` is not one)."""
    config = Path(path) / "adapter_config.json"
    return json.loads(config.read_text()).get("r") if config.is_file() else None


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


def check_lengths(dataset, tokenizer, columns: list[str], limit: int, reserve: int, what: str, on_long_rows: str,
                  fix: str):
    """The length budget (data/lengths.py) with the recipe's numbers; returns the dataset kept."""
    from data.lengths import enforce_budget, sequence_lengths

    lengths = sequence_lengths(dataset, tokenizer, columns)
    return enforce_budget(dataset, lengths, limit=limit, reserve=reserve, what=what, on_overflow=on_long_rows, fix=fix)


# --------------------------------------------------------------------------------- run directory
def prepare_output_dir(output_dir: str, resume: bool) -> str | None:
    """Make `output_dir` ready; returns the checkpoint to resume from, if any.

    A non-empty directory is never overwritten: without `--resume` the run refuses to start.
    """
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir {output_dir} is a file; choose a directory")
    occupied = path.is_dir() and any(path.iterdir())
    if occupied and not resume and _only_bookkeeping(path):
        # A run that failed before its first checkpoint (bad data, model not found) left only
        # its config records: nothing to lose, so the fixed command may start it again.
        print(f"[run] {output_dir} holds only the records of a run that never saved anything: starting it anew")
        for stale in path.iterdir():
            if stale.is_file():
                stale.unlink()
        occupied = False
    if not occupied:
        if resume:
            raise UserError(f"--resume given but {output_dir} holds no run yet; drop --resume to start it")
        path.mkdir(parents=True, exist_ok=True)
        wait_for_all_processes()  # or a slower rank would find rank 0's first files and refuse
        return None
    if not resume:
        raise UserError(
            f"{output_dir} already holds a run; pass --resume to continue it, "
            "or --output_dir NEW_DIR to start fresh (nothing is overwritten)"
        )
    checkpoint = get_last_checkpoint(str(path))
    if checkpoint is None:
        raise UserError(f"--resume: no checkpoint-* directory in {output_dir} to resume from")
    print(f"[run] resuming from {checkpoint}")
    return checkpoint


BOOKKEEPING = ("config.yaml", "run_info.json")


def _only_bookkeeping(path: Path) -> bool:
    """True when a run directory holds nothing but what `write_run_info` writes at the start."""
    names = [p.name for p in path.iterdir()]
    return all(n in BOOKKEEPING or (n.startswith("config.resume-") and n.endswith((".yaml", ".json")))
               or n.startswith(".") for n in names)


def git_revision() -> str:
    """The repository's HEAD commit (with '+dirty' when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers, plus the device."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
                "unsloth", "unsloth_zoo", "vllm"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    import torch

    versions["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return versions


def is_main_process() -> bool:
    """Rank 0 (or a single process): only it writes run files."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def write_run_info(output_dir: str, *configs: Any, extra: dict[str, Any] | None = None) -> None:
    """Record the resolved config, library versions and git revision in the run directory."""
    if not is_main_process():
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = config_to_dict(*configs)
    name = "config.yaml" if not (out / "config.yaml").exists() else f"config.resume-{int(time.time())}.yaml"
    write_text_atomic(out / name, yaml.safe_dump(resolved, allow_unicode=True, sort_keys=True))
    info = {"git_revision": git_revision(), "versions": library_versions(), "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "launch": dataclasses.asdict(current_launch())}
    if LAST_PARSE["precision"] is not None:
        info["precision"] = dataclasses.asdict(LAST_PARSE["precision"])
    if extra:
        info.update(extra)
    write_json(out / ("run_info.json" if name == "config.yaml" else name.replace(".yaml", ".run_info.json")), info)


class JsonlMetricsCallback(TrainerCallback):
    """Append every logged metrics dict to `output_dir/metrics.jsonl` (rank 0 only).

    The first row logged after an optimizer step also gets `step_seconds` (that step's wall time,
    generation included) and, on a GPU, `peak_memory_gb` / `peak_reserved_gb` (this process's
    `torch.cuda.max_memory_allocated` / `max_memory_reserved` so far); `bench/` reads them.
    """

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / "metrics.jsonl"
        self._step_start: float | None = None
        self._step_stats: dict[str, float] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is None:
            return
        self._step_stats = {"step_seconds": round(time.perf_counter() - self._step_start, 4)}
        self._step_stats.update(gpu_memory_peaks())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str, bool)) or v is None})
        row.update(self._step_stats)
        self._step_stats = {}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


class TrainingGuard(TrainerCallback):
    """Stop a run that cannot change its model, instead of letting it finish "successfully".

    At the start: 0 trainable parameters is an error (both backends; on a GPU Unsloth's 16-bit LoRA
    mode used to freeze a full finetune this way). Then the first optimizer step that has a learning
    rate above 0 and a non-zero gradient must change the trainable weights (per-tensor checksums
    before and after); steps with lr 0 (warmup) or all-zero gradients (GRPO groups that all agree)
    prove nothing and are waited out. A step with no gradient at all on any trainable weight is an
    error at once. `part` picks the trained module out of what the trainer holds (PPO's policy).
    Trainers without the pre-optimizer event (TRL's PPO loop) are checked at their first update.
    """

    def __init__(self, part=None, what: str = "the model", patience: int = 20):
        self.part, self.what, self.patience = part, what, patience
        self.before: list[tuple[float, float]] | None = None
        self.step_info: dict[str, Any] | None = None
        self.waited = 0
        self.done = False

    def _params(self, model):
        module = self.part(model) if self.part is not None else model
        return [p for p in module.parameters() if p.requires_grad]

    @staticmethod
    def _checksums(params) -> list[tuple[float, float]]:
        import torch

        with torch.no_grad():
            return [(p.detach().double().sum().item(), p.detach().double().abs().sum().item()) for p in params]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = self._params(model)
        if not params:
            raise UserError(f"{self.what} has 0 trainable parameters: training would change nothing "
                            "(use_peft: true for LoRA, or check which weights are frozen)")
        if current_launch().shards_weights:
            self.done = True  # sharded weights live on other ranks; their checksums mean nothing here
            return
        self.before = self._checksums(params)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if not self.done:
            self.before = self._checksums(self._params(model))
            self.step_info = None

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.done:
            return
        params = self._params(model)
        grads = [p.grad for p in params if p.grad is not None]
        self.step_info = {
            "lr": max((g["lr"] for g in optimizer.param_groups), default=0.0) if optimizer is not None else None,
            "any_grad": bool(grads),
            "nonzero_grad": any(bool(g.detach().abs().sum() > 0) for g in grads),
        }

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.done or self.before is None:
            return
        changed = self._checksums(self._params(model)) != self.before
        info = self.step_info
        if changed:
            self.done = True
            return
        if info is not None and not info["any_grad"]:
            raise UserError(f"no gradient reached any trainable weight of {self.what} at step {state.global_step}: "
                            "the weights are cut off from the loss (frozen base, detached adapter?)")
        if info is not None and (not info["lr"] or not info["nonzero_grad"]):
            self.waited += 1  # warmup at lr 0, or a batch that teaches nothing: no evidence either way
            if self.waited >= self.patience:
                print(f"[guard] {self.waited} steps without a non-zero gradient at lr > 0: "
                      "could not confirm that training changes the weights")
                self.done = True
            return
        raise UserError(f"the optimizer step {state.global_step} changed none of {self.what}'s trainable weights "
                        f"(lr {info['lr'] if info else '?'}): the optimizer does not hold them")


# ----------------------------------------------------------------------------------------- save
def save_final(trainer, tokenizer, output_dir: str, margs: ModelArguments, save_merged: bool) -> Path:
    """Save the final adapter (or full model) to `output_dir/adapter` and optionally a merged copy.

    The adapter's recorded base is the 16-bit model the run started from (see `name_16bit_base`);
    the merged copy is in the run's precision (bf16 / fp16, float32 for a float32 run).
    """
    out = Path(output_dir)
    final = out / ("adapter" if margs.use_peft else "model")
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(final))
        if margs.use_peft:
            from recipes.adapters import record_adapter_base

            name_16bit_base(str(final), sixteen_bit_name(margs.model_name_or_path))
            # Where that base is, so the adapter finds it from anywhere (recipes/adapters.py).
            record_adapter_base(final, requested=margs.model_name_or_path)
        print(f"[run] saved {final}")
        if save_merged and margs.use_peft:
            dtype = precision_for(margs.dtype, check_device(margs)).dtype
            merge_adapter(str(final), str(out / "merged"), dtype=dtype, trust_remote_code=margs.trust_remote_code)
    return final


def is_prequantized(name: str) -> bool:
    """A checkpoint stored quantized (Unsloth's `...-bnb-4bit` repos, or a local dir whose config
    carries a `quantization_config`): merging into it keeps the quantization rounding."""
    if "bnb-4bit" in name.lower() or "bnb-8bit" in name.lower():
        return True
    config = Path(name) / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


def sixteen_bit_name(model_name_or_path: str | None) -> str | None:
    """The 16-bit model a run's adapter sits on: the base of an adapter being continued, else the model."""
    name = model_name_or_path or ""
    return (adapter_base(name) if os.path.isdir(name) else None) or name or None


def name_16bit_base(adapter_dir: str, intended: str | None) -> None:
    """Make the adapter name the 16-bit model it was trained on as its base.

    Loading `unsloth/Qwen2.5-3B-Instruct` in 4-bit, Unsloth fetches its pre-quantized
    `...-bnb-4bit` copy, and PEFT records that copy as the adapter's base: everything that later
    loads the adapter (merging, vLLM, `make eval`) would start from NF4 weights. The 16-bit name the
    user gave is the right base for all of them; a 4-bit training run re-quantizes it on load.
    """
    recorded = adapter_base(adapter_dir)
    if not recorded or not intended or recorded == intended:
        return
    if is_prequantized(recorded) and not is_prequantized(intended):
        path = Path(adapter_dir) / "adapter_config.json"
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = intended
        write_json(path, config)
        print(f"[run] {adapter_dir}: base recorded as the 16-bit {intended}, not the 4-bit copy {recorded}")


# Fixed probes for the merge check: Vietnamese as the toolkit's users write it.
MERGE_PROBES = (
    "Lan có 25 quả táo. Lan cho em gái 8 quả. Hỏi Lan còn lại bao nhiêu quả táo?",
    "Một cửa hàng bán 1.250.000 đồng tiền vải mỗi ngày. Sau 3 ngày cửa hàng thu được bao nhiêu tiền?",
    "Giảng viên dạy rất nhiệt tình và dễ hiểu.",
)


def merge_adapter(adapter_dir: str, out_dir: str, dtype: str = "bfloat16", trust_remote_code: bool = False) -> dict:
    """Merge a LoRA adapter into its 16-bit base model, check it, and save it in `dtype`.

    The merge is done in float32 on the CPU, onto the unquantized base - never into 4-bit weights
    (the NF4 rounding would stay in the "16-bit" model; Unsloth's own `merged_16bit` save of a
    4-bit FastLanguageModel dequantizes the NF4 weights, so it carries that rounding too). Checks:
    the merged model's logits on fixed Vietnamese probes match the base + adapter model's (float32),
    and the saved tensors equal the merged ones cast to `dtype`. Writes `merge.json` with both
    results. Needs the base in CPU RAM at 4 bytes per parameter. Returns the check's numbers.
    """
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = adapter_base(adapter_dir)
    if base is None:
        raise UserError(f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    if is_prequantized(base):
        raise UserError(
            f"{adapter_dir} names the quantized checkpoint {base} as its base; merging into it keeps the "
            "4-bit rounding. Set base_model_name_or_path in its adapter_config.json to the 16-bit model"
        )
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise UserError(f"{out_dir} already exists; not overwriting a merged model")
    save_dtype = getattr(torch, dtype)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, adapter_dir).eval()

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             if tokenizer.chat_template else t for t in MERGE_PROBES]
    probe = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=tokenizer.chat_template is None)
    with torch.no_grad():
        expected = model(**probe).logits.float()
        merged = model.merge_and_unload()
        got = merged(**probe).logits.float()
    mask = probe["attention_mask"].bool()
    diff = (got - expected).abs()[mask].max().item()
    agreement = (got.argmax(-1) == expected.argmax(-1))[mask].float().mean().item()
    scale = max(1.0, expected[mask].abs().max().item())
    if diff > 1e-3 * scale or agreement < 1.0:
        raise RuntimeError(f"merge check failed: merged logits differ from base + adapter by up to {diff:.3g} "
                           f"(next-token agreement {agreement:.1%}); the merged model was not saved")

    merged.to(save_dtype)
    merged.config.pad_token_id = tokenizer.pad_token_id
    tmp = Path(out_dir).with_name(Path(out_dir).name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    state = merged.state_dict()
    compared = 0
    for shard in sorted(tmp.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                if not torch.equal(fh.get_tensor(key), state[key]):
                    raise RuntimeError(f"merge check failed: saved tensor {key} differs from the merged model")
                compared += 1
    report = {"base": base, "adapter": str(adapter_dir), "dtype": dtype, "probe_positions": int(mask.sum()),
              "max_abs_logit_diff_fp32": diff, "next_token_agreement": agreement, "saved_tensors_checked": compared,
              "seconds": round(time.time() - t0, 1)}
    write_json(tmp / "merge.json", report)
    os.replace(tmp, out_dir)
    print(f"[run] merged {dtype} model saved to {out_dir}: matches base + adapter on {report['probe_positions']} "
          f"probe positions (max |logit diff| {diff:.2g} in float32); {compared} saved tensors checked")
    return report


# ------------------------------------------------------------------------- multi-process launches
# `accelerate launch` (configs/accelerate/*.yaml) starts one process per GPU and tells each, through
# environment variables, what it is part of: WORLD_SIZE / LOCAL_RANK (torchrun), ACCELERATE_USE_FSDP
# with FSDP_VERSION, ACCELERATE_USE_DEEPSPEED with ACCELERATE_DEEPSPEED_ZERO_STAGE (or a DeepSpeed
# JSON in ACCELERATE_DEEPSPEED_CONFIG_FILE). The model is loaded before the Trainer builds its
# Accelerator, so these variables are what the loader can go by.
#
# Unsloth 2026.10.9 supports multi-process training itself (per-rank device maps, DDP defaults for
# LoRA, DeepSpeed ZeRO placement, FSDP2 QLoRA with a float quant storage), so `backend: unsloth` is
# allowed under every launch; only the combinations below are refused.


@dataclass(frozen=True)
class Launch:
    """How this process was started: `kind` is `single`, `ddp`, `deepspeed` or `fsdp`."""

    kind: str = "single"
    world_size: int = 1
    local_rank: int = 0
    zero_stage: int | None = None
    fsdp_version: int | None = None

    @property
    def shards_weights(self) -> bool:
        """True when the weights themselves are split across processes (FSDP, ZeRO-3)."""
        return self.kind == "fsdp" or self.zero_stage == 3

    def describe(self) -> str:
        if self.kind == "deepspeed":
            return f"DeepSpeed ZeRO-{self.zero_stage if self.zero_stage is not None else '?'}"
        if self.kind == "fsdp":
            return f"FSDP{self.fsdp_version}"
        return self.kind.upper() if self.kind == "ddp" else "single process"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def current_launch() -> Launch:
    """Read the launch from the environment `accelerate launch` / torchrun give each process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
        if not stage.isdigit() and os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            try:
                with open(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"], encoding="utf-8") as fh:
                    stage = str(json.load(fh).get("zero_optimization", {}).get("stage", ""))
            except (OSError, ValueError):
                stage = ""
        return Launch("deepspeed", world_size, local_rank, zero_stage=int(stage) if stage.isdigit() else None)
    if _env_flag("ACCELERATE_USE_FSDP"):
        return Launch("fsdp", world_size, local_rank, fsdp_version=int(os.environ.get("FSDP_VERSION", "1") or 1))
    return Launch("ddp" if world_size > 1 else "single", world_size, local_rank)


def check_launch(margs: ModelArguments) -> Launch:
    """Refuse launches that would fail late or silently do something else; returns the launch.

    Called by `load_model_and_tokenizer`, so every recipe gets it.
    """
    launch = current_launch()
    if launch.world_size > 1:
        from accelerate.state import PartialState

        # TrainingArguments set up the process group while the config was parsed. A CPU-only
        # machine without `use_cpu` leaves every process on its own: N full runs writing one directory.
        if PartialState._shared_state and PartialState().num_processes != launch.world_size:
            raise UserError(
                f"this {launch.world_size}-process launch did not form one process group (no GPU visible?); "
                "for DDP on CPUs add --use_cpu true (see configs/accelerate/cpu_ddp.yaml), else launch on GPUs"
            )
    if margs.backend == "unsloth" and margs.load_in_4bit and (
        launch.zero_stage == 3 or (launch.kind == "fsdp" and launch.fsdp_version == 1)
    ):
        # Unsloth stores 4-bit weights in a float dtype only for FSDP2; ZeRO-3 and FSDP1 would try
        # to shard packed uint8 weights.
        raise UserError(
            f"backend unsloth with load_in_4bit cannot shard 4-bit weights under {launch.describe()}: "
            "use --backend hf (it stores them in the compute dtype), configs/accelerate/fsdp.yaml (FSDP2) or zero2.yaml"
        )
    if margs.fast_inference and launch.kind == "fsdp":
        raise UserError(
            "fast_inference (Unsloth's vLLM engine) does not work under FSDP; set fast_inference: false, "
            "or use configs/accelerate/multi_gpu.yaml (DDP)"
        )
    if launch.world_size > 1 and is_main_process():
        print(f"[launch] {launch.describe()} with {launch.world_size} processes, backend={margs.backend}")
    return launch


def hf_device_map(device: str) -> dict[str, int] | None:
    """Where the hf backend puts the weights: each process on its own GPU (LOCAL_RANK).

    None when the weights will be sharded (FSDP/ZeRO-3 place them; transformers refuses a device
    map under ZeRO-3) and on the CPU. A 4-bit load with None still lands on this process's GPU:
    bitsandbytes uses the current device, which accelerate set to LOCAL_RANK.
    """
    launch = current_launch()
    if device != "cuda" or launch.shards_weights:
        return None
    return {"": launch.local_rank}


def quant_storage_for_launch(margs: ModelArguments, dtype) -> Any | None:
    """`bnb_4bit_quant_storage` for the hf backend: the user's, else the compute dtype when sharding.

    FSDP and ZeRO-3 flatten and shard parameters of one dtype; packed 4-bit weights stored as uint8
    beside bf16 LoRA/norm weights cannot be sharded, stored as the compute dtype they can.
    """
    if margs.bnb_4bit_quant_storage:
        return margs.bnb_4bit_quant_storage
    launch = current_launch()
    if launch.shards_weights:
        if is_main_process():
            print(f"[model] {launch.describe()}: storing 4-bit weights as {str(dtype).replace('torch.', '')} "
                  "(bnb_4bit_quant_storage) so they can be sharded")
        return dtype
    return None  # bitsandbytes' default, uint8


def wait_for_all_processes() -> None:
    """Barrier across the launch's processes; nothing in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    from accelerate.state import PartialState

    if PartialState._shared_state:
        PartialState().wait_for_everyone()


def gpu_memory_peaks() -> dict[str, float]:
    """This process's peak GPU memory so far, in GB (empty on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3),
    }
