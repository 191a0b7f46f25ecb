"""Shared prompts in GRPO: each prompt goes through the model once per group, not once per sample.

GRPO samples `num_generations` (G) completions of every prompt. Stock TRL feeds the prompt G times
through the model: in the prefill of Hugging Face `generate`, and in every log-probability pass
(the loss forward and backward, the old-policy pass when `num_iterations > 1`, the reference pass
when `beta > 0`). Here the trainer's two methods that run those passes are wrapped on the instance
(the way core/timing.py wraps them; no TRL code is copied or patched):

- `_get_per_token_logps_and_entropies` (every log-probability pass): the distinct prompts of the
  batch run once with a KV cache, gradients on; the cache's keys and values are indexed out to the
  rows (one row per completion: an indexing op, so autograd sums the G rows' gradients back into
  the one prompt pass), and the completions run on top of it. The last prompt position's logits
  predict the first completion token. Positions, masks and the left padding of prompts are the
  ones the stock forward uses (prompt at 0..P-1 of the padded width, completion at P..), so every
  log-probability, the loss and the gradients are the stock computation's up to float rounding
  (tests/test_grpo_prefix.py: 1e-5 relative in float32).
- `_generate_single_turn` (Hugging Face `generate`): the distinct prompts are prefilled once (all
  but their last token, at the positions `generate` gives them), the cache is indexed out to the G
  rows, and `generate` continues from it with the full prompts: it runs only their last token and
  then samples exactly as before (same sampler, same random draws, same stopping).

Why a KV cache and not a shared-prefix attention mask (PrefixGrouper's way, and Unsloth's on the
GPU): both put U*P + B*C tokens through the linear layers (U distinct prompts of P tokens, B
completions of C tokens), but one packed row per group [prompt, c_1, ..., c_G] under a mask makes
dense attention (P + G*C)^2 per group - 2.5x stock's G*(P+C)^2 scores at G = 8, P = C = 250 -
unless a block-sparse kernel skips the masked blocks, while the cache reads B*C*(P+C), half of
stock's. Measured here (loss forward + backward of one micro-batch, SmolLM2-135M with LoRA,
float32, 1 thread): demo shape (2 prompts x 8, P 113, C 32) stock 21 s, packed rows with a dense
mask (SDPA) 7.6-8.8 s, the cache 6.4-6.7 s; vi_gsm8k-like (1 x 8, P = C = 250) stock 46-56 s,
packed 47-51 s, the cache 25-29 s. FlexAttention (the block-sparse kernel) has no backward on the
CPU in torch 2.14 ("FlexAttention does not support backward on CPU"); the `prefix-grouper` package
(MIT, 0.0.1) needs its own packed layout and an attention function registered into transformers
for the same arithmetic. The cache is also what `generate` uses, so one mechanism serves both halves,
through transformers' public cache API. What it costs: the cache is indexed out to B rows (B*P keys
and values per layer, as stock holds them), and under gradient checkpointing the prompt pass keeps
its activations (U*P tokens, 1/G of the prompt tokens stock checkpoints).

First use: the shared computation is compared with stock's on the first batch it sees (one extra
no-grad forward per run) and switched off, with one line, if they differ by more than rounding
explains - the guard for an architecture whose forward treats caches, positions or masks otherwise.

What stays on the stock path, and why, is decided when `attach` runs (gradient checkpointing and
the cache type on first use) and said in one line: vLLM or continuous-batching generation (not
`generate`), vision-language and MoE-auxiliary-loss models, the Liger loss, tools and custom
rollouts, several processes (the DDP/FSDP/DeepSpeed wrapper must see one forward per step; not
verified here), reentrant gradient checkpointing (gradients would not reach the shared prompt),
caches other than full-attention dynamic ones (sliding-window layers), and Unsloth's GPU trainer
(its own PrefixGrouper does the loss; `unsloth_prefix_grouper` reads whether it engaged).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from core.files import write_json_atomic
from core.launch import is_main_process


# --------------------------------------------------------------------------------------- grouping
def distinct_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a left-padded prompt batch that hold the same prompt, as (first, inverse).

    `first[u]` is the index of the first row holding distinct prompt u, `inverse[b]` the distinct
    prompt of row b: `ids[first][inverse] == ids`. The mask is part of the key, so a prompt that
    starts with the pad token's id is not taken for a shorter one.
    """
    key = torch.cat([ids, mask.to(ids.dtype)], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(ids.size(0), device=ids.device)
    first = torch.full((int(inverse.max()) + 1,), ids.size(0), device=ids.device, dtype=rows.dtype)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


class _PromptLayer(DynamicLayer):
    """One attention layer's keys and values of the shared prompts, indexed out to the batch rows.

    Read-only: `update` returns the prompt followed by the new tokens and stores nothing, so the
    same call gives the same result when gradient checkpointing recomputes the layer in backward.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def rows_of(cache: Cache, rows: torch.Tensor) -> Cache:
    """A read-only cache whose row b holds the distinct prompt `rows[b]` of `cache`. Indexing is
    differentiable: the gradient of every row flows back into the prompt pass that made `cache`."""
    return Cache(layers=[_PromptLayer(layer.keys[rows], layer.values[rows]) for layer in cache.layers])


class UnsupportedCache(RuntimeError):
    """The model's cache cannot be shared this way (the loss then runs on the stock path)."""


def full_attention_cache(cache) -> bool:
    """Every layer of `cache` is a plain dynamic full-attention layer (no sliding window, no
    linear attention, no offloading): the only kind whose keys can be indexed out and extended."""
    return isinstance(cache, DynamicCache) and not cache.offloading and all(
        type(layer) is DynamicLayer for layer in cache.layers)


# ------------------------------------------------------------------------- gradient checkpointing
def checkpointing_modules(model) -> list:
    """The modules whose `gradient_checkpointing` flag is on: the decoder layers, and the model
    itself (which then turns `use_cache` off)."""
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def checkpointing_problem(model) -> str | None:
    """Why the shared prompt cannot train under this model's gradient checkpointing, or None.

    The completions read the prompt's keys and values from a cache that the checkpointed layers
    receive as a keyword argument; only non-reentrant `torch.utils.checkpoint` follows gradients
    into such tensors (reentrant checkpointing, and Unsloth's offloaded variant, see only the
    positional hidden states).
    """
    for layer in checkpointing_modules(model):
        if not isinstance(layer, GradientCheckpointingLayer):
            continue
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if not (isinstance(func, functools.partial) and func.func is torch.utils.checkpoint.checkpoint
                and func.keywords.get("use_reentrant") is False):
            return "gradient checkpointing is not torch's non-reentrant checkpoint (use_reentrant: false)"
    return None


@contextlib.contextmanager
def _prompt_pass(modules):
    """The prompt pass fills a cache, which checkpointing refuses: run it without checkpointing
    (its activations are U*P tokens, 1/G of the prompt tokens stock checkpoints)."""
    for layer in modules:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer in modules:
            layer.gradient_checkpointing = True


@contextlib.contextmanager
def _completion_pass(modules):
    """Let checkpointed layers keep the read-only prompt cache (transformers' switch for layers
    that only read a cache: the recompute in backward then reads the same keys and values)."""
    layers = [m for m in modules if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache


# ------------------------------------------------------------------------------------ the loss
def shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep: int, temperature: float,
                        compute_entropy: bool = False, entropy_grad: bool = False,
                        checkpointing: list | None = None):
    """Per-token log-probabilities (and entropies) of the completions, each prompt encoded once.

    Same contract as TRL's `_get_per_token_logps_and_entropies` for one chunk: `input_ids` is
    [left-padded prompts | right-padded completions], the completions are the last
    `logits_to_keep` columns; returns `(logps, entropies or None)`, each `(B, logits_to_keep)`.
    `checkpointing`: the model's `checkpointing_modules` while training (empty without gradient
    checkpointing).
    """
    checkpointing = checkpointing or []
    width = input_ids.size(1) - logits_to_keep
    prompt_ids, prompt_mask = input_ids[:, :width], attention_mask[:, :width]
    completion_ids = input_ids[:, width:]
    first, inverse = distinct_rows(prompt_ids, prompt_mask)

    # Prompt pass: the distinct prompts, at positions 0..P-1 of the padded width like stock's forward
    # (which numbers positions from the left edge, pads included). Only the last position's logits
    # are needed: they predict every row's first completion token.
    with _prompt_pass(checkpointing):
        out = model(input_ids=prompt_ids[first], attention_mask=prompt_mask[first], use_cache=True,
                    logits_to_keep=1)
    if not full_attention_cache(out.past_key_values):
        raise UnsupportedCache(f"the model's cache is {type(out.past_key_values).__name__}, not a full-attention "
                               "DynamicCache")
    first_logits = out.logits[inverse, -1:, :] / temperature  # (B, 1, V)
    chunks = [first_logits]

    # Completion pass: each row continues its prompt's cache. The last completion token predicts
    # nothing stock keeps, so it is not fed; positions continue at P (the cache length).
    if logits_to_keep > 1:
        cache = rows_of(out.past_key_values, inverse)
        with _completion_pass(checkpointing):
            rest = model(input_ids=completion_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                         past_key_values=cache, use_cache=False)
        chunks.append(rest.logits / temperature)  # (B, C-1, V)

    logps = torch.cat([selective_log_softmax(lg, ids) for lg, ids in
                       zip(chunks, completion_ids.split([1, logits_to_keep - 1], dim=1), strict=False)], dim=1)
    entropies = None
    if compute_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropies = torch.cat([entropy_from_logits(lg) for lg in chunks], dim=1)
    return logps, entropies


# ------------------------------------------------------------------------------- generation
def repeated_prompt_tokens(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """Real (unpadded) prompt tokens of the rows whose prompt an earlier row already holds."""
    first, _ = distinct_rows(ids, mask)
    return int(mask.sum()) - int(mask[first].sum())


def prefilled_generate(generate, model, input_ids, attention_mask, saved: dict | None = None, **kwargs):
    """`generate(input_ids, attention_mask, **kwargs)` with each distinct prompt prefilled once.

    All but the last prompt column go through the model for the distinct prompts only, at the
    positions `generate` itself gives left-padded prompts (count of real tokens before, pads at 0);
    the cache is indexed out to the rows and `generate` goes on from it: it runs the last prompt
    token of every row, then samples as it always does. Falls through to plain `generate` when no
    prompt repeats or the cache is not a full-attention dynamic one. `saved["generation"]` (when
    given) grows by the prompt tokens the shared prefill did not run.
    """
    if input_ids.size(1) < 2 or kwargs.get("past_key_values") is not None:
        return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    first, inverse = distinct_rows(input_ids, attention_mask)
    if first.numel() == input_ids.size(0):
        return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    ids, mask = input_ids[first, :-1], attention_mask[first, :-1]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if not full_attention_cache(cache):
        return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    cache.batch_select_indices(inverse)  # a writable DynamicCache again: generate appends to it
    if saved is not None:  # the rows' prompts but their last column ran once per distinct prompt
        saved["generation"] = saved.get("generation", 0) + int(attention_mask[:, :-1].sum()) - int(mask.sum())
    return generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, **kwargs)


# ----------------------------------------------------------------------------- the trainer
# The first-use check's tolerance on the largest |log-prob difference| from stock. Measured on
# SmolLM2-135M (2 prompts x 8, P 113, C 32, one prompt left-padded): float32 3e-5 (log-probs of
# -5 to -15; the tiny test models ~1e-6). bfloat16 0.25 - rounding: stock and shared are each
# within 0.33 of the float32 log-probs (mean 0.05) - while deliberate bugs move them further:
# completion positions off by one 1.9, the prompt's pads unmasked 2.3.
CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
CHECK_TOLERANCE_HALF = 1.0


@dataclass
class SharedPrefix:
    """What `attach` did to one trainer: whether the loss passes and generation share prompts, why
    not where they do not, the first-use check, and what Unsloth's own PrefixGrouper did (GPU)."""

    loss: bool = False
    generation: bool = False
    stock_because: dict[str, list[str]] = field(default_factory=lambda: {"loss": [], "generation": []})
    first_use_max_abs_logprob_diff: float | None = None
    unsloth_prefix_grouper: dict | None = None
    # Prompt tokens (pads excluded) that did not go through the model because a copy of the same
    # prompt did: in generation's prefill, in the loss passes (gradients on) and in the no-grad
    # passes (old policy, reference). The demo's compute budget takes them off (core/compute.py).
    saved_tokens: dict = field(default_factory=lambda: {"generation": 0, "grad": 0, "no_grad": 0})

    def fall_back(self, half: str, why: str) -> None:
        """Send `half` ("loss" or "generation") to the stock path from now on, saying why in one line."""
        setattr(self, half, False)
        self.stock_because[half].append(why)
        print(f"[grpo] shared prompt: the {half} passes go back to stock TRL from here ({why})")

    def summary(self) -> dict:
        return {"loss": self.loss, "generation": self.generation, "stock_because": self.stock_because,
                "first_use_max_abs_logprob_diff": self.first_use_max_abs_logprob_diff,
                "unsloth_prefix_grouper": self.unsloth_prefix_grouper, "saved_tokens": dict(self.saved_tokens)}


def stock_reasons(trainer) -> dict[str, list[str]]:
    """Why the loss passes / generation of this trainer must stay on stock TRL (empty: they need not)."""
    common = []
    if trainer.accelerator.num_processes > 1:
        common.append(f"{trainer.accelerator.num_processes} processes: DDP/FSDP/DeepSpeed not verified")
    if trainer._is_vlm:
        common.append("a vision-language model")
    if trainer.tools or trainer.rollout_func is not None or trainer.environment_factories is not None:
        common.append("tools, environments or a rollout function")
    loss = list(common)
    if trainer.aux_loss_enabled:
        loss.append("a mixture-of-experts auxiliary loss")
    if "logits_to_keep" not in trainer.model_kwarg_keys:
        loss.append("the model's forward takes no logits_to_keep")
    if trainer.use_liger_kernel:
        loss.append("the Liger loss")
    generation = list(common)
    if trainer.use_vllm:
        generation.append("vLLM generates")
    if trainer.use_transformers_continuous_batching:
        generation.append("continuous batching generates")
    if trainer.args.cache_implementation not in (None, "dynamic"):
        generation.append(f"cache_implementation {trainer.args.cache_implementation!r}")
    return {"loss": loss, "generation": generation}


def attach(trainer, enabled: bool = True) -> SharedPrefix:
    """Make a `trl.GRPOTrainer` encode each prompt once per group (see the module docstring).

    Call it after building the trainer, before `train()` and before core.timing's wrappers (so
    their phases include these). Prints one line: what is shared, or why the stock path runs; the
    returned state goes into run_info.json (`shared_prefix`), updated after the first step and at
    the end. On Unsloth's GPU trainer nothing is wrapped: its PrefixGrouper does the loss side, and
    whether it engaged (its flags on the model) is printed after the first step.
    """
    state = SharedPrefix()
    trainer.add_callback(_Record(trainer, state))
    if is_unsloth_trainer(trainer):
        state.unsloth_prefix_grouper = unsloth_prefix_grouper(trainer)
        state.stock_because = {"loss": ["Unsloth's GPU trainer: its own PrefixGrouper"],
                               "generation": ["Unsloth's GPU trainer"]}
        print(f"[grpo] shared prompt: Unsloth's trainer; PrefixGrouper: {state.unsloth_prefix_grouper['gate']}")
        return state
    if not enabled:
        state.stock_because = {"loss": ["shared_prefix: false"], "generation": ["shared_prefix: false"]}
        print("[grpo] shared prompt: off (shared_prefix: false): stock TRL encodes every prompt G times")
        return state
    state.stock_because = stock_reasons(trainer)
    state.loss, state.generation = not state.stock_because["loss"], not state.stock_because["generation"]
    if state.loss:
        _wrap_logps(trainer, state)
    if state.generation:
        _wrap_generation(trainer, state)
    shared = [half for half in ("loss", "generation") if getattr(state, half)]
    stock = [f"{half} stays stock ({'; '.join(why)})" for half, why in state.stock_because.items() if why]
    print("[grpo] shared prompt: " + "; ".join(
        ([f"{' and '.join(shared)} encode each prompt once per group of {trainer.num_generations}"] if shared else [])
        + stock))
    return state


def _close(ours: torch.Tensor, stock: torch.Tensor, mask: torch.Tensor) -> float:
    return float((ours.detach() - stock).abs().masked_fill(mask == 0, 0).max())


def _wrap_logps(trainer, state: SharedPrefix) -> None:
    stock = trainer._get_per_token_logps_and_entropies
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)

    def shared(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy):
        checkpointing = checkpointing_modules(unwrapped) if torch.is_grad_enabled() and unwrapped.training else []
        logps, entropies = [], []
        kind = "grad" if torch.is_grad_enabled() else "no_grad"
        for start in range(0, input_ids.size(0), batch_size):  # stock's chunks: the same memory bound
            rows = slice(start, start + batch_size)
            prompt = slice(None, input_ids.size(1) - logits_to_keep)
            lp, ent = shared_prefix_logps(model, input_ids[rows], attention_mask[rows], logits_to_keep,
                                          trainer.temperature, compute_entropy=compute_entropy,
                                          entropy_grad=trainer._entropy_bonus_enabled, checkpointing=checkpointing)
            state.saved_tokens[kind] += repeated_prompt_tokens(input_ids[rows, prompt], attention_mask[rows, prompt])
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    @functools.wraps(stock)
    def per_token_logps(model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
                        compute_aux_loss=False, **multimodal):
        def run_stock():
            return stock(model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                         compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)

        if not state.loss or compute_aux_loss or any(v is not None for v in multimodal.values()):
            return run_stock()
        if torch.is_grad_enabled() and unwrapped.training and (problem := checkpointing_problem(unwrapped)):
            state.fall_back("loss", problem)
            return run_stock()
        try:
            result = shared(model, input_ids, attention_mask, logits_to_keep, batch_size or input_ids.size(0),
                            compute_entropy)
        except UnsupportedCache as err:
            state.fall_back("loss", str(err))
            return run_stock()
        if state.first_use_max_abs_logprob_diff is None:
            with torch.no_grad():
                reference = stock(model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size)[0]
            diff = _close(result[0], reference, attention_mask[:, -logits_to_keep:])
            state.first_use_max_abs_logprob_diff = diff
            tolerance = CHECK_TOLERANCE.get(reference.dtype, CHECK_TOLERANCE_HALF)
            if not diff <= tolerance:  # NaN fails too
                state.fall_back("loss", f"first-use check: log-probs differ from stock by {diff:.3g} > {tolerance:g}")
                return run_stock()
        return result

    trainer._get_per_token_logps_and_entropies = per_token_logps


