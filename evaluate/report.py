"""The comparison every evaluation feeds: one Markdown table and one PNG per results directory.

Each evaluation (math, preference, sentiment) records its metrics under a task name and a run
name in `results.json`; `write_comparison` renders every task as a table with one row per run
(base, SFT, GRPO, ...) and one column per metric - the layout of the published work's Table I -
plus a grouped bar chart of the headline metrics.

    python -m evaluate.report runs/eval      # re-render comparison.md / comparison.png
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

RESULTS = "results.json"
# Per task, the metrics worth a bar in the chart (all numeric metrics go in the table).
HEADLINE = {
    "gsm8k": ["accuracy", "accuracy_strict", "format_rate", "rouge1", "rougeL", "sacrebleu"],
    "preference": ["preference_accuracy", "mean_margin"],
    "sentiment": ["negative_share", "mean_reward", "distinct_2"],
}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_results(results_dir: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """`{task: {run: metrics}}` from `results_dir/results.json` (empty when absent)."""
    path = Path(results_dir) / RESULTS
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def record_result(results_dir: str | Path, task: str, run: str, metrics: dict[str, Any]) -> Path:
    """Add or replace `run`'s metrics for `task`, then re-render the comparison. Returns the table path."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    results = load_results(results_dir)
    results.setdefault(task, {})[run] = metrics
    _write_atomic(results_dir / RESULTS, json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    return write_comparison(results_dir)[0]


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def markdown_table(runs: dict[str, dict[str, Any]]) -> str:
    """One row per run, one column per numeric metric (in first-seen order)."""
    columns: list[str] = []
    for metrics in runs.values():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in columns:
                columns.append(key)
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for run, metrics in runs.items():
        lines.append(f"| {run} | " + " | ".join(_fmt(metrics.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_comparison(results_dir: str | Path) -> tuple[Path, Path | None]:
    """Render `comparison.md` (all tasks) and `comparison.png` (headline metrics) from results.json."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    parts = ["# Comparison", ""]
    for task, runs in results.items():
        parts += [f"## {task}", "", markdown_table(runs), ""]
    md_path = results_dir / "comparison.md"
    _write_atomic(md_path, "\n".join(parts))
    png_path = plot_comparison(results, results_dir / "comparison.png")
    return md_path, png_path


def plot_comparison(results: dict[str, dict[str, dict[str, Any]]], out: Path) -> Path | None:
    """Grouped bars: for each task, its headline metrics, one bar per run."""
    panels = []
    for task, runs in results.items():
        wanted = HEADLINE.get(task) or []
        keys = [k for k in wanted if any(isinstance(m.get(k), (int, float)) for m in runs.values())]
        if not keys:
            keys = [k for k, v in next(iter(runs.values())).items() if isinstance(v, (int, float))][:4]
        if keys:
            panels.append((task, runs, keys))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (task, runs, keys) in zip(axes[0], panels):
        width = 0.8 / max(1, len(runs))
        for i, (run, metrics) in enumerate(runs.items()):
            values = [float(metrics.get(k) or 0.0) for k in keys]
            xs = [j + i * width for j in range(len(keys))]
            bars = ax.bar(xs, values, width=width, label=run)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(keys))], keys, rotation=20, fontsize=8)
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Re-render comparison.md and comparison.png from results.json")
    parser.add_argument("results_dir")
    args = parser.parse_args(argv)
    md, png = write_comparison(args.results_dir)
    print(md.read_text(encoding="utf-8"))
    if png:
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
