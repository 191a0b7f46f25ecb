"""Merging a LoRA adapter into its 16-bit base model, checked before it is kept, in the memory of a
free Colab session.

The base model is held once, in the dtype the merged model is saved in (2 bytes per parameter in
16 bits), on the GPU when one is visible and has room for it, else in CPU RAM. The arithmetic is
still float32: each LoRA layer in turn is upcast, merged by PEFT, checked and rounded back once,
and the checks run the model's forward in float32 one module at a time (`float32_compute`). A
float32 base in CPU RAM was 4 bytes per parameter: 12.4 GB for a 3B model, about all a free Colab
session has. README ("Export") gives the measured peak RSS and the formula.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from core.adapters import adapter_base, is_prequantized
from core.cli import UserError
from core.files import write_json_atomic as write_json

# Fixed probes for the merge check: Vietnamese as the toolkit's users write it.
MERGE_PROBES = (
    "Lan có 25 quả táo. Lan cho em gái 8 quả. Hỏi Lan còn lại bao nhiêu quả táo?",
    "Một cửa hàng bán 1.250.000 đồng tiền vải mỗi ngày. Sau 3 ngày cửa hàng thu được bao nhiêu tiền?",
    "Giảng viên dạy rất nhiệt tình và dễ hiểu.",
)
# How far rounding the merged weights to 16 bits may move the probes' logits, as a share of their
# largest magnitude. Rounding flips near-ties, so next-token agreement is reported, not required
# (a random 0.5B-shaped model kept 94 % with every logit within 0.04); the per-layer check below
# is the exact one, and deploy/verify.py checks the export's continuations on top.
LOGITS_16BIT = 0.05
# Largest relative difference between a merged layer and base layer + LoRA, in float32, before
# rounding: float32 round-off is ~1e-6; a wrong scale or transpose is orders of magnitude more.
LAYER_TOLERANCE = 1e-4
# Shards of at most this size: saving copies one shard at a time to host memory (from a GPU).
SHARD = "1GB"


def compute_in_float32(model) -> list:
    """Make every forward of `model` compute in float32 while its weights stay stored as they are:
    each module's own floating parameters and buffers are upcast for the length of its call and put
    back after, so the activations flow in float32 and at most one module is held in float32 at a
    time. Returns the hook handles (`handle.remove()` undoes it)."""
    import torch

    def upcast(module, args):
        saved = []
        for table in (module._parameters, module._buffers):
            for tensor in table.values():
                if tensor is not None and tensor.is_floating_point() and tensor.dtype != torch.float32:
                    saved.append((tensor, tensor.data))
                    tensor.data = tensor.data.float()
        module._virl_stored = saved

    def restore(module, args, output):
        for tensor, data in module.__dict__.pop("_virl_stored", ()):
            tensor.data = data

    handles = []
    for module in model.modules():
        if any(t is not None and t.is_floating_point() for t in [*module._parameters.values(), *module._buffers.values()]):
            handles.append(module.register_forward_pre_hook(upcast))
            handles.append(module.register_forward_hook(restore))
    return handles


@contextlib.contextmanager
def float32_compute(model):
    """`compute_in_float32` for the length of a `with` block."""
    handles = compute_in_float32(model)
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def work_device(base: str, dtype, trust_remote_code: bool = False) -> tuple[str, str]:
    """Where to merge: the GPU when one is visible (and torch has kernels for it) with room for the
    base in `dtype` plus a margin, else the CPU. Returns the device and the reason in words."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.precision import has_cuda, resolve_device

    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    with init_empty_weights():  # counts the parameters without allocating them
        shell = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    size = sum(p.numel() for p in shell.parameters()) * torch.empty((), dtype=dtype).element_size()
    need = f"{size / 1e9:.1f} GB of {str(dtype).replace('torch.', '')} weights"
    if not has_cuda() or resolve_device("auto") != "cuda":
        return "cpu", f"no GPU; {need} in RAM"
    free, _ = torch.cuda.mem_get_info()
    if free > 1.2 * size + 2**30:
        return "cuda", f"{need} on {torch.cuda.get_device_name(0)} ({free / 1e9:.1f} GB free)"
    return "cpu", f"{need} in RAM: the GPU has {free / 1e9:.1f} GB free"


