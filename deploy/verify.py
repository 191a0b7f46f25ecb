"""The reload check every export passes before it is called done.

The exported model is loaded back the way a user would load it (safetensors with transformers,
a GGUF file through transformers' GGUF reader, an adapter onto its base) and decodes a few fixed
Vietnamese prompts greedily next to the model it came from. Both compute in float32 on the GPU
when there is one, else the CPU, one after the other, with the tokenizer of the Hugging Face
folder: transformers' GGUF tokenizer would stop at the wrong token (it sets eos to `<|im_start|>`
for ChatML models). A tokenizer without a chat template (a plain language model such as PPO's
GPT-2 policy) gets the questions as plain text to continue. A Hugging Face folder stays in the
precision it is stored in (16 bits for a merged model and its base) and computes in float32 one
module at a time (`core.merge.compute_in_float32`): the same numbers as a float32 copy, in half
the memory - a 3B reference plus its export would not fit a free Colab session in float32.

Two numbers per comparison:
- `identical`: prompts whose greedy continuations are token for token the same;
- `top1_agreement`: over the reference's continuation, fed to both models (teacher forcing), the
  share of positions where both models rank the same next token first. Unlike greedy text it does
  not snowball after the first difference, so it measures how far a lossy export moved the model.

The rule (`expected`):
- `exact` when the export stores the source's weights bit for bit - a 16-bit GGUF of a model
  whose every weight is representable in that type (checked, not assumed), an adapter copied:
  every prompt must be identical;
- otherwise a tolerance on `top1_agreement` per kind of loss, in `TOLERANCES`: rounding to 16 bits
  (merging LoRA into 16-bit weights, float32 weights to f16), 8-bit, 4-6-bit and 2-3-bit quants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECK_QUESTIONS = (
    "Lan có 12 quả táo, Lan mua thêm 7 quả. Hỏi Lan có tất cả bao nhiêu quả táo?",
    "Một quyển vở giá 8.500 đồng. Mẹ mua 4 quyển vở. Hỏi mẹ phải trả bao nhiêu tiền?",
    "Thủ đô của Việt Nam là thành phố nào?",
    "Hãy viết một câu chúc mừng sinh nhật ngắn bằng tiếng Việt.",
)

# Minimum teacher-forced top-1 agreement with the reference, per kind of loss. Measured on a demo
# GRPO checkpoint of SmolLM2-135M (README): merging into bf16 0.980 (2/4 prompts identical), q8_0
# vs the merged model 0.990 (3/4); bf16 weights to f16 are exact. Small models have many near-ties.
TOLERANCES = {
    "exact": 1.0,
    "16-bit rounding": 0.95,
    "8-bit": 0.90,
    "4-6-bit": 0.75,
    "2-3-bit": 0.50,
}


def loss_kind(outtype: str) -> str:
    """The `TOLERANCES` key for a lossy GGUF type."""
    if outtype in ("f32", "f16", "bf16"):
        return "16-bit rounding"
    if outtype == "q8_0":
        return "8-bit"
    if outtype.startswith(("q2", "q3")):
        return "2-3-bit"
    return "4-6-bit"


@dataclass
class Reference:
    """What the source model produced: per prompt, its ids, greedy continuation and the
    teacher-forced top-1 ids over that continuation."""

    label: str
    prompt_ids: list[list[int]] = field(default_factory=list)
    continuations: list[list[int]] = field(default_factory=list)
    top1: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0


def check_messages(system_prompt: str) -> list[list[dict[str, str]]]:
    """The fixed prompts as chat messages, with the recipe's system prompt (none when empty)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return [system + [{"role": "user", "content": q}] for q in CHECK_QUESTIONS]


def _device():
    import torch

    from core.precision import resolve_device

    return torch.device(resolve_device("auto"))  # refuses a GPU torch has no kernels for


