"""Guards that end a GRPO run early, with the reason, when it cannot learn.

GRPO learns only from groups whose samples got different rewards: a completion's advantage is its
reward minus its group's mean, so a group that agrees (all right, or all wrong) contributes a zero
gradient. TRL logs the share of such groups as `frac_reward_zero_std`. When it stays near 1 from
the first steps, the rest of the run computes samples and gradients of zero: the policy agrees
with itself (an SFT priming trained to certainty, sampling too cold) or the problems are all too
easy or all too hard for it. Measured on the offline demo (SmolLM2-135M, 2 CPU cores): a fully
trained SFT policy had entropy 0.05-0.14 and 40-90 % of its groups were identical.

    from recipes.grpo_guards import ZeroVarianceGuard
    guard = ZeroVarianceGuard(steps=5, threshold=0.95, temperature=args.temperature)
    trainer = GRPOTrainer(..., callbacks=[..., guard])
    trainer.train()
    guard.raise_if_tripped()     # UserError: one line through the recipe's run_cli, exit 2

`recipes/grpo.py` adds it from the config keys `zero_std_guard_steps` (0: off) and
`zero_std_guard_threshold`.
"""

from __future__ import annotations

from transformers import TrainerCallback

from core.cli import UserError

METRIC = "frac_reward_zero_std"
REWARD = "reward"


class ZeroVarianceGuard(TrainerCallback):
    """Stop a GRPO run whose groups all agree during its first `steps` optimizer steps.

    Every logged `frac_reward_zero_std` up to step `steps` is kept; at the first log at or after
    step `steps`, if each of them is at least `threshold`, training stops there (the trainer
    closes its progress bar; nothing is saved) and `raise_if_tripped` then raises a `UserError`:
    one line through the recipe's `run_cli` saying what was seen, why it means no learning and
    what to change.
    With `logging_steps` larger than `steps` that first log averages its whole logging window. A
    run resumed at or after step `steps` is not checked again (its start was).

    Args:
        steps: the first steps that decide (0 turns the guard off).
        threshold: the share of identical groups that counts as "no signal".
        temperature: the sampling temperature, named in the advice.
    """

    def __init__(self, steps: int = 5, threshold: float = 0.95, temperature: float | None = None):
        if steps < 0 or not 0.0 < threshold <= 1.0:
            raise ValueError(f"zero_std_guard_steps must be >= 0 and zero_std_guard_threshold in (0, 1], "
                             f"got {steps} and {threshold}")
        self.steps, self.threshold, self.temperature = steps, threshold, temperature
        self.seen: list[tuple[int, float, float | None]] = []  # (step, frac_reward_zero_std, reward)
        self.done = steps == 0
        self.tripped: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:  # resumed after the first steps: they were checked then
            self.done = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.done or not logs or logs.get(METRIC) is None:
            return
        self.seen.append((state.global_step, float(logs[METRIC]), logs.get(REWARD)))
        if state.global_step < self.steps:
            return
        self.done = True
        if all(frac >= self.threshold for _, frac, _ in self.seen):
            self.tripped = self.message()
            control.should_training_stop = True

    def raise_if_tripped(self) -> None:
        """After `trainer.train()`: end the run with the reason when the guard stopped it."""
        if self.tripped:
            raise UserError(self.tripped)

    def message(self) -> str:
        """The one line the run stops with."""
        fracs = ", ".join(f"{frac:.2f}" for _, frac, _ in self.seen)
        rewards = [r for _, _, r in self.seen if r is not None]
        mean = f"; mean reward {sum(rewards) / len(rewards):.2f}" if rewards else ""
        temp = f" (now {self.temperature:g})" if self.temperature is not None else ""
        return (f"GRPO cannot learn here: in the first {self.seen[-1][0]} steps {METRIC} was {fracs} "
                f"(>= {self.threshold:g}{mean}), so almost every group of samples got identical rewards and "
                f"every advantage is 0 - the policy agrees with itself. Raise the sampling temperature{temp}, "
                "stop the SFT priming earlier, or pick problems it solves about half the time; "
                "zero_std_guard_steps: 0 turns this check off")
