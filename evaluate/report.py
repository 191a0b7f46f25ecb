"""The comparison every evaluation feeds: one Markdown table and one PNG per results directory.

Each evaluation (math, preference, sentiment) records its metrics under a task name and a run
name in `results.json`; `write_comparison` renders every task as a table with one row per run
(base, SFT, GRPO, ...) and one column per metric - the layout of the published work's Table I -
plus a grouped bar chart of the headline metrics.

When runs of a task carry a ``predictions`` file (a path relative to the results directory, each
line with a 0/1 ``correct``), the table is followed by paired bootstrap intervals of every run's
accuracy minus the baseline's on the problems both answered: the honest way to read a 5-point gain
on 100 problems. The baseline is the run the user named (``--baseline``, remembered per task in
``baselines.json``), else the first run recorded - and the heading says which.

Rows are keyed by run name and never silently dropped: recording a run name again replaces its
row only when it is the same evaluation (same dataset, size and decoding) or when the old row's
predictions file is gone, and says so; a different evaluation under a name already taken (a
preference evaluation of a model the DPO recipe already scored on other pairs, say) is kept as a
new row, ``name (2)``. Tables and charts name the dataset each task was scored on.

    python -m evaluate.report runs/eval                  # re-render comparison.md / comparison.png
    python -m evaluate.report runs/eval --baseline sft   # intervals against the "sft" row, from now on
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from core.cli import ArgumentParser
from core.files import write_json_atomic, write_text_atomic

RESULTS = "results.json"
BASELINES = "baselines.json"  # {task: run} the user named with --baseline
# Row fields that say what was evaluated: two rows of one run name that differ in one of these are
# two evaluations, and both are kept.
IDENTITY = ("dataset", "split", "n", "pairs", "n_samples", "decoding", "limit", "seed")
# Per task, the metrics worth a bar in the chart (all numeric metrics go in the table).
HEADLINE = {
    "gsm8k": ["accuracy", "accuracy_strict", "format_rate", "rouge1", "rougeL", "sacrebleu"],
    "preference": ["preference_accuracy", "mean_margin"],
    "sentiment": ["negative_share", "mean_reward", "distinct_2"],
}
# Per task, the column order of the table (glob patterns; unlisted metrics follow in first-seen order).
COLUMNS = {
    "gsm8k": ["n", "greedy_accuracy", "accuracy", "accuracy_strict", "pass@*", "maj@*", "format_rate", "rouge1",
              "rouge2", "rougeL", "sacrebleu", "vi_word_share", "drift_rate", "mean_completion_tokens", "problems_per_s",
              "decoding"],
}
# Text-valued entries shown as columns (other strings, such as file paths, stay out of the table).
TEXT_COLUMNS = {"decoding", "dataset"}
# Metrics on a 0-100 scale: divided by this in the chart so they share the 0-1 axis.
CHART_SCALE = {"sacrebleu": 100.0}


def load_results(results_dir: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """`{task: {run: metrics}}` from `results_dir/results.json` (empty when absent)."""
    path = Path(results_dir) / RESULTS
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def load_baselines(results_dir: str | Path) -> dict[str, str]:
    """`{task: run}` the user named as baselines (empty when none)."""
    path = Path(results_dir) / BASELINES
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def set_baseline(results_dir: str | Path, task: str, run: str) -> None:
    """Remember ``run`` as ``task``'s baseline for every later rendering."""
    baselines = load_baselines(results_dir)
    baselines[task] = run
    write_json_atomic(Path(results_dir) / BASELINES, baselines)


