"""Plot and compare training runs from their logs: `make plot RUN="runs/a runs/b"`.

Reads each run directory's ``metrics.jsonl`` (every logged step, written by every recipe) and
``train_eval.jsonl`` (held-out accuracy at each checkpoint, when the run evaluates during
training), and writes into one folder:

- ``overview.png``: the training reward (each step, and its running mean) and the held-out
  accuracy at each checkpoint - the picture of a GRPO run (the demo's report draws this one);
- ``rewards.png``: the mean of every reward function, one panel each;
- ``training.png``: whichever of completion length, clipped ratio, entropy,
  frac_reward_zero_std, KL, loss, PPO's score/KL/entropy, DPO's reward accuracy/margin and the
  Vietnamese share of held-out answers the runs logged;
- ``step_time.png``: where a step's time goes (``time/*``, see `core.timing`) and the step
  time over the run;
- ``summary.md``: per run its status, steps and wall time; the final and best value of every
  metric above; the step-time breakdown; the pictures.

Several runs are overlaid, one colour each. A run still in progress can be plotted at any time:
a half-written last line is skipped, and the summary says the run has not finished. Plotting
again overwrites the folder's pictures. Light on purpose: no torch; matplotlib is imported only
to draw.

    make plot RUN=runs/grpo-qwen2.5-3b                         # -> runs/grpo-qwen2.5-3b/plots/
    make plot RUN="runs/grpo-a runs/grpo-b" OUT=runs/plots/ab  # two runs overlaid
    python -m evaluate.plots runs/demo/grpo --out /tmp/p
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import ArgumentParser
from core.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"
TRAIN_EVAL_FILE = "train_eval.jsonl"  # written by evaluate.gsm8k's training-time callback

# Panels of training.png: (metric key, title, higher is better / lower is better / None).
TRAINING_PANELS: list[tuple[str, str, bool | None]] = [
    ("completions/mean_length", "completion length (tokens)", None),
    ("completions/clipped_ratio", "clipped ratio (hit max_completion_length)", False),
    ("entropy", "entropy of the policy (per token)", None),
    ("frac_reward_zero_std", "frac_reward_zero_std (groups that teach nothing)", False),
    ("kl", "KL to the reference", None),
    ("loss", "loss", False),
    ("objective/scores", "PPO: reward-model score", True),
    ("objective/kl", "PPO: KL to the reference", None),
    ("objective/entropy", "PPO: entropy", None),
    ("rewards/accuracies", "DPO: implicit reward accuracy", True),
    ("rewards/margins", "DPO: implicit reward margin", True),
    ("mean_token_accuracy", "SFT: token accuracy", True),
    ("eval_loss", "held-out loss", False),
    ("eval_vi_word_share", "held-out answers: Vietnamese word share", True),
    ("eval_drift_rate", "held-out answers drifting to another language", False),
]
HELD_OUT = "eval_accuracy"
# Direction of the summary's other metrics ("best" is the max or the min).
DIRECTION: dict[str, bool | None] = {
    "reward": True, HELD_OUT: True, "eval_accuracy_strict": True, "eval_format_rate": True,
    **{key: better for key, _, better in TRAINING_PANELS},
}
# Step-time phases in drawing order (core/timing.py); "step" is their total. GRPO: generation,
# reward, logprob_passes, forward_backward, optimizer, other. PPO: rollout (of which generation and
# reward) and update (of which optimizer).
PHASES = ["generation", "reward", "logprob_passes", "rollout", "forward_backward", "optimizer", "update", "other"]
TABLE_ORDER = ["step", "rollout", "generation", "reward", "logprob_passes", "forward_backward", "update",
               "optimizer", "other"]
PHASE_LABELS = {"logprob_passes": "log-prob passes (no grad)", "forward_backward": "loss forward + backward",
                "rollout": "rollout (other)", "update": "update (other)"}


class PlotError(Exception):
    """A run that cannot be plotted (no metrics file, nothing logged yet)."""


# --------------------------------------------------------------------------------------- reading
def read_jsonl_tolerant(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a JSON Lines file that a running process may be appending to.

    Returns (rows, notes): a last line that does not parse is a write in progress and is left out
    quietly-ish (one note); a bad line before it is skipped with a note naming it.
    """
    if not path.is_file():
        return [], []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    rows, notes = [], []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == last:
                notes.append(f"{path}: the last line is incomplete (a run still writing?); left out")
            else:
                notes.append(f"{path}:{i + 1}: not JSON; skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, notes


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def last_per_step(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) for rows holding a number under ``key``, the last record of a step winning
    (a resumed run logs the steps after its checkpoint again)."""
    by_step = {}
    for row in rows:
        value = _number(row.get(key))
        if value is not None and isinstance(row.get("step"), int):
            by_step[row["step"]] = value
    return sorted(by_step.items())


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


@dataclass
class Run:
    """One run directory's logs."""

    path: Path
    label: str
    rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of a metric; held-out metrics also come from train_eval.jsonl."""
        return last_per_step(self.rows + (self.eval_rows if key.startswith("eval_") else []), key)

    def has(self, key: str) -> bool:
        return bool(self.series(key))

    @property
    def finished(self) -> bool:
        return any("train_runtime" in row for row in self.rows)

    @property
    def last_step(self) -> int:
        return max((row["step"] for row in self.rows + self.eval_rows if isinstance(row.get("step"), int)), default=0)

    @property
    def wall_seconds(self) -> float | None:
        """Seconds from the run's start (run_info.json) to its last log line."""
        times = [t for t in (_number(row.get("time")) for row in self.rows) if t is not None]
        if not times:
            return None
        try:
            start = time.mktime(time.strptime(self.info["started"], "%Y-%m-%dT%H:%M:%S"))
        except (KeyError, TypeError, ValueError):
            start = min(times)
        return max(times) - start

    def held_out_description(self) -> str:
        """'50 problems of test.jsonl' for the held-out accuracy panel's title."""
        sizes = {row.get("n") for row in self.eval_rows if isinstance(row.get("n"), int)}
        source = self.config.get("eval_dataset_name") or self.config.get("dataset_name")
        where = f" of {Path(source).name if Path(str(source)).suffix else source}" if source else ""
        return (f"{sizes.pop()} problems" if len(sizes) == 1 else "held-out problems") + where


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read a run directory (a recipe's output_dir). Raises PlotError when there is nothing to plot."""
    path = Path(path)
    if not path.is_dir():
        raise PlotError(f"run directory not found: {path}")
    if not (path / METRICS_FILE).is_file():
        raise PlotError(f"{path} has no {METRICS_FILE} (not a run directory, or the run has not logged a step yet)")
    rows, notes = read_jsonl_tolerant(path / METRICS_FILE)
    eval_rows, eval_notes = read_jsonl_tolerant(path / TRAIN_EVAL_FILE)
    if not rows and not eval_rows:
        raise PlotError(f"{path / METRICS_FILE} holds no complete row yet")
    config = {}
    if (path / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            config = {}
    return Run(path, label or path.name, rows, eval_rows, _read_json(path / "run_info.json"), config,
               notes + eval_notes)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Read several runs; labels are the directory names, with the parent when two collide."""
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [load_run(p, label) for p, label in zip(paths, labels, strict=True)]


def reward_functions(runs: Sequence[Run]) -> list[str]:
    """Reward function names logged by any run (``rewards/<name>/mean``), first seen first."""
    names: list[str] = []
    for run in runs:
        for row in run.rows:
            for key in row:
                if key.startswith("rewards/") and key.endswith("/mean") and key[8:-5] not in names:
                    names.append(key[8:-5])
    return names


# --------------------------------------------------------------------------------------- drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    os.replace(tmp, out)
    return out


def _window(n: int) -> int:
    return max(1, n // 8)


def _draw_curve(ax, points: list[tuple[int, float]], color: str, label: str, smooth: bool) -> None:
    """Raw values thin and faint, their running mean on top (when there are enough points)."""
    steps, values = zip(*points, strict=True)
    if smooth and len(values) >= 8:
        window = _window(len(values))
        ax.plot(steps, values, color=color, lw=0.8, alpha=0.35)
        ax.plot(steps, running_mean(values, window), color=color, lw=2, label=f"{label} (running mean of {window})")
    else:
        ax.plot(steps, values, color=color, lw=1.5, marker="o" if len(values) < 8 else None, ms=3, label=label)


def _grid(plt, n: int, cols: int = 3, size: tuple[float, float] = (4.6, 3.2)):
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def accuracy_labels(run: Run, start: tuple[float, int] | None, table: tuple[list[tuple[int, float]], int] | None,
                    start_label: str = "the starting model") -> tuple[str, str | None]:
    """Legend labels of the held-out panel: (the checkpoint curve, the full-set points or None).

    The curve is measured during training on a subset (`eval_limit`); a report's table scores
    every held-out problem. Drawn together they disagree at first sight (0.28 on 50 problems
    against 0.360 on 200), so each label says which problems it counts."""
    sizes = {row.get("n") for row in run.eval_rows if isinstance(row.get("n"), int)}
    n_curve = sizes.pop() if len(sizes) == 1 else (start[1] if start else None)
    if table is None:
        curve = run.label
    else:
        subset = f"the same {n_curve} of the {table[1]}" if n_curve and n_curve < table[1] else f"{n_curve or 'the'}"
        curve = f"{subset} held-out problems,\nat each checkpoint"  # two lines: the legend fits the panel
    if start is not None:
        curve += f" (step 0: {start_label})"
    whole = None if table is None else f"all {table[1]} held-out problems (the report's table)"
    return curve, whole


def plot_overview(runs: Sequence[Run], out: Path, start: dict[str, tuple[float, int]] | None = None,
                  reward_part: str = "rewards/correctness/mean", start_label: str = "the starting model",
                  table: dict[str, tuple[list[tuple[int, float]], int]] | None = None) -> Path:
    """overview.png: training reward per step (with its running mean) and held-out accuracy at
    each checkpoint, runs overlaid. ``start`` gives a run's accuracy before training, drawn at
    step 0 ({label: (accuracy, n)}); ``table`` gives accuracies measured on the whole held-out set
    ({label: ([(step, accuracy), ...], n)}), drawn as open squares with their own legend entry;
    ``reward_part`` is drawn dashed for a single run."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    single = len(runs) == 1
    for i, run in enumerate(runs):
        color = f"C{i}"
        reward = run.series("reward")
        if reward:
            label = "reward per step" if single else run.label
            _draw_curve(ax1, reward, color, label, smooth=True)
        part = run.series(reward_part)
        if single and part:
            steps, values = zip(*part, strict=True)
            name = reward_part.split("/")[1] if reward_part.count("/") == 2 else reward_part
            ax1.plot(steps, running_mean(values, _window(len(values))), color="C2", lw=1.5, ls="--",
                     label=f"its {name} part, running mean")
        held = run.series(HELD_OUT)
        if start and run.label in start:
            held = [(0, start[run.label][0])] + [p for p in held if p[0] != 0]
        curve_label, whole_label = accuracy_labels(run, (start or {}).get(run.label), (table or {}).get(run.label),
                                                   start_label)
        if held:
            steps, values = zip(*held, strict=True)
            ax2.plot(steps, values, marker="o", color=color if not single else "C1", label=curve_label)
            if len(runs) <= 2:
                for s, v in held:
                    ax2.annotate(f"{v:.2f}", (s, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        if whole_label is not None and table[run.label][0]:
            steps, values = zip(*table[run.label][0], strict=True)
            ax2.plot(steps, values, ls="none", marker="s", ms=9, mfc="none", mew=1.5, color="0.25", label=whole_label)
            for s, v in table[run.label][0]:  # beside the square: the curve's own value is written above it
                ax2.annotate(f"{v:.3f}", (s, v), textcoords="offset points", xytext=(8, -3), ha="left",
                             fontsize=8, color="0.25")
    ax1.set_xlabel("step")
    ax1.set_ylabel("reward on training prompts (sampled)")
    ax1.set_title("training reward")
    if ax1.lines:
        ax1.legend(fontsize=8)
    described = {run.held_out_description() for run in runs if run.series(HELD_OUT)}
    ax2.set_xlabel("step" + (f" (0 = {start_label})" if start else ""))
    ax2.set_ylabel("held-out accuracy (greedy)")
    ax2.set_title("held-out accuracy at each checkpoint" + (f"\n{described.pop()}" if len(described) == 1 else ""),
                  fontsize=10)
    ax2.set_ylim(0, 1)
    if ax2.lines and (not single or table):
        ax2.legend(fontsize=7, loc="upper left")
    if not ax2.lines:
        ax2.text(0.5, 0.5, "no held-out evaluation logged\n(eval_every_save: true logs one per checkpoint)",
                 ha="center", va="center", fontsize=9, transform=ax2.transAxes, color="0.4")
    return _save(fig, out)


def plot_panels(runs: Sequence[Run], out: Path, panels: Sequence[tuple[str, str]]) -> Path | None:
    """One panel per (metric key, title) that some run logged, runs overlaid; None if none did."""
    present = [(key, title) for key, title in panels if any(run.has(key) for run in runs)]
    if not present:
        return None
    plt = _pyplot()
    fig, axes = _grid(plt, len(present))
    for ax, (key, title) in zip(axes, present, strict=True):
        for i, run in enumerate(runs):
            points = run.series(key)
            if points:
                _draw_curve(ax, points, f"C{i}", run.label, smooth=not key.startswith("eval_"))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return _save(fig, out)


def step_phases(run: Run) -> dict[str, float]:
    """Mean seconds per step of each logged phase (``time/*``), the first step left out when
    there are others (it carries the warm-up); falls back to ``step_seconds``."""
    keys = {k[5:] for row in run.rows for k in row if k.startswith("time/")}
    source = {k: run.series("time/" + k) for k in keys}
    if not source:
        steps = run.series("step_seconds")
        source = {"step": steps} if steps else {}
    means = {}
    for phase, points in source.items():
        values = [v for _, v in points[1:]] if len(points) > 1 else [v for _, v in points]
        if values:
            means[phase] = sum(values) / len(values)
    return means


def plot_step_time(runs: Sequence[Run], out: Path) -> Path | None:
    """step_time.png: stacked mean seconds per phase for each run, and step time over the run."""
    phases = {run.label: step_phases(run) for run in runs}
    if not any(phases.values()):
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3.6, 1.6 + 0.6 * len(runs))),
                                   gridspec_kw={"width_ratios": [1.2, 1]})
    labels = [run.label for run in runs]
    for j, phase in enumerate(PHASES):
        widths = [_phase_share(phases[label], phase) for label in labels]
        if not any(widths):
            continue
        lefts = [sum(_phase_share(phases[label], p) for p in PHASES[:j]) for label in labels]
        bars = ax1.barh(labels, widths, left=lefts, color=f"C{j}", label=PHASE_LABELS.get(phase, phase))
        ax1.bar_label(bars, labels=[f"{w:.2g}" if w >= 0.08 * max(phases[lb].get("step", w), 1e-9) else ""
                                    for w, lb in zip(widths, labels, strict=True)],
                      label_type="center", fontsize=7, color="white")
    ax1.set_xlabel("seconds per step (mean; the first step left out)")
    ax1.set_title("where a step's time goes")
    ax1.invert_yaxis()
    if ax1.patches:
        ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
    for i, run in enumerate(runs):
        points = run.series("time/step") or run.series("step_seconds")
        if points:
            _draw_curve(ax2, points, f"C{i}", run.label, smooth=False)
    ax2.set_xlabel("step")
    ax2.set_ylabel("seconds")
    ax2.set_title("step time")
    if ax2.lines:
        ax2.legend(fontsize=7)
    return _save(fig, out)


def _phase_share(means: dict[str, float], phase: str) -> float:
    """Seconds of ``phase`` as drawn: PPO's rollout/update bars show what their parts leave over."""
    value = means.get(phase, 0.0)
    if phase == "rollout":
        return max(0.0, value - means.get("generation", 0.0) - means.get("reward", 0.0))
    if phase == "update":
        return max(0.0, value - means.get("optimizer", 0.0))
    return value


# --------------------------------------------------------------------------------------- summary
def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"


def summary_cell(points: list[tuple[int, float]], better: bool | None) -> str:
    """'final 0.580, best 0.620 (step 45)' (best only where higher or lower is better)."""
    if not points:
        return "-"
    final = f"final {_fmt(points[-1][1])}"
    if better is None:
        low, high = min(v for _, v in points), max(v for _, v in points)
        return f"{final} (range {_fmt(low)} to {_fmt(high)})"
    step, value = (max if better else min)(points, key=lambda p: p[1])
    return f"{final}, best {_fmt(value)} (step {step})"


def summary_metrics(runs: Sequence[Run]) -> list[tuple[str, bool | None]]:
    """The summary's metrics that some run logged, in a fixed order."""
    keys: list[tuple[str, bool | None]] = [("reward", True)]
    keys += [(f"rewards/{name}/mean", True) for name in reward_functions(runs)]
    keys += [(HELD_OUT, True), ("eval_accuracy_strict", True), ("eval_format_rate", True)]
    keys += [(key, better) for key, _, better in TRAINING_PANELS]
    return [(key, better) for key, better in keys if any(run.has(key) for run in runs)]


def summary_markdown(runs: Sequence[Run], pictures: Sequence[Path]) -> str:
    """summary.md: status, final/best values, step-time breakdown, pictures."""
    lines = [f"# Runs: {', '.join(run.label for run in runs)}", "",
             f"Plotted {time.strftime('%Y-%m-%d %H:%M:%S')} by `make plot`; a run still in progress shows its "
             "latest logged step.", "",
             "| run | status | steps logged | wall time | directory |", "|---|---|---|---|---|"]
    for run in runs:
        status = "finished" if run.finished else "in progress (or stopped)"
        lines.append(f"| {run.label} | {status} | {run.last_step} | {fmt_duration(run.wall_seconds)} | `{run.path}` |")
    lines += ["", "Wall time: from the run's start record (`run_info.json`, written once the model is loaded) to "
              "its last log line, held-out evaluations included.", ""]
    metrics = summary_metrics(runs)
    if metrics:
        lines += ["## Final and best values", "",
                  "| metric | " + " | ".join(run.label for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for key, better in metrics:
            arrow = {True: " (higher is better)", False: " (lower is better)", None: ""}[better]
            lines.append(f"| `{key}`{arrow} | " + " | ".join(summary_cell(run.series(key), better) for run in runs)
                         + " |")
        lines.append("")
    phases = {run.label: step_phases(run) for run in runs}
    if any(phases.values()):
        lines += ["## Where a step's time goes", "",
                  "Mean seconds per optimizer step (PPO: per update), the first step left out (warm-up); the "
                  "share of the step in brackets (`core/timing.py` defines each phase; PPO's rollout includes "
                  "its generation and reward, its update the optimizer).", "",
                  "| phase | " + " | ".join(run.label for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for phase in TABLE_ORDER:
            if not any(phase in p for p in phases.values()):
                continue
            cells = []
            for run in runs:
                means = phases[run.label]
                if phase not in means:
                    cells.append("-")
                    continue
                total = means.get("step")
                share = f" ({100 * means[phase] / total:.0f} %)" if total and phase != "step" else ""
                seconds = means[phase]
                cells.append(f"{seconds:.2f} s{share}" if seconds >= 0.1 or seconds == 0 else f"{seconds:.3f} s{share}")
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = [note for run in runs for note in run.notes]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    return "\n".join(lines) + "\n"


def default_out_dir(runs: Sequence[Run]) -> Path:
    """One run: ``<run>/plots``; several: ``runs/plots/<a>-vs-<b>`` (under the runs' common parent
    when they share one)."""
    if len(runs) == 1:
        return runs[0].path / "plots"
    parents = {run.path.resolve().parent for run in runs}
    base = runs[0].path.parent / "plots" if len(parents) == 1 else Path("runs") / "plots"
    return base / "-vs-".join(run.path.name for run in runs)


def plot_runs(paths: Sequence[str | Path], out_dir: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Write the pictures and summary.md for ``paths`` into ``out_dir``; returns (folder, files)."""
    runs = load_runs(paths)
    out = Path(out_dir) if out_dir else default_out_dir(runs)
    out.mkdir(parents=True, exist_ok=True)
    pictures = [plot_overview(runs, out / "overview.png")]
    names = reward_functions(runs)
    for picture in (
        plot_panels(runs, out / "rewards.png", [(f"rewards/{n}/mean", f"reward: {n} (mean)") for n in names]),
        plot_panels(runs, out / "training.png", [(key, title) for key, title, _ in TRAINING_PANELS]),
        plot_step_time(runs, out / "step_time.png"),
    ):
        if picture is not None:
            pictures.append(picture)
    summary = out / "summary.md"
    write_text_atomic(summary, summary_markdown(runs, pictures))
    return out, pictures + [summary]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m evaluate.plots",
                                     description="Plot and compare training runs from their metrics.jsonl.")
    parser.add_argument("runs", nargs="+", help="run directories (a recipe's output_dir)")
    parser.add_argument("--out", default=None,
                        help="folder for the pictures and summary.md (default: RUN/plots for one run, "
                             "runs/plots/A-vs-B for several)")
    args = parser.parse_args(argv)
    try:
        out, files = plot_runs(args.runs, args.out)
    except PlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = out / "summary.md"
    print(summary.read_text(encoding="utf-8").split("\n![")[0].rstrip())
    print(f"\n[plot] wrote {', '.join(f.name for f in files)} to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