def _wrap_generation(trainer, state: SharedPrefix) -> None:
    stock = trainer._generate_single_turn
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    plain_generate = type(unwrapped).generate.__get__(unwrapped)

    @functools.wraps(stock)
    def generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs):
        if images is not None or multimodal_fields:
            return stock(prompt_ids, images, multimodal_fields, *args, **kwargs)
        # TRL calls `generate` on the model it unwraps for generation, which is this one: for this
        # call only, give it the generate that prefills each distinct prompt once.
        unwrapped.generate = functools.partial(prefilled_generate, plain_generate, unwrapped,
                                               saved=state.saved_tokens)
        try:
            return stock(prompt_ids, images, multimodal_fields, *args, **kwargs)
        finally:
            del unwrapped.generate

    trainer._generate_single_turn = generate_single_turn


# ------------------------------------------------------------------------- Unsloth's GPU trainer
def is_unsloth_trainer(trainer) -> bool:
    """Unsloth's patched trainer (GPU path) rather than stock TRL's (the CPU path and `backend: hf`)."""
    return any(cls.__name__.startswith("Unsloth") for cls in type(trainer).__mro__)


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def unsloth_prefix_grouper(trainer) -> dict:
    """What Unsloth's GRPO trainer does about shared prompts, read from its own switches and, once
    steps ran, from the flags it leaves on the model (unsloth/models/rl_replacements.py,
    unsloth_zoo/rl_replacements.py): it verifies each batch layout against the full forward on
    first use and records the verified ones; a token-ratio gate (UNSLOTH_GRPO_PREFIX_GROUPER_TOKR)
    declines layouts where sharing saves little."""
    off = [name for name in ("UNSLOTH_GRPO_PREFIX_GROUPER", "UNSLOTH_GRPO_SEQ_PACKING") if not _env_on(name)]
    if off:
        gate = f"off ({', '.join(off)} off)"
    elif trainer.use_vllm:
        gate = "off (Unsloth turns it off when vLLM generates)"
    else:
        gate = "on, subject to its token-ratio gate and first-use check"
        if trainer._entropy_bonus_enabled or trainer.top_entropy_quantile < 1.0:
            gate += " (no-grad passes only: the loss needs entropies)"
    model = trainer.accelerator.unwrap_model(trainer.model)
    found = {"gate": gate}
    for kind in ("grad", "nograd"):
        verified = getattr(model, f"_unsloth_prefix_grouper_{kind}_verified", None)
        unsafe = getattr(model, f"_unsloth_prefix_grouper_{kind}_unsafe", None)
        found[f"{kind}_verified_layouts"] = len(verified) if verified else 0
        found[f"{kind}_unsafe_layouts"] = len(unsafe) if unsafe else 0
    found["nograd_disabled"] = bool(getattr(model, "_unsloth_prefix_grouper_nograd_disabled", False))
    found["engaged"] = found["grad_verified_layouts"] + found["nograd_verified_layouts"] > 0
    return found


