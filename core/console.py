"""What a training run prints: one short line per logged step, above the progress bar.

transformers' progress callback writes every logged metrics dict into the bar's line: about 1,500
characters per GRPO step, which buried the `[eval] step N: accuracy ...` lines and grew the
demo's log to 208 KB. `compact_console(trainer)` swaps it for `CompactLogCallback`: the same bar,
and per logged step one line - step, reward or loss, the trainer's own accuracy when it has one,
seconds per step. Every metric still goes to metrics.jsonl (`core.runs.JsonlMetricsCallback`) and
to the trackers in `report_to`; `VIRL_VERBOSE=1` keeps transformers' dicts on the console too.
`console(line)` is for any other line printed during training (held-out checks, targets).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback, ProgressCallback

from core.noise import verbose


def console(line: str) -> None:
    """Print one line above the training progress bar (tqdm's write), never into it: a plain
    print lands in the middle of the bar's line."""
    from tqdm import tqdm

    tqdm.write(line)
    sys.stdout.flush()


# What the console line of a logged step shows, first found first (metrics.jsonl has them all).
# The signal a method optimises: GRPO's mean reward, PPO's reward-model score; else the loss.
HEADLINE_METRICS = (("reward", "reward"), ("objective/scores", "score"), ("loss", "loss"))
# The accuracy a trainer measures on its own batches, when it has one.
ACCURACY_METRICS = (("rewards/accuracies", "reward accuracy"), ("mean_token_accuracy", "token accuracy"))
# What the [eval] line of the trainer's own evaluation shows: its loss and what says how good the
# model is (accuracies, F1); throughput, token counts and entropy stay in metrics.jsonl.
EVAL_SHOWN = ("loss", "accuracy", "f1")


def _short(value: float) -> str:
    """A number in at most 4 significant digits (tiny losses in scientific notation)."""
    return f"{value:.4g}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"


class CompactLogCallback(ProgressCallback):
    """transformers' progress bar, with one short console line per logged step instead of the
    metrics dict (a GRPO dict is ~1,500 characters a step, written into the bar's line).

    The line: step, the headline metric (`HEADLINE_METRICS`), the trainer's own accuracy when it
    logs one, and seconds per optimizer step (the mean since the previous line, measured from
    step begin to step end, so held-out checks and saves are left out). Held-out rows of the
    trainer's own evaluation (`eval_loss`, ...) get an `[eval]` line; rows of the project's checks
    (evaluate.gsm8k's training callbacks) are printed by those callbacks, once. The last line
    names metrics.jsonl, which keeps every metric; the trackers (`report_to`) get every metric too.

    Rank 0 only, like the bar. With `progress_bar=False` (the trainer's `disable_tqdm`) the lines
    are printed without a bar.
    """

    def __init__(self, output_dir: str | None = None, progress_bar: bool = True):
        super().__init__()
        self.output_dir = output_dir
        self.progress_bar = progress_bar
        self._step_start: float | None = None
        self._durations: list[float] = []
        self._last_log: tuple[int, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress_bar:
            super().on_train_begin(args, state, control, **kwargs)
        self._last_log = (state.global_step, time.perf_counter())

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is not None:
            self._durations.append(time.perf_counter() - self._step_start)
            self._step_start = None
        if self.progress_bar:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.progress_bar:
            super().on_prediction_step(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress_bar:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = self.line(state, logs)
        if line is None:
            return
        console(line)  # above any bar: the training bar, or the trainer's evaluation bar

    def seconds_per_step(self, step: int) -> float | None:
        """Mean optimizer-step time since the previous line; the wall time between lines over the
        steps between them for a trainer without step-begin events (TRL's PPO)."""
        now = time.perf_counter()
        if self._durations:
            seconds = sum(self._durations) / len(self._durations)
        elif self._last_log is not None and step > self._last_log[0]:
            seconds = (now - self._last_log[1]) / (step - self._last_log[0])
        else:
            seconds = None
        self._durations = []
        self._last_log = (step, now)
        return seconds

    def line(self, state, logs: dict[str, Any]) -> str | None:
        """The console line for one `on_log` row, or None when another callback prints it."""
        numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "train_runtime" in numbers:
            where = f"; every metric is in {Path(self.output_dir) / 'metrics.jsonl'}" if self.output_dir else ""
            loss = f", mean loss {_short(numbers['train_loss'])}" if "train_loss" in numbers else ""
            return f"[train] done: {state.global_step} steps in {numbers['train_runtime']:.1f} s{loss}{where}"
        if all(k.startswith(("eval_", "target_")) or k == "epoch" for k in numbers):
            # The trainer's own evaluation logs its runtime; the project's checks print their own line.
            if "eval_runtime" not in numbers:
                return None
            shown = [f"{k[5:]} {_short(v)}" for k, v in numbers.items()
                     if k.startswith("eval_") and any(word in k[5:] for word in EVAL_SHOWN)]
            return f"[eval] step {state.global_step}: {', '.join(shown)} ({numbers['eval_runtime']:.1f} s)"
        parts = [f"{name} {_short(numbers[key])}" for key, name in HEADLINE_METRICS if key in numbers][:1]
        parts += [f"{name} {numbers[key]:.3f}" for key, name in ACCURACY_METRICS if key in numbers][:1]
        if not parts:  # a row none of the above describes: its first few numbers, the rest in metrics.jsonl
            parts = [f"{k} {_short(v)}" for k, v in numbers.items() if k != "epoch"][:4]
        seconds = self.seconds_per_step(state.global_step)
        if seconds is not None:
            parts.append(f"{seconds:.2f} s/step")
        total = f"/{state.max_steps}" if state.max_steps and state.max_steps > 0 else ""
        return f"[train] step {state.global_step}{total}: {', '.join(parts)}"


def compact_console(trainer, output_dir: str | None = None) -> None:
    """Replace the trainer's console logger (the progress bar's dict, or `disable_tqdm`'s
    printed dict) by `CompactLogCallback`. `VIRL_VERBOSE=1` keeps transformers' own. A notebook's
    progress table is left as it is: it already shows one row per step."""
    if verbose():
        return
    bar = trainer.pop_callback(ProgressCallback)
    printer = trainer.pop_callback(PrinterCallback)
    if bar is None and printer is None:
        return
    trainer.add_callback(CompactLogCallback(output_dir or trainer.args.output_dir, progress_bar=bar is not None))
