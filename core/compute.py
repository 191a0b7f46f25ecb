"""Compute budgets that do not depend on the machine: model FLOPs from the tokens a run processed.

"The same compute" measured in seconds moves with the CPU, the precision and the other jobs on the
machine (the demo's SFT-continued arm got 120 extra steps on one CPU and 215 on another). Counted
in model FLOPs it does not. The standard approximations (Kaplan et al., 2020), with N the model's
parameter count:

- a forward pass costs about 2·N FLOPs per token (a multiply and an add per weight);
- a forward and backward pass about 6·N per token (the backward pass costs twice the forward);
- generating a completion runs its prompt through the model once (prefill) and every completion
  token once (with the KV cache): 2·N per prompt token per sample, and per completion token.

Left out, on purpose and the same for every arm: attention's own FLOPs (they grow with the
sequence length; at the demo's 100-200 tokens a few per cent), padding (TRL counts only real
tokens in `num_tokens`, and so does this), and the checks a run makes of its held-out accuracy
(measurement, not training). With LoRA the backward pass skips the frozen weights' gradients, so
the real cost is nearer 4·N than 6·N per trained token; every arm here trains LoRA adapters, the
standard 6·N is kept and `train_factor` can change it.

What each run processed, from its `metrics.jsonl` (`core.runs.JsonlMetricsCallback`):

- GRPO (TRL 1.12): `num_tokens`, the cumulative prompt + completion tokens of every sampled
  sequence. Each such token is generated (2·N: prefill or decode) and trained (6·N per
  `num_iterations`); when TRL recomputes the old policy's log-probabilities (generation and
  optimizer steps out of step, or vLLM's importance-sampling correction) that is one more forward
  (2·N), and so is the reference model when `beta` != 0.
- SFT (TRL 1.12): `num_tokens`, the cumulative non-padding tokens trained (6·N each).
- pass-rate filtering (`evaluate/pass_rate.py` report.json `tokens`): generation only (2·N).

Pure Python: no torch (the demo's orchestrator budgets its arms without importing it).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FORWARD = 2  # FLOPs per parameter per token, forward
FORWARD_BACKWARD = 6  # FLOPs per parameter per token, forward + backward


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in a model directory's safetensors files, read from their headers (no
    torch, no weights loaded). Tied input/output embeddings are stored once and counted once: the
    output projection is a real matmul, the input lookup costs nothing, so that is the N whose
    2·N per token is right."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files = [model_dir / name for name in shards]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} holds no .safetensors weights to count parameters from")
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))  # the header's length, little-endian u64
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
    return total


def last_logged(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[int, float] | None:
    """(step, value) of the last logged `key` (the last record of a step wins, as after a resume);
    None when no row has it."""
    found = None
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(row.get("step"), int):
            if found is None or row["step"] >= found[0]:
                found = (row["step"], float(value))
    return found


def tokens_trained(rows: Iterable[Mapping[str, Any]]) -> tuple[int, float]:
    """(steps, tokens) of a TRL run from its metrics rows: TRL's cumulative `num_tokens` at the last
    logged step. ValueError when the run logged none (log every step: `logging_steps: 1`)."""
    found = last_logged(rows, "num_tokens")
    if found is None or found[0] < 1:
        raise ValueError("the run logged no num_tokens (TRL logs it with every training log row)")
    return found


def grpo_flops(n_params: int, tokens: float, num_iterations: int = 1, old_logps: bool = False,
               reference: bool = False, train_factor: float = FORWARD_BACKWARD,
               saved: Mapping[str, float] | None = None) -> dict[str, float]:
    """FLOPs of a GRPO run that sampled `tokens` prompt + completion tokens in all: generation,
    training, and the extra forwards for the old policy's and the reference's log-probabilities.

    `tokens` counts every prompt once per sample, as TRL does. `saved` holds the prompt tokens a
    shared prefix did not put through the model (run_info.json's `shared_prefix.saved_tokens`:
    `generation`, `grad` for the loss passes, `no_grad` for the old-policy and reference passes);
    they are taken off the part that skipped them."""
    saved = saved or {}
    parts = {
        "generation": FORWARD * n_params * (tokens - saved.get("generation", 0.0)),
        "training": train_factor * n_params * (tokens * num_iterations - saved.get("grad", 0.0)),
        "old_logps": FORWARD * n_params * tokens if old_logps else 0.0,
        "reference": FORWARD * n_params * tokens if reference else 0.0,
    }
    extra = parts["old_logps"] + parts["reference"]
    if extra:  # the no-grad passes' savings, shared between the two in proportion
        kept = max(0.0, extra - FORWARD * n_params * saved.get("no_grad", 0.0)) / extra
        parts["old_logps"] *= kept
        parts["reference"] *= kept
    parts = {name: max(0.0, value) for name, value in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def grpo_recomputes_old_logps(config: Mapping[str, Any]) -> bool:
    """Whether TRL 1.12's GRPOTrainer runs an extra forward for the old policy's log-probabilities,
    read from a run's resolved config (its test in `_generate_and_score_completions`): when a
    generated batch serves optimizer steps other than the one it was made for, or when vLLM's
    importance-sampling correction is on."""
    accumulation = config.get("gradient_accumulation_steps") or 1
    generate_every = (config.get("steps_per_generation") or accumulation) * (config.get("num_iterations") or 1)
    vllm_correction = bool(config.get("use_vllm")) and bool(config.get("vllm_importance_sampling_correction"))
    return accumulation % generate_every != 0 or vllm_correction


def generation_flops(n_params: int, prompt_tokens: float, completion_tokens: float) -> float:
    """FLOPs of generating: every prompt token processed once per sample, every completion token once."""
    return FORWARD * n_params * (prompt_tokens + completion_tokens)


def sft_flops(n_params: int, tokens: float, train_factor: float = FORWARD_BACKWARD) -> float:
    """FLOPs of SFT that trained `tokens` tokens."""
    return train_factor * n_params * tokens


def sft_steps_for(flops: float, n_params: int, tokens_per_step: float, train_factor: float = FORWARD_BACKWARD) -> int:
    """How many SFT steps of `tokens_per_step` tokens cost `flops` (rounded; at least 1)."""
    if n_params <= 0 or tokens_per_step <= 0:
        raise ValueError(f"need a positive parameter count and tokens per step, got {n_params} and {tokens_per_step}")
    return max(1, round(flops / sft_flops(n_params, tokens_per_step, train_factor)))
