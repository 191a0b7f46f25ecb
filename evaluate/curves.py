"""Training curves of a run: the logged metrics worth watching, against the step, as one PNG.

Every recipe logs its trainer's metrics to `<output_dir>/metrics.jsonl` (one row per logging step,
held-out evaluations in their own rows). This draws one panel per metric, with a running mean
where there are many points, and writes `<output_dir>/curves.png`:

    make curves RUN=runs/grpo-qwen2.5-3b-t4
    python -m evaluate.curves runs/dpo-qwen2.5-3b-t4 --keys loss rewards/margins

Without `--keys` it picks, from what the run logged, the metrics each method is read by: GRPO's
reward, its parts and the held-out accuracy; DPO's preference accuracy and margin; PPO's score and
KL; the loss otherwise. No torch import: matplotlib and the JSON Lines file only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
OUT = "curves.png"
# In this order, the metrics drawn when present (a "*" matches one path segment, e.g. every
# reward function's mean). The first MAX_PANELS that a run logged are drawn.
PREFERRED = [
    # GRPO
    "reward", "rewards/*/mean", "eval_accuracy", "eval_format_rate", "completions/mean_length",
    "completions/clipped_ratio", "frac_reward_zero_std", "kl",
    # DPO (and its SFT pass)
    "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
    # PPO
    "objective/scores", "objective/rlhf_reward", "objective/kl", "objective/entropy", "val/ratio",
    # every trainer
    "loss", "eval_loss", "eval_f1_weighted", "eval_accuracy_score", "grad_norm",
]
MAX_PANELS = 9


class CurvesError(Exception):
    """Nothing to draw: no metrics file, or none of the asked metrics in it."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `<run_dir>/metrics.jsonl` (a torn last line, from a run still writing, is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise CurvesError(f"{path} not found: give the output_dir of a training run")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _is_value(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of `key`, the last value per step (a resumed run logs some steps twice)."""
    points: dict[int, float] = {}
    for row in rows:
        if _is_value(row.get(key)) and _is_value(row.get("step")):
            points[int(row["step"])] = float(row[key])
    return sorted(points.items())


def _matches(pattern: str, key: str) -> bool:
    parts, want = key.split("/"), pattern.split("/")
    return len(parts) == len(want) and all(w in ("*", p) for w, p in zip(want, parts, strict=True))


def pick_keys(rows: list[dict[str, Any]], limit: int = MAX_PANELS) -> list[str]:
    """The metrics worth a panel, in PREFERRED order, among those logged at two steps or more."""
    logged = sorted({k for row in rows for k in row if _is_value(row[k])})
    chosen: list[str] = []
    for pattern in PREFERRED:
        for key in logged:
            if _matches(pattern, key) and key not in chosen and len(series(rows, key)) >= 2:
                chosen.append(key)
    return chosen[:limit]


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at every position (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path, keys: list[str] | None = None, out: str | Path | None = None) -> Path:
    """Draw `keys` (default: `pick_keys`) of a run's metrics.jsonl; returns the PNG written."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    keys = keys or pick_keys(rows)
    drawn = [(k, series(rows, k)) for k in keys]
    missing = [k for k, points in drawn if not points]
    drawn = [(k, points) for k, points in drawn if points]
    if not drawn:
        logged = sorted({k for row in rows for k in row if _is_value(row[k])})
        raise CurvesError(f"none of {keys or 'the usual metrics'} logged in {run_dir / METRICS} "
                          f"({len(rows)} rows; logged: {', '.join(logged) or 'nothing'})")
    if missing:
        print(f"[curves] not logged, skipped: {', '.join(missing)}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(drawn))
    rows_n = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, (key, points) in zip(axes.flat, drawn, strict=False):
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        if len(values) >= 16:  # noisy per-step values: the trend is the running mean
            ax.plot(steps, values, color="0.75", lw=1)
            window = max(2, len(values) // 10)
            ax.plot(steps, running_mean(values, window), color="C0", lw=2, label=f"running mean of {window}")
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, values, color="C0", marker="o", ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.suptitle(run_dir.name, fontsize=10)
    fig.tight_layout()
    path = Path(out) if out else run_dir / OUT
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    print(f"[curves] {', '.join(k for k, _ in drawn)} -> {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a training run's metrics.jsonl as <run>/curves.png",
                                     allow_abbrev=False)
    parser.add_argument("run_dir", help="the output_dir of a training run (holds metrics.jsonl)")
    parser.add_argument("--keys", nargs="+", default=None, help="metrics to draw (default: chosen per method)")
    parser.add_argument("--out", default=None, help=f"PNG to write (default: RUN_DIR/{OUT})")
    args = parser.parse_args(argv)
    try:
        plot_run(args.run_dir, args.keys, args.out)
    except CurvesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
