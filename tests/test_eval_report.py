"""The comparison table and chart every evaluation feeds (evaluate/report.py)."""

import json

from conftest import run_entry

from evaluate.report import load_results, markdown_table, record_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _predictions(path, correct):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": "1", "correct": c}, ensure_ascii=False) + "\n"
                            for i, c in enumerate(correct)), encoding="utf-8")


def _table_rows(md):
    return [line for line in md.splitlines() if line.startswith("| ")]


def test_two_runs_make_two_rows_a_chart_and_a_paired_interval(tmp_path):
    res = tmp_path / "eval"
    _predictions(res / "sft" / "predictions.jsonl", [1] * 20 + [0] * 80)
    _predictions(res / "grpo" / "predictions.jsonl", [1] * 55 + [0] * 45)
    record_result(res, "gsm8k", "sft", {"n": 100, "accuracy": 0.2, "rouge1": 0.41, "sacrebleu": 12.5,
                                        "decoding": "greedy", "predictions": "sft/predictions.jsonl"})
    md_path = record_result(res, "gsm8k", "grpo", {"n": 100, "rouge1": 0.44, "accuracy": 0.55, "sacrebleu": 14.0,
                                                   "decoding": "greedy", "predictions": "grpo/predictions.jsonl"})
    md = md_path.read_text(encoding="utf-8")
    header, sft, grpo = _table_rows(md)[:3]
    # Table I layout: rows = runs, columns = metrics in the task's order (accuracy before ROUGE),
    # the decoding shown, the predictions path not.
    assert header == "| run | n | accuracy | rouge1 | sacrebleu | decoding |"
    assert sft == "| sft | 100 | 0.200 | 0.410 | 12.500 | greedy |"
    assert grpo.startswith("| grpo | 100 | 0.550 |")
    assert "predictions.jsonl" not in header
    # Paired interval against the first run: +0.35, well above 0.
    paired = next(line for line in md.splitlines() if line.startswith("| grpo | 100 | +0.350"))
    low = float(paired.split("[")[1].split(",")[0])
    assert low > 0.2
    png = (res / "comparison.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert set(load_results(res)["gsm8k"]) == {"sft", "grpo"}


def test_rerecording_a_run_replaces_its_row_and_other_tasks_survive(tmp_path):
    record_result(tmp_path, "gsm8k", "base", {"accuracy": 0.1})
    record_result(tmp_path, "preference", "dpo", {"preference_accuracy": 0.8, "mean_margin": 1.5})
    md = record_result(tmp_path, "gsm8k", "base", {"accuracy": 0.3}).read_text(encoding="utf-8")
    assert "| base | 0.300 |" in md and "0.100" not in md
    assert "## preference" in md and "| dpo | 0.800 | 1.500 |" in md
    assert "Paired difference" not in md  # no predictions files recorded


def test_column_order_puts_pass_and_maj_after_the_accuracies():
    runs = {"a": {"format_rate": 1.0, "maj@4": 0.5, "accuracy": 0.4, "pass@4": 0.7, "accuracy_strict": 0.3,
                  "custom": 2, "note": "ignored text"}}
    header = markdown_table(runs, "gsm8k").splitlines()[0]
    assert header == "| run | accuracy | accuracy_strict | pass@4 | maj@4 | format_rate | custom |"
    # Unknown task: first-seen order.
    assert markdown_table(runs).splitlines()[0].startswith("| run | format_rate | maj@4 | accuracy |")


def test_report_cli_rerenders_with_another_baseline(tmp_path):
    for name, correct in (("base", [0] * 10), ("sft", [1] * 5 + [0] * 5), ("grpo", [1] * 8 + [0] * 2)):
        _predictions(tmp_path / name / "predictions.jsonl", correct)
        record_result(tmp_path, "gsm8k", name, {"accuracy": sum(correct) / 10, "predictions": f"{name}/predictions.jsonl"})
    (tmp_path / "comparison.md").unlink()
    proc = run_entry(["python", "-m", "evaluate.report", str(tmp_path), "--baseline", "sft"])
    md = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert "vs **sft**" in md and "vs **sft**" in proc.stdout
    assert "| base | 10 | -0.500 |" in md and "| grpo | 10 | +0.300 |" in md