def merge_adapter(adapter_dir: str, out_dir: str, dtype: str = "bfloat16", trust_remote_code: bool = False) -> dict:
    """Merge a LoRA adapter into its 16-bit base model, check it, and save it in `dtype`.

    The merge goes onto the unquantized base - never into 4-bit weights (the NF4 rounding would stay
    in the "16-bit" model; Unsloth's own `merged_16bit` save of a 4-bit FastLanguageModel
    dequantizes the NF4 weights, so it carries that rounding too). The base is loaded in `dtype`
    (see the module docstring for where and why); checks, all computed in float32:
    - every merged layer gives what base layer + LoRA gave on a fixed random input, before its
      weight is rounded to `dtype` (`LAYER_TOLERANCE`): the merge arithmetic is exact;
    - the merged model's logits on fixed Vietnamese probes against base + adapter: in float32 the
      same next token everywhere and max |diff| <= 1e-3 of the logit scale; in 16 bits the rounding
      of the merged weights allows `LOGITS_16BIT` of it;
    - the saved tensors equal the merged model's.
    Writes `merge.json` with the numbers, the device and this process's peak RSS. Returns them.
    """
    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer
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
    device, where = work_device(base, save_dtype, trust_remote_code)
    print(f"[merge] {adapter_dir} into {base} in {dtype} on {device.upper() if device == 'cuda' else 'the CPU'}: {where}",
          flush=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=save_dtype, device_map={"": device},
                                                 trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, adapter_dir).eval()  # LoRA weights in float32 (PEFT's default)

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             if tokenizer.chat_template else t for t in MERGE_PROBES]
    probe = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=tokenizer.chat_template is None)
    probe = {k: v.to(device) for k, v in probe.items()}
    mask = probe["attention_mask"].bool()
    with torch.no_grad(), float32_compute(model):
        expected = model(**probe).logits.float()[mask]

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    worst = max((_merge_layer(layer, save_dtype, device) for layer in layers), default=0.0)
    if worst > LAYER_TOLERANCE:
        raise RuntimeError(f"merge check failed: a merged layer differs from base layer + LoRA by {worst:.3g} "
                           "(relative, in float32); the merged model was not saved")
    # The LoRA update is in the base weights now: drop the LoRA modules. A trained copy of a whole
    # module (PEFT's modules_to_save) may be float32: it is saved in `dtype` like the rest.
    merged = model.unload().to(save_dtype)

    with torch.no_grad(), float32_compute(merged):
        got = merged(**probe).logits.float()[mask]
    diff = (got - expected).abs().max().item()
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    scale = max(1.0, expected.abs().max().item())
    exact = save_dtype == torch.float32
    if (diff > 1e-3 * scale or agreement < 1.0) if exact else diff > LOGITS_16BIT * scale:
        rule = "every next token and 1e-3" if exact else f"{LOGITS_16BIT}"
        raise RuntimeError(f"merge check failed: merged logits differ from base + adapter by up to {diff:.3g} of "
                           f"{scale:.3g} (next-token agreement {agreement:.1%}; allowed: {rule} of the largest logit); "
                           "the merged model was not saved")
    del expected, got

    merged.config.pad_token_id = tokenizer.pad_token_id
    tmp = Path(out_dir).with_name(Path(out_dir).name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    merged.save_pretrained(str(tmp), max_shard_size=SHARD)
    tokenizer.save_pretrained(str(tmp))
    state = merged.state_dict()
    compared = 0
    for shard in sorted(tmp.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                if not torch.equal(fh.get_tensor(key), state[key].cpu()):  # one tensor at a time off the GPU
                    raise RuntimeError(f"merge check failed: saved tensor {key} differs from the merged model")
                compared += 1
    report = {"base": base, "adapter": str(adapter_dir), "dtype": dtype, "device": device,
              "lora_layers_checked": len(layers), "max_layer_rel_diff_fp32": worst,
              "probe_positions": int(mask.sum()), "max_abs_logit_diff": diff, "logit_scale": scale,
              "next_token_agreement": agreement,
              "logits": f"computed in float32 from the {dtype} weights", "saved_tensors_checked": compared,
              "peak_rss_gb": peak_rss_gb(), "seconds": round(time.time() - t0, 1)}
    write_json(tmp / "merge.json", report)
    os.replace(tmp, out_dir)
    print(f"[run] merged {dtype} model saved to {out_dir}: {len(layers)} LoRA layers merged in float32 (max relative "
          f"difference {worst:.2g}); next-token agreement {agreement:.1%} with base + adapter on "
          f"{report['probe_positions']} probe positions (max |logit diff| {diff:.2g}); {compared} saved tensors checked")
    return report


def _merge_layer(layer, dtype, device) -> float:
    """Merge one LoRA layer in float32 and round it back to `dtype`; returns how far the merged
    layer's output is from base layer + LoRA's (relative) on a fixed random input."""
    import torch

    base = layer.get_base_layer()
    stored = [(t, t.data) for t in (base.weight, getattr(base, "bias", None)) if t is not None]
    for tensor, data in stored:
        tensor.data = data.float()
    generator = torch.Generator().manual_seed(0)
    if isinstance(base, torch.nn.Embedding):
        x = torch.randint(0, base.num_embeddings, (16,), generator=generator)
    elif isinstance(getattr(layer, "in_features", None), int):
        x = torch.randn(4, layer.in_features, generator=generator)
    else:
        raise UserError(f"merging supports LoRA on linear and embedding layers; this adapter has {type(layer).__name__}")
    x = x.to(device)
    with torch.no_grad():
        want = layer(x)  # PEFT's own forward: base layer + LoRA
        layer.merge()  # PEFT's own merge, into the float32 weight
        got = layer(x)  # merged: the base layer alone
    for tensor, data in stored:
        tensor.data = tensor.data.to(data.dtype)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