def free_bytes(device) -> int:
    """Memory free for a new tensor on `device`: the GPU's free memory, or the host's MemAvailable."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # unknown: take the path that needs no extra memory


def load_hf(path: str | Path):
    """A Hugging Face model directory in its stored precision, loaded straight onto the device and
    computing in float32.

    Where a float32 copy fits with room to spare, the weights are upcast once: the check decodes
    token by token, and upcasting every module at every token (`compute_in_float32`) costs 15x the
    time on a CPU (the embedded model's reference decode: 157 s against ~10 s). Where it does not fit
    (a 3B model on a free Colab), the weights stay 16-bit and each module computes in float32 in turn.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from core.merge import compute_in_float32

    device = _device()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", device_map={"": device}).eval()
    narrow = sum(p.numel() for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32)
    # float32 needs 4 bytes per weight beside the 2 being replaced; keep a 1 GB and 50 % margin.
    if narrow and free_bytes(device) > 1.5 * 4 * narrow + 2**30:
        model.float()
    elif narrow:
        compute_in_float32(model)
    return model


def load_adapter(adapter_dir: str | Path, base: str):
    """Base + LoRA adapter, unmerged, computing in float32: the model as training left it."""
    from peft import PeftModel

    model = load_hf(base)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def load_gguf(gguf_file: str | Path):
    """A GGUF file through transformers' reader (dequantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.to(_device()).eval()


def _stop_ids(tokenizer, model) -> list[int]:
    from evaluate.generation import stop_token_ids

    return stop_token_ids(model, tokenizer)


def _greedy(model, tokenizer, ids: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, top_k=50,
                              temperature=1.0, top_p=1.0, repetition_penalty=1.0, eos_token_id=stops,
                              pad_token_id=tokenizer.pad_token_id, use_cache=True)
    input_ids = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    new = out[0, len(ids):].tolist()
    for i, token in enumerate(new):
        if token in stops:
            return new[: i + 1]
    return new


def _top1(model, ids: list[int], continuation: list[int]) -> list[int]:
    """Argmax next token at each position that predicts a continuation token."""
    import torch

    if not continuation:
        return []
    full = torch.tensor([ids + continuation], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=full).logits[0]
    return logits[len(ids) - 1 : len(ids) - 1 + len(continuation)].argmax(-1).tolist()


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The token ids a check prompt starts from: the chat template with an open assistant turn, or,
    for a tokenizer without one, the last message's text (what a plain language model continues)."""
    if tokenizer.chat_template is None:
        return list(tokenizer(messages[-1]["content"])["input_ids"])
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def reference_run(model, tokenizer, messages: list[list[dict[str, str]]], max_new_tokens: int, label: str) -> Reference:
    """Greedy continuations of the source model and its own top-1 ids over them."""
    start = time.perf_counter()
    ref = Reference(label)
    stops = _stop_ids(tokenizer, model)
    for m in messages:
        ids = prompt_ids(tokenizer, m)
        continuation = _greedy(model, tokenizer, ids, max_new_tokens, stops)
        ref.prompt_ids.append(ids)
        ref.continuations.append(continuation)
        ref.top1.append(_top1(model, ids, continuation))
    ref.seconds = round(time.perf_counter() - start, 2)
    return ref


def compare(model, tokenizer, ref: Reference, max_new_tokens: int, expected: str) -> dict[str, Any]:
    """Run the exported model on the reference's prompts; the comparison as a JSON-able dict,
    with `passed` decided by `expected` (a `TOLERANCES` key)."""
    start = time.perf_counter()
    stops = _stop_ids(tokenizer, model)
    identical, agree, positions = 0, 0, 0
    prompts = []
    for ids, continuation, ref_top1 in zip(ref.prompt_ids, ref.continuations, ref.top1, strict=True):
        mine = _greedy(model, tokenizer, ids, max_new_tokens, stops)
        top1 = _top1(model, ids, continuation)
        same = mine == continuation
        identical += same
        matches = sum(a == b for a, b in zip(top1, ref_top1, strict=True))
        agree, positions = agree + matches, positions + len(ref_top1)
        first = next((i for i, (a, b) in enumerate(zip(mine, continuation, strict=False)) if a != b),
                     None if same else min(len(mine), len(continuation)))
        prompts.append({
            "identical": same,
            "first_difference_at": first,
            "reference": tokenizer.decode(continuation, skip_special_tokens=True),
            "export": tokenizer.decode(mine, skip_special_tokens=True),
        })
    agreement = agree / positions if positions else 1.0
    bound = TOLERANCES[expected]
    passed = identical == len(prompts) if expected == "exact" else agreement >= bound
    return {
        "reference": ref.label,
        "expected": expected,
        "rule": "every prompt token-identical" if expected == "exact" else f"top1_agreement >= {bound}",
        "passed": bool(passed),
        "prompts": len(prompts),
        "identical": identical,
        "top1_agreement": round(agreement, 4),
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.perf_counter() - start, 2),
        "details": prompts,
    }


def lossless_in(model_dir: str | Path, outtype: str) -> bool:
    """Whether every floating weight in a model directory's safetensors is representable in
    `outtype` (f32/f16/bf16) exactly - then a GGUF of that type holds the same numbers."""
    import torch
    from safetensors import safe_open

    target = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}.get(outtype)
    if target is None:
        return False
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return False
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if not tensor.is_floating_point():
                    continue
                if not torch.equal(tensor.to(target).to(tensor.dtype), tensor):
                    return False
    return True


def release() -> None:
    """Return the memory of models the caller has dropped (`del model`) before loading the next:
    two 3B models in float32 would not fit in a laptop's RAM."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
