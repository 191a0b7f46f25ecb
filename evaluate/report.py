"""The comparison every evaluation feeds: one Markdown table and one PNG per results directory.

Each evaluation (math, preference, sentiment) records its metrics under a task name and a run
name in `results.json`; `write_comparison` renders every task as a table with one row per run
(base, SFT, GRPO, ...) and one column per metric - the layout of the published work's Table I -
plus a grouped bar chart of the headline metrics.

When runs of a task carry a ``predictions`` file (a path relative to the results directory, each
line with a 0/1 ``correct``), the table is followed by paired bootstrap intervals of every run's
accuracy minus the baseline's (the first run recorded, or ``--baseline``) on the problems both
answered: the honest way to read a 5-point gain on 100 problems.

    python -m evaluate.report runs/eval                  # re-render comparison.md / comparison.png
    python -m evaluate.report runs/eval --baseline sft   # intervals against the "sft" row
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
from pathlib import Path
from typing import Any

from data.files import write_json_atomic, write_text_atomic

RESULTS = "results.json"
# Per task, the metrics worth a bar in the chart (all numeric metrics go in the table).
HEADLINE = {
    "gsm8k": ["accuracy", "accuracy_strict", "format_rate", "rouge1", "rougeL", "sacrebleu"],
    "preference": ["preference_accuracy", "mean_margin"],
    "sentiment": ["negative_share", "mean_reward", "distinct_2"],
}
# Per task, the column order of the table (glob patterns; unlisted metrics follow in first-seen order).
COLUMNS = {
    "gsm8k": ["n", "accuracy", "accuracy_strict", "pass@*", "maj@*", "format_rate", "rouge1", "rouge2", "rougeL",
              "sacrebleu", "mean_completion_tokens", "problems_per_s", "decoding"],
}
# Text-valued entries shown as columns (other strings, such as file paths, stay out of the table).
TEXT_COLUMNS = {"decoding"}
# Metrics on a 0-100 scale: divided by this in the chart so they share the 0-1 axis.
CHART_SCALE = {"sacrebleu": 100.0}


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
    write_json_atomic(results_dir / RESULTS, results)
    return write_comparison(results_dir)[0]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value).replace("|", "\\|")


def table_columns(runs: dict[str, dict[str, Any]], task: str | None = None) -> list[str]:
    """Columns of a task's table: the task's preferred order first, then the rest as first seen."""
    seen: list[str] = []
    for metrics in runs.values():
        for key, value in metrics.items():
            if (_is_number(value) or (key in TEXT_COLUMNS and isinstance(value, str))) and key not in seen:
                seen.append(key)
    ordered: list[str] = []
    for pattern in COLUMNS.get(task or "", []):
        ordered += [k for k in seen if fnmatch.fnmatchcase(k, pattern) and k not in ordered]
    return ordered + [k for k in seen if k not in ordered]


def markdown_table(runs: dict[str, dict[str, Any]], task: str | None = None) -> str:
    """One row per run, one column per metric (the task's order, then first-seen order)."""
    columns = table_columns(runs, task)
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for run, metrics in runs.items():
        lines.append(f"| {run} | " + " | ".join(_fmt(metrics.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def paired_section(results_dir: Path, runs: dict[str, dict[str, Any]], baseline: str | None = None,
                   field: str = "correct") -> str:
    """Markdown lines: each run's accuracy minus the baseline's, paired bootstrap 95% CI.

    Empty when fewer than two runs have a readable predictions file.
    """
    from evaluate.stats import compare_runs

    with_preds = {run: results_dir / m["predictions"] for run, m in runs.items()
                  if isinstance(m.get("predictions"), str) and (results_dir / m["predictions"]).is_file()}
    if len(with_preds) < 2:
        return ""
    base = baseline if baseline in with_preds else next(iter(with_preds))
    lines = [f"Paired difference in `{field}` vs **{base}** (bootstrap 95% CI over the problems both runs answered):",
             "", "| run | n shared | diff | 95% CI | p |", "|---|---|---|---|---|"]
    for run, path in with_preds.items():
        if run == base:
            continue
        try:
            d = compare_runs(with_preds[base], path, field)
        except ValueError as err:
            lines.append(f"| {run} | - | - | {str(err).replace('|', '/')} | - |")
            continue
        lines.append(f"| {run} | {d.n} | {d.diff:+.3f} | [{d.low:+.3f}, {d.high:+.3f}] | {d.p_text().removeprefix('p = ')} |")
    return "\n".join(lines)


def write_comparison(results_dir: str | Path, baseline: str | None = None) -> tuple[Path, Path | None]:
    """Render `comparison.md` (all tasks) and `comparison.png` (headline metrics) from results.json."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    parts = ["# Comparison", ""]
    for task, runs in results.items():
        parts += [f"## {task}", "", markdown_table(runs, task), ""]
        paired = paired_section(results_dir, runs, baseline)
        if paired:
            parts += [paired, ""]
    md_path = results_dir / "comparison.md"
    write_text_atomic(md_path, "\n".join(parts))
    png_path = plot_comparison(results, results_dir / "comparison.png")
    return md_path, png_path


def plot_comparison(results: dict[str, dict[str, dict[str, Any]]], out: Path) -> Path | None:
    """Grouped bars: for each task, its headline metrics, one bar per run."""
    panels = []
    for task, runs in results.items():
        wanted = HEADLINE.get(task) or []
        keys = [k for k in wanted if any(_is_number(m.get(k)) for m in runs.values())]
        if not keys:
            keys = [k for k, v in next(iter(runs.values())).items() if _is_number(v)][:4]
        if keys:
            panels.append((task, runs, keys))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # wide enough that each bar's value label stays readable with many runs and metrics
    widths = [max(5.5, 0.42 * len(keys) * len(runs) + 1.5) for _, runs, keys in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (task, runs, keys) in zip(axes[0], panels, strict=True):
        width = 0.8 / max(1, len(runs))
        for i, (run, metrics) in enumerate(runs.items()):
            values = [float(metrics.get(k) or 0.0) / CHART_SCALE.get(k, 1.0) for k in keys]
            xs = [j + i * width for j in range(len(keys))]
            bars = ax.bar(xs, values, width=width, label=run)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        labels = [f"{k}/{CHART_SCALE[k]:g}" if k in CHART_SCALE else k for k in keys]
        ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(keys))], labels, rotation=20, fontsize=8)
        sizes = {m.get("n") for m in runs.values()}
        ax.set_title(f"{task} (n = {sizes.pop()})" if len(sizes) == 1 and None not in sizes else task)
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]) * 1.08)
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
    parser.add_argument("--baseline", default=None, help="run the paired intervals compare against (default: first)")
    args = parser.parse_args(argv)
    md, png = write_comparison(args.results_dir, args.baseline)
    print(md.read_text(encoding="utf-8"))
    if png:
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
