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


def test_a_named_baseline_is_used_and_remembered(tmp_path, capsys):
    for name, correct in (("sft", [1] * 5 + [0] * 5), ("my-grpo", [1] * 8 + [0] * 2)):
        _predictions(tmp_path / name / "predictions.jsonl", correct)
    record_result(tmp_path, "gsm8k", "my-grpo", {"accuracy": 0.8, "predictions": "my-grpo/predictions.jsonl"})
    # sft evaluated second, but named as the baseline: "my-grpo vs sft", not the other way round.
    md = record_result(tmp_path, "gsm8k", "sft", {"accuracy": 0.5, "predictions": "sft/predictions.jsonl"},
                       baseline="sft").read_text(encoding="utf-8")
    assert "vs **sft** (the baseline named with --baseline)" in md and "| my-grpo | 10 | +0.300 |" in md
    # A later run recorded without --baseline keeps it.
    _predictions(tmp_path / "base" / "predictions.jsonl", [0] * 10)
    md = record_result(tmp_path, "gsm8k", "base", {"accuracy": 0.0, "predictions": "base/predictions.jsonl"})
    assert "vs **sft**" in md.read_text(encoding="utf-8")
    # Without any named baseline the heading says it is the first run recorded.
    other = tmp_path / "other"
    for name in ("a", "b"):
        _predictions(other / name / "predictions.jsonl", [1, 0, 1, 0])
        record_result(other, "gsm8k", name, {"accuracy": 0.5, "predictions": f"{name}/predictions.jsonl"})
    assert "vs **a** (the first run recorded; name another with --baseline)" in (other / "comparison.md").read_text()
    # The command line: an unknown baseline is one clear line, not a silent fallback.
    proc = run_entry(["python", "-m", "evaluate.report", str(tmp_path), "--baseline", "grpo"], check=False)
    assert proc.returncode == 2 and "no run named 'grpo'" in proc.stderr and "my-grpo" in proc.stderr


def test_rows_are_never_silently_dropped(tmp_path, capsys):
    # The DPO recipe scored its held-out pairs; a later preference evaluation of the same model on
    # other pairs must not replace those rows.
    training = {"dataset": "pairs.jsonl held-out (test_size 0.25, seed 0)", "pairs": 6, "preference_accuracy": 0.5}
    later = {"dataset": "pairs.jsonl held-out (test_size 0.1, seed 0)", "pairs": 3, "preference_accuracy": 1.0}
    for row in (training, later):
        record_result(tmp_path, "preference", "Qwen2.5-3B", row)
        record_result(tmp_path, "preference", "dpo", row)
    runs = load_results(tmp_path)["preference"]
    assert list(runs) == ["Qwen2.5-3B", "dpo", "Qwen2.5-3B (2)", "dpo (2)"]
    assert runs["dpo"] == training and runs["dpo (2)"] == later
    out = capsys.readouterr().out
    assert "'dpo' already has a row from another evaluation (dataset" in out and "as 'dpo (2)'" in out
    md = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert "## preference on 2 datasets (see the table)" in md and "| dpo (2) | 3 | 1.000 | pairs.jsonl held-out (test_size 0.1, seed 0) |" in md
    # The same evaluation run again replaces its own row, and says so.
    record_result(tmp_path, "preference", "dpo", {**training, "preference_accuracy": 0.75})
    assert load_results(tmp_path)["preference"]["dpo"]["preference_accuracy"] == 0.75
    assert "replaced the earlier row of 'dpo'" in capsys.readouterr().out
    # A row whose predictions were deleted (the user removed that evaluation to redo it) is replaced.
    _predictions(tmp_path / "sft" / "predictions.jsonl", [1, 0])
    record_result(tmp_path, "gsm8k", "sft", {"n": 2, "dataset": "a.jsonl", "predictions": "sft/predictions.jsonl"})
    (tmp_path / "sft" / "predictions.jsonl").unlink()
    _predictions(tmp_path / "sft2" / "predictions.jsonl", [1, 1, 1])
    record_result(tmp_path, "gsm8k", "sft", {"n": 3, "dataset": "b.jsonl", "predictions": "sft2/predictions.jsonl"})
    assert list(load_results(tmp_path)["gsm8k"]) == ["sft"]


def test_titles_name_the_dataset_scored(tmp_path):
    md = record_result(tmp_path, "gsm8k", "base", {"n": 200, "accuracy": 0.1, "dataset": "runs/demo/data/test.jsonl"})
    text = md.read_text(encoding="utf-8")
    assert "## gsm8k on runs/demo/data/test.jsonl" in text
    assert "| run | n | accuracy | dataset |" in text  # the dataset is a column too
    from evaluate.report import task_title

    assert task_title("gsm8k", {"a": {"dataset": "hllj/vi_gsm8k (test)"}}) == "gsm8k on hllj/vi_gsm8k (test)"
    assert task_title("sentiment", {"a": {}}) == "sentiment"