class _Record(TrainerCallback):
    """Keep run_info.json's `shared_prefix` up to date: after the first optimizer step (the
    first-use check, or Unsloth's own checks, have run by then; on Unsloth's trainer, also say in
    one line whether its PrefixGrouper engaged) and at the end of training."""

    def __init__(self, trainer, state: SharedPrefix):
        self.trainer, self.state, self.first = trainer, state, True

    def _record(self, args) -> None:
        if self.state.unsloth_prefix_grouper is not None:
            self.state.unsloth_prefix_grouper = unsloth_prefix_grouper(self.trainer)
        record_in_run_info(args.output_dir, self.state)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.first:
            return
        self.first = False
        self._record(args)
        if (found := self.state.unsloth_prefix_grouper) is not None:
            print(f"[grpo] Unsloth PrefixGrouper after the first step: {'engaged' if found['engaged'] else 'not engaged'}"
                  f" (verified layouts: loss {found['grad_verified_layouts']}, no-grad "
                  f"{found['nograd_verified_layouts']}; {found['gate']})")

    def on_train_end(self, args, state, control, **kwargs):
        self._record(args)


def record_in_run_info(output_dir: str, state: SharedPrefix) -> None:
    """Put `state.summary()` under `shared_prefix` in the run's newest run_info.json (rank 0)."""
    infos = sorted(Path(output_dir).glob("*run_info.json"), key=lambda p: p.stat().st_mtime)
    if not infos or not is_main_process():
        return
    info = json.loads(infos[-1].read_text(encoding="utf-8"))
    info["shared_prefix"] = state.summary()
    write_json_atomic(infos[-1], info)