def same_evaluation(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when two rows evaluated the same thing (every `IDENTITY` field both have agrees)."""
    return all(old[k] == new[k] for k in IDENTITY if k in old and k in new)


def _stale(results_dir: Path, row: dict[str, Any]) -> bool:
    """A row whose predictions file was deleted (the user removed that evaluation's directory)."""
    return isinstance(row.get("predictions"), str) and not (results_dir / row["predictions"]).is_file()


def record_result(results_dir: str | Path, task: str, run: str, metrics: dict[str, Any],
                  baseline: str | None = None) -> Path:
    """Add `run`'s metrics for `task` (see the module docstring for a name already taken), name the
    baseline when given, then re-render the comparison. Returns the table path."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    results = load_results(results_dir)
    runs = results.setdefault(task, {})
    key = run
    if run in runs:
        old = runs[run]
        if same_evaluation(old, metrics) or _stale(results_dir, old):
            print(f"[report] {task}: replaced the earlier row of {run!r} (the same evaluation, run again)")
        else:
            n = 2
            while f"{run} ({n})" in runs:
                n += 1
            key = f"{run} ({n})"
            changed = ", ".join(f"{k} {old[k]!r} -> {metrics[k]!r}" for k in IDENTITY
                                if k in old and k in metrics and old[k] != metrics[k])
            print(f"[report] {task}: {run!r} already has a row from another evaluation ({changed}); "
                  f"both are kept, this one as {key!r}")
    runs[key] = metrics
    write_json_atomic(results_dir / RESULTS, results)
    if baseline is not None:
        set_baseline(results_dir, task, baseline)
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
    """Columns of a task's table: the task's preferred order first, then the rest as first seen
    (text columns such as the dataset last)."""
    seen: list[str] = []
    for metrics in runs.values():
        for key, value in metrics.items():
            if (_is_number(value) or (key in TEXT_COLUMNS and isinstance(value, str))) and key not in seen:
                seen.append(key)
    ordered: list[str] = []
    for pattern in COLUMNS.get(task or "", []):
        ordered += [k for k in seen if fnmatch.fnmatchcase(k, pattern) and k not in ordered]
    rest = [k for k in seen if k not in ordered]
    return ordered + [k for k in rest if k not in TEXT_COLUMNS] + [k for k in rest if k in TEXT_COLUMNS]


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

    The baseline is ``baseline`` when given, else the first run recorded. Empty when fewer than
    two runs have a readable predictions file.
    """
    from evaluate.stats import compare_runs

    with_preds = {run: results_dir / m["predictions"] for run, m in runs.items()
                  if isinstance(m.get("predictions"), str) and (results_dir / m["predictions"]).is_file()}
    if len(with_preds) < 2:
        return ""
    if baseline is not None and baseline not in with_preds:
        return (f"No paired differences: the baseline **{baseline}** has no predictions file here "
                f"(runs with one: {', '.join(with_preds)}); name another with `--baseline`.")
    base = baseline or next(iter(with_preds))
    chosen = "the baseline named with --baseline" if baseline else "the first run recorded; name another with --baseline"
    lines = [f"Paired difference in `{field}` vs **{base}** ({chosen}), bootstrap 95% CI over the problems "
             "both runs answered:",
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


def datasets_of(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The datasets a task's runs were scored on, first seen first (rows that name one)."""
    seen: list[str] = []
    for metrics in runs.values():
        name = metrics.get("dataset")
        if isinstance(name, str) and name not in seen:
            seen.append(name)
    return seen


def task_title(task: str, runs: dict[str, dict[str, Any]]) -> str:
    """'gsm8k on runs/demo/data/test.jsonl': the task and the data actually scored."""
    names = datasets_of(runs)
    if len(names) == 1:
        return f"{task} on {names[0]}"
    return f"{task} on {len(names)} datasets (see the table)" if names else task


def write_comparison(results_dir: str | Path, baseline: str | None = None) -> tuple[Path, Path | None]:
    """Render `comparison.md` (all tasks) and `comparison.png` (headline metrics) from results.json.

    ``baseline`` overrides, for the tasks that have such a run, the baselines remembered in
    baselines.json."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    baselines = load_baselines(results_dir)
    parts = ["# Comparison", ""]
    for task, runs in results.items():
        parts += [f"## {task_title(task, runs)}", "", markdown_table(runs, task), ""]
        paired = paired_section(results_dir, runs, baseline if baseline in runs else baselines.get(task))
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
        title = task_title(task, runs) + (f" (n = {sizes.pop()})" if len(sizes) == 1 and None not in sizes else "")
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]) * 1.08)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Re-render comparison.md and comparison.png from results.json")
    parser.add_argument("results_dir")
    parser.add_argument("--baseline", default=None,
                        help="run the paired intervals compare against, remembered for later renderings "
                             "(default: the one named before, else the first run recorded)")
    args = parser.parse_args(argv)
    if args.baseline is not None:
        tasks = [task for task, runs in load_results(args.results_dir).items() if args.baseline in runs]
        if not tasks:
            known = sorted({run for runs in load_results(args.results_dir).values() for run in runs})
            print(f"error: no run named {args.baseline!r} in {args.results_dir}; recorded runs: {known}", file=sys.stderr)
            sys.exit(2)
        for task in tasks:
            set_baseline(args.results_dir, task, args.baseline)
    md, png = write_comparison(args.results_dir)
    print(md.read_text(encoding="utf-8"))
    if png:
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
