"""Where a training step's time goes, logged as `time/*` metrics next to TRL's own.

The most common question about GRPO speed is "how much of a step is generation?". TRL 1.12 times
its phases (`trl.extras.profiling`) but sends them only to wandb/mlflow/trackio, one call at a
time; here the same phases are summed per optimizer step and handed to `Trainer.log`, so they
reach `metrics.jsonl`, TensorBoard and every other tracker as one row per logging step (the mean
over the steps since the last log, as TRL averages its own metrics):

GRPO (`attach_grpo_step_timer`), seconds per optimizer step:
    time/step             the whole step (on_step_begin to on_step_end)
    time/generation       sampling the completions (`GRPOTrainer._generate`: HF generate or vLLM)
    time/reward           scoring them (`_calculate_rewards`: every reward function)
    time/logprob_passes   forward passes without gradient: the reference model's log-probs when
                          beta > 0, the old policy's when a generation is reused
    time/forward_backward the policy's loss forward and backward (`training_step` minus the above)
    time/optimizer        gradient clipping and the optimizer step
    time/other            the rest: tokenizing, advantages, callbacks, the scheduler

PPO (`attach_ppo_step_timer`), seconds per update:
    time/step             rollout + update
    time/rollout          generating and scoring a batch of episodes, of which
    time/generation       sampling the responses and
    time/reward           the reward model; the rest of the rollout is the reference and value
                          forward passes and the advantages
    time/update           the PPO epochs over that batch, of which
    time/optimizer        the optimizer steps

How: the trainer's own methods are wrapped on the instance (no TRL code is copied or patched),
plus transformers callbacks for the optimizer step in GRPO and module hooks in PPO. On a GPU each
timed phase ends with `torch.cuda.synchronize()`, so that queued kernels are charged to the phase
that launched them (a few microseconds per phase). Rank 0 logs its own times.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

PREFIX = "time/"


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepClock:
    """Seconds per phase within the current step; finished steps wait in `done` until the next log."""

    def __init__(self):
        self.current: dict[str, float] | None = None
        self.done: list[dict[str, float]] = []
        self.started = 0.0

    def begin(self) -> None:
        self.current = {}
        self.started = _now()

    def add(self, phase: str, seconds: float) -> None:
        if self.current is not None:
            self.current[phase] = self.current.get(phase, 0.0) + seconds

    def end(self, derive: Callable[[dict[str, float], float], dict[str, float]]) -> None:
        """Close the step; ``derive(phases, total)`` turns the raw phases into the logged ones."""
        if self.current is None:
            return
        total = _now() - self.started
        self.done.append(derive(self.current, total))
        self.current = None

    def wrap(self, phase: str, func: Callable[..., Any], when: Callable[[], bool] | None = None) -> Callable[..., Any]:
        """``func`` that adds its duration to ``phase`` (only while ``when()`` holds, if given)."""

        @functools.wraps(func)
        def timed(*args, **kwargs):
            if self.current is None or (when is not None and not when()):
                return func(*args, **kwargs)
            start = _now()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(phase, _now() - start)

        return timed

    def summary(self) -> dict[str, float]:
        """Mean seconds per phase over the finished steps since the last call (empty if none)."""
        if not self.done:
            return {}
        keys = sorted({k for step in self.done for k in step})
        means = {PREFIX + k: round(sum(step.get(k, 0.0) for step in self.done) / len(self.done), 4) for k in keys}
        self.done = []
        return means


def _log_with_times(trainer, clock: StepClock, before: Callable[[], None] | None = None) -> None:
    """Make ``trainer.log`` add the step times to every training log row (after ``before()``)."""
    original = trainer.log

    @functools.wraps(original)
    def log(logs: dict[str, float], *args, **kwargs):
        if before is not None:
            before()
        if not any(k.startswith("eval_") for k in logs):
            logs = {**logs, **clock.summary()}
        return original(logs, *args, **kwargs)

    trainer.log = log


# ------------------------------------------------------------------------------------------ GRPO
def _grpo_phases(raw: dict[str, float], total: float) -> dict[str, float]:
    phases = {
        "step": total,
        "generation": raw.get("generation", 0.0),
        "reward": raw.get("reward", 0.0),
        "logprob_passes": raw.get("logprob_passes", 0.0),
        "forward_backward": max(0.0, raw.get("training_step", 0.0) - raw.get("prepare_inputs", 0.0)),
        "optimizer": raw.get("optimizer", 0.0),
    }
    phases["other"] = max(0.0, total - sum(v for k, v in phases.items() if k != "step"))
    return phases


class _GRPOStepCallback(TrainerCallback):
    def __init__(self, clock: StepClock):
        self.clock = clock
        self.last_backward_end = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.begin()

    def on_optimizer_step(self, args, state, control, **kwargs):
        # From the end of the last micro-batch's backward: gradient clipping + optimizer.step().
        self.clock.add("optimizer", _now() - self.last_backward_end)

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.end(_grpo_phases)


def attach_grpo_step_timer(trainer) -> StepClock:
    """Time a `trl.GRPOTrainer`'s phases per optimizer step (see the module docstring). Call it
    after building the trainer and before `train()`; returns the clock."""
    clock = StepClock()
    callback = _GRPOStepCallback(clock)
    trainer._generate = clock.wrap("generation", trainer._generate)
    trainer._calculate_rewards = clock.wrap("reward", trainer._calculate_rewards)
    # Called with gradients for the loss too; only the no-grad calls are extra passes.
    trainer._get_per_token_logps_and_entropies = clock.wrap(
        "logprob_passes", trainer._get_per_token_logps_and_entropies, when=lambda: not torch.is_grad_enabled())
    trainer._prepare_inputs = clock.wrap("prepare_inputs", trainer._prepare_inputs)
    step = clock.wrap("training_step", trainer.training_step)

    @functools.wraps(step)
    def training_step(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        finally:
            callback.last_backward_end = _now()

    trainer.training_step = training_step
    trainer.add_callback(callback)
    _log_with_times(trainer, clock)
    return clock


# ------------------------------------------------------------------------------------------- PPO
class _PPOPhase:
    """Which part of a PPO update is running: set when a batch is drawn (rollout), when the
    policy-and-value wrapper first runs forward (update), cleared at the log."""

    def __init__(self):
        self.name: str | None = None
        self.marks: dict[str, float] = {}


class _TimedLoader:
    """The trainer's dataloader, marking the start of every update's rollout as a batch is drawn."""

    def __init__(self, loader, on_batch: Callable[[], None]):
        self.loader, self.on_batch = loader, on_batch

    def __iter__(self):
        for batch in self.loader:
            self.on_batch()
            yield batch

    def __len__(self):
        return len(self.loader)


def attach_ppo_step_timer(trainer) -> StepClock:
    """Time a `trl.experimental.ppo.PPOTrainer`'s rollout and update per PPO update (see the
    module docstring). Call it after building the trainer and before `train()`."""
    clock = StepClock()
    phase = _PPOPhase()

    def rollout_begins():
        clock.begin()
        phase.name = "rollout"
        phase.marks = {"rollout": clock.started}

    def update_begins(module, args):
        if phase.name == "rollout":
            now = _now()
            clock.add("rollout", now - phase.marks["rollout"])
            phase.name, phase.marks["update"] = "update", now

    def in_rollout() -> bool:
        return phase.name == "rollout"

    def phases(raw: dict[str, float], total: float) -> dict[str, float]:
        return {"step": total, **{k: raw.get(k, 0.0) for k in ("rollout", "generation", "reward", "update")},
                **({"optimizer": raw.get("optimizer", 0.0)} if timed_optimizer else {})}

    def update_ends():
        if phase.name == "update":  # PPO logs once per update, right after it
            clock.add("update", _now() - phase.marks["update"])
            clock.end(phases)
            phase.name = None

    trainer.dataloader = _TimedLoader(trainer.dataloader, rollout_begins)
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    wrapper.register_forward_pre_hook(update_begins)
    # Sampling goes through the policy's generate; the samples callback generates too, after the
    # update, which `in_rollout` leaves out.
    policy = trainer.policy_model
    policy.generate = clock.wrap("generation", policy.generate, when=in_rollout)
    reward_backbone = getattr(trainer.reward_model, trainer.reward_model.base_model_prefix)
    reward_backbone.forward = clock.wrap("reward", reward_backbone.forward, when=in_rollout)

    # Accelerate wraps the torch optimizer; DeepSpeed's own optimizers take no step hooks (then the
    # optimizer share is not reported).
    optimizer = trainer.optimizer.optimizer
    timed_optimizer = isinstance(optimizer, torch.optim.Optimizer)
    if timed_optimizer:
        step_started: list[float] = []
        optimizer.register_step_pre_hook(lambda *a: step_started.append(_now()))
        optimizer.register_step_post_hook(lambda *a: clock.add("optimizer", _now() - step_started.pop()))
    _log_with_times(trainer, clock, before=update_ends)
    return clock
