"""Batched generation for every evaluator: vLLM through Unsloth when the model has an engine,
otherwise Hugging Face `generate` with left padding.

    from evaluate.generation import DecodingSettings, generate
    out = generate(model, tokenizer, prompts, DecodingSettings(max_new_tokens=256, batch_size=8))
    out.texts[i][j], out.tokens[i][j]      # prompt i, sample j

Prompts are chat messages (rendered with the tokenizer's chat template and the assistant turn
opened) or plain strings (tokenized as they are, for base LMs such as GPT-2).

Decoding is exactly what the settings say. The model's own `generation_config` sampling defaults
(Qwen2.5 ships top_k=20 and repetition_penalty=1.05) are NOT applied: greedy is plain argmax,
sampling is temperature + top-p only, the same on both paths, so runs and backends compare
fairly. Only the stop tokens come from the model (its eos ids plus the tokenizer's).

Paths:
- vLLM: when the model was loaded with ``fast_inference`` (it then carries ``vllm_engine``;
  `core.models.load_model_and_tokenizer` sets that up only on a CUDA GPU with vLLM
  installed). A LoRA adapter directory is served through a vLLM ``LoRARequest``; vLLM schedules
  its own batches, so ``batch_size`` does not apply.
- HF: prompts sorted by token length (longest first, so an out-of-memory shows up at once and
  batches waste little padding), ``batch_size`` at a time, a tqdm bar, ``torch.no_grad``.
  The model's train/eval mode and the tokenizer's padding side are restored afterwards, so it
  is safe to call in the middle of training. A model whose ``generate`` Unsloth patched (the
  GPU backend) switches modes itself - it turns gradient checkpointing off for generation and
  back on afterwards - so it is left to do that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class DecodingSettings:
    """How to decode.

    Fields:
        max_new_tokens (`int`, defaults to `512`): completion budget per sample.
        batch_size (`int`, defaults to `8`): prompts per HF `generate` call (each expands to
            `num_samples` rows); ignored by vLLM.
        num_samples (`int`, defaults to `1`): completions per prompt. More than 1 implies sampling.
        do_sample (`bool`, defaults to `False`): sample instead of greedy decoding.
        temperature (`float`, defaults to `0.7`): sampling temperature.
        top_p (`float`, defaults to `0.95`): nucleus sampling mass.
        seed (`int`, defaults to `0`): sampling seed.
    """

    max_new_tokens: int = 512
    batch_size: int = 8
    num_samples: int = 1
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("num_samples, batch_size and max_new_tokens must be at least 1")
        if self.num_samples > 1:
            self.do_sample = True  # k identical greedy samples would make pass@k meaningless
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    def describe(self) -> str:
        """Short text for tables: 'greedy' or 'sampled T=0.7 top_p=0.95 k=4'."""
        if not self.do_sample:
            return "greedy"
        return f"sampled T={self.temperature:g} top_p={self.top_p:g} k={self.num_samples}"


@dataclass
class Generations:
    """What `generate` returns: per prompt, one entry per sample (prompt order kept)."""

    texts: list[list[str]]
    tokens: list[list[int]]  # completion length in tokens, the stop token included
    elapsed: float  # seconds spent generating
    backend: str  # "vllm" or "hf"

    @property
    def total_tokens(self) -> int:
        return sum(sum(t) for t in self.tokens)


def render_prompts(tokenizer, prompts: Sequence[Any]) -> tuple[list[str], bool]:
    """Prompt texts, and whether they are chat-templated (then they carry their own special
    tokens and must be tokenized without adding more)."""
    if all(isinstance(p, str) for p in prompts):
        return list(prompts), False
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    return texts, True


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the model's generation eos id(s) and the tokenizer's."""
    ids: list[int] = []
    config_eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    for value in (config_eos, tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    if not ids:
        raise ValueError("the tokenizer has no eos token: generation would never stop")
    return ids


def drop_cut_character(text: str) -> str:
    """A completion stopped by the token budget can end inside a character: byte-level tokenizers
    spread one Vietnamese letter over two or three tokens, and decoding shows the missing bytes as
    U+FFFD ("Nh\ufffd" for a cut "Nhà"). Cut at the last whole character instead."""
    return text.rstrip("\ufffd")


def completion_length(ids: Sequence[int], stops: set[int]) -> int:
    """Tokens up to and including the first stop token (all of them when none was produced)."""
    for i, token in enumerate(ids):
        if token in stops:
            return i + 1
    return len(ids)


def _unsloth_manages_modes(model) -> bool:
    """True for models whose `generate` is Unsloth's GPU wrapper (it toggles train/eval and
    gradient checkpointing itself; calling `eval()` first would make it skip restoring them)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner.generate, "__name__", "") == "unsloth_fast_generate"


def generate(
    model,
    tokenizer,
    prompts: Sequence[Any],
    settings: DecodingSettings,
    lora_path: str | None = None,
    progress: bool = True,
    desc: str = "generating",
    backend: str = "auto",
) -> Generations:
    """Generate ``settings.num_samples`` completions for every prompt.

    Args:
        model: a causal LM (plain, PEFT-wrapped, or Unsloth with a vLLM engine).
        tokenizer: its tokenizer (a pad token distinct from eos is expected, see
            `core.models.ensure_pad_token`).
        prompts: chat message lists or plain strings.
        settings: decoding settings.
        lora_path: a LoRA adapter directory to serve through vLLM (vLLM path only; on the HF path
            the adapter is already part of ``model``).
        progress: show a tqdm bar.
        backend: "auto" (vLLM when the model has an engine, else HF), "hf" or "vllm". Mid-training
            evaluation uses "hf": the engine would not see the live, unsaved LoRA weights.
    """
    if backend not in ("auto", "hf", "vllm"):
        raise ValueError(f"backend must be 'auto', 'hf' or 'vllm', got {backend!r}")
    has_engine = getattr(model, "vllm_engine", None) is not None
    if backend == "vllm" and not has_engine:
        raise ValueError("backend 'vllm' needs a model loaded with fast_inference=True (on a CUDA GPU with vLLM)")
    if not prompts:
        return Generations([], [], 0.0, "hf")
    texts, templated = render_prompts(tokenizer, prompts)
    if has_engine and backend != "hf":
        return _generate_vllm(model, tokenizer, texts, templated, settings, lora_path, progress)
    return _generate_hf(model, tokenizer, texts, templated, settings, progress, desc)


def _generate_vllm(model, tokenizer, texts, templated, settings, lora_path, progress) -> Generations:
    from vllm import SamplingParams

    lora_request = None
    if lora_path is not None:
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest("eval_adapter", 1, str(lora_path))
    params = SamplingParams(
        n=settings.num_samples,
        temperature=settings.temperature if settings.do_sample else 0.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    # Token ids, not text: vLLM would add a second BOS to an already templated prompt.
    requests = [{"prompt_token_ids": tokenizer(t, add_special_tokens=not templated)["input_ids"]} for t in texts]
    start = time.perf_counter()
    outputs = model.fast_generate(requests, sampling_params=params, lora_request=lora_request, use_tqdm=progress)
    elapsed = time.perf_counter() - start
    return Generations(
        texts=[[drop_cut_character(o.text) if o.finish_reason == "length" else o.text for o in out.outputs]
               for out in outputs],
        tokens=[[len(o.token_ids) for o in out.outputs] for out in outputs],
        elapsed=elapsed,
        backend="vllm",
    )


def _generate_hf(model, tokenizer, texts, templated, settings, progress, desc) -> Generations:
    from transformers import GenerationConfig

    stops = stop_token_ids(model, tokenizer)
    stop_set = set(stops)
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        num_return_sequences=settings.num_samples,
        # Explicit values: unset ones would be filled from the model's generation_config.
        temperature=settings.temperature if settings.do_sample else 1.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
        top_k=0 if settings.do_sample else 50,
        min_p=None,
        repetition_penalty=1.0,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=not templated)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    k = settings.num_samples
    out_texts: list[list[str]] = [[] for _ in texts]
    out_tokens: list[list[int]] = [[] for _ in texts]

    padding_side = tokenizer.padding_side
    manages_modes = _unsloth_manages_modes(model)
    was_training = model.training
    # Sampling seeds a forked RNG: the caller's random state (mid-training, say) is left as it was.
    cuda = [model.device] if model.device.type == "cuda" else []
    start = time.perf_counter()
    try:
        tokenizer.padding_side = "left"  # new tokens are appended on the right of every row
        if not manages_modes:
            model.eval()
        with torch.random.fork_rng(devices=cuda, enabled=settings.do_sample), torch.no_grad():
            if settings.do_sample:
                torch.manual_seed(settings.seed)
            bar = tqdm(total=len(texts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True)
            for b in range(0, len(order), settings.batch_size):
                batch = order[b : b + settings.batch_size]
                enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                                add_special_tokens=not templated).to(model.device)
                # (Unsloth's GPU wrapper pads finished rows with eos instead of pad: harmless, rows
                # are cut at their first stop token.)
                out = model.generate(**enc, generation_config=config)
                new = out[:, enc["input_ids"].shape[1] :].tolist()
                for row, ids in enumerate(new):
                    i = batch[row // k]
                    n = completion_length(ids, stop_set)
                    out_tokens[i].append(n)
                    text = tokenizer.decode(ids[:n], skip_special_tokens=True)
                    out_texts[i].append(drop_cut_character(text) if ids[n - 1] not in stop_set else text)
                bar.update(len(batch))
            bar.close()
    finally:
        tokenizer.padding_side = padding_side
        if not manages_modes and was_training:
            model.train()
    return Generations(out_texts, out_tokens, time.perf_counter() - start, "hf")
