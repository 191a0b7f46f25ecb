"""Pass-rate filtering (evaluate/pass_rate.py, `make pass-rate`): the band rules, the report's counts,
the files GRPO trains on, and the real entry point on the tiny model."""

import json

import pytest

from core.cli import UserError
from evaluate.pass_rate import band, check_rule, keeps, outcome_row, summarize
from tests.conftest import ROOT, run_entry

FIXTURE = str(ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl")
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _row(passes, k=8, greedy=None):
    row = {"passes": passes, "k": k, "pass_rate": passes / k, "band": band(passes, k)}
    if greedy is not None:
        row["greedy_correct"] = greedy
    return row


@pytest.mark.parametrize("passes, greedy, frontier, greedy_wrong, range_25_75", [
    (0, False, False, False, False),  # never right: nothing to compare
    (1, False, True, True, False),  # greedy wrong, one sample right: the gap RL closes
    (1, True, True, False, False),  # greedy right by luck of argmax, the samples mostly wrong
    (2, False, True, True, True),  # p = 0.25: the range's ends are included
    (6, True, True, False, True),  # p = 0.75
    (7, False, True, True, False),
    (8, True, False, False, False),  # always right: nothing to compare
    (8, False, False, True, False),  # every sample right but greedy wrong: greedy_wrong keeps it
])
def test_keep_rules(passes, greedy, frontier, greedy_wrong, range_25_75):
    row = _row(passes, greedy=greedy)
    assert keeps(row, "frontier") is frontier
    assert keeps(row, "greedy_wrong") is greedy_wrong
    assert keeps(row, "range", 0.25, 0.75) is range_25_75


@pytest.mark.parametrize("keep, lo, hi, greedy, message", [
    ("middle", 0.0, 1.0, True, "keep must be one of frontier, greedy_wrong, range"),
    ("greedy_wrong", 0.0, 1.0, False, "needs the greedy answers"),
    ("range", 0.8, 0.2, True, "0 <= min_pass_rate <= max_pass_rate <= 1"),
    ("range", -0.1, 0.5, True, "0 <= min_pass_rate"),
])
def test_rules_that_cannot_work_are_refused(keep, lo, hi, greedy, message):
    with pytest.raises(ValueError, match=message):
        check_rule(keep, lo, hi, greedy)


def test_outcomes_use_the_rewards_checker_and_the_report_counts_them():
    problem = {"question": "Lan có 12 quả táo...", "explanation": "12 + 7 = 19", "answer": "19"}
    # "Đáp số: 19" is right for the flexible checker the correctness reward uses, "#### 18" is not
    row = outcome_row(problem, ["#### 19", "Đáp số: 19", "#### 18", "12 + 7 = 19\n#### 19"], greedy="#### 18")
    assert (row["passes"], row["pass_rate"], row["band"]) == (3, 0.75, "sometimes")
    assert row["correct"] == [True, True, False, True] and row["preds"] == ["19", "19", "18", "19"]
    assert row["greedy_correct"] is False and row["greedy_pred"] == "18"
    assert {"question", "explanation", "answer"} <= set(row)

    rows = [{**_row(p, k=4, greedy=g), "kept": keeps(_row(p, k=4), "frontier")}
            for p, g in [(0, False), (0, False), (1, False), (2, True), (3, False), (4, True), (4, True)]]
    report = summarize(rows, "frontier")
    assert report["bands"] == {"never": 2, "sometimes": 3, "always": 2} and report["kept"] == 3
    assert report["right_samples"] == [2, 1, 1, 1, 2] and report["n"] == 7 and report["rule"] == "0 < p < 1"
    assert report["pass@4"] == pytest.approx(5 / 7) and report["mean_pass_rate"] == pytest.approx(14 / 28)
    assert report["greedy_accuracy"] == pytest.approx(3 / 7)
    assert report["greedy_wrong_some_right"] == 2 and report["greedy_right_some_wrong"] == 1


def _scripted_generation(monkeypatch, answers):
    """Replace the model's sampling by a script: the i-th problem (in file order) gets i % (k + 1)
    right samples, and a right greedy answer when i % 3 == 0. The model, tokenizer and files are real."""
    import evaluate.generation as generation

    order = {q: i for i, q in enumerate(answers)}

    def fake(model, tokenizer, prompts, settings, lora_path=None, progress=True, desc="", backend="auto"):
        texts = []
        for prompt in prompts:
            question = prompt[-1]["content"]
            i, gold = order[question], answers[question]
            if settings.num_samples == 1:
                texts.append([f"#### {gold}" if i % 3 == 0 else "#### 999999937"])
            else:
                right = i % (settings.num_samples + 1)
                texts.append([f"#### {gold}"] * right + ["#### 999999937"] * (settings.num_samples - right))
        return generation.Generations(texts, [[5] * len(t) for t in texts], 0.01, "hf")

    monkeypatch.setattr(generation, "generate", fake)


def test_filtering_keeps_the_band_writes_a_grpo_dataset_and_reports(tiny_models, tmp_path, monkeypatch):
    from data.vi_gsm8k import load_vi_gsm8k
    from evaluate.pass_rate import filter_problems

    problems = load_vi_gsm8k(FIXTURE, limit=15, seed=0)
    answers = dict(zip(problems["question"], problems["answer"], strict=True))
    _scripted_generation(monkeypatch, answers)
    common = ["--model_name_or_path", str(tiny_models / "qwen2"), "--backend", "hf", "--dtype", "float32",
              "--dataset_name", FIXTURE, "--limit", "15", "--k", "4", "--max_new_tokens", "8"]
    report = filter_problems([*common, "--output_dir", str(tmp_path / "frontier")])

    passes = [i % 5 for i in range(15)]
    out = tmp_path / "frontier"
    rows = [json.loads(line) for line in (out / "pass_rates.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["passes"] for r in rows] == passes and [len(r["correct"]) for r in rows] == [4] * 15
    assert [r["kept"] for r in rows] == [0 < p < 4 for p in passes]
    kept = load_vi_gsm8k(str(out / "kept.jsonl"))  # GRPO's loader reads it as it is
    assert list(kept["question"]) == [q for q, p in zip(problems["question"], passes, strict=True) if 0 < p < 4]
    assert list(kept["answer"]) == [a for a, p in zip(problems["answer"], passes, strict=True) if 0 < p < 4]
    assert report == json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["kept"] == 9 and report["n"] == 15
    assert report["bands"] == {"never": 3, "sometimes": 9, "always": 3}
    assert report["right_samples"] == [3, 3, 3, 3, 3] and report["greedy_accuracy"] == pytest.approx(5 / 15)
    # tokens: every prompt once per sample and once for the greedy answer; 5 per scripted completion
    assert report["tokens"]["sequences"] == 15 * 5 and report["tokens"]["completion"] == 15 * 5 * 5
    assert report["tokens"]["prompt"] % 5 == 0 and report["tokens"]["prompt"] > 15 * 5 * 10
    assert (out / "run_info.json").is_file()

    # greedy wrong, some sample right: i % 3 != 0 and i % 5 != 0
    report = filter_problems([*common, "--keep", "greedy_wrong", "--output_dir", str(tmp_path / "greedy")])
    expected = [i for i in range(15) if i % 3 and i % 5]
    assert report["kept"] == len(expected) == report["greedy_wrong_some_right"]
    kept = load_vi_gsm8k(str(tmp_path / "greedy" / "kept.jsonl"))
    assert list(kept["question"]) == [problems["question"][i] for i in expected]

    # an empty band: the files are written (they say why), then one clear error
    with pytest.raises(UserError, match="no problem fell in the band"):
        filter_problems([*common, "--keep", "range", "--min_pass_rate", "0.3", "--max_pass_rate", "0.4",
                         "--output_dir", str(tmp_path / "empty")])
    assert (tmp_path / "empty" / "kept.jsonl").read_text() == ""
    assert len((tmp_path / "empty" / "pass_rates.jsonl").read_text().splitlines()) == 15
    # an output directory with files is never written into
    with pytest.raises(UserError, match="already holds files"):
        filter_problems([*common, "--output_dir", str(out)])


def test_make_pass_rate_samples_the_tiny_model(tiny_models, tmp_path):
    """The user's entry point with real sampling: a random model is never right, so every problem is
    'never' and the default band is empty (one error line); a range keeping everything keeps all."""
    common = [f"MODEL={tiny_models / 'qwen2'}", f"SOURCE={FIXTURE}"]
    args = "--limit 6 --k 3 --max_new_tokens 8 --batch_size 4 --backend hf --dtype float32"
    proc = run_entry(["make", "pass-rate", *common, f"OUT={tmp_path / 'none'}", f"ARGS={args}"], env=ENV, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "no problem fell in the band 0 < p < 1" in errors[0]
    assert "never right (p = 0) 6" in proc.stdout and "kept 0 of 6" in proc.stdout

    run_entry(["make", "pass-rate", *common, f"OUT={tmp_path / 'all'}",
               f"ARGS={args} --keep range --min_pass_rate 0 --max_pass_rate 1"], env=ENV)
    report = json.loads((tmp_path / "all" / "report.json").read_text(encoding="utf-8"))
    assert report["kept"] == report["n"] == 6 and report["k"] == 3
    assert report["tokens"]["sequences"] == 6 * 4 and 6 * 4 <= report["tokens"]["completion"] <= 6 * 4 * 8
    rows = [json.loads(line) for line in (tmp_path / "all" / "pass_rates.jsonl").read_text().splitlines()]
    assert all(len(r["preds"]) == 3 and r["greedy_correct"] is False for r in rows)
    assert len((tmp_path / "all" / "kept.jsonl").read_text().splitlines()) == 6
