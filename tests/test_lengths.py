"""The length budget: rows longer than the model's window stop a run before training, with numbers."""

import datasets
import pytest

from data.common import DataError
from data.lengths import LengthBudgetError, enforce_budget, sequence_lengths, summarize
from data.vi_gsm8k import load_vi_gsm8k
from tests.conftest import ROOT, run_entry

FIXTURE = str(ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl")


@pytest.mark.parametrize("lengths,expected", [
    ([5], (5, 5, 5, 5, 0)),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], (5, 9, 10, 10, 9)),   # nearest-rank percentiles
    ([30, 10, 20], (20, 30, 30, 30, 0)),                    # the longest's row is reported
])
def test_summary(lengths, expected):
    stats = summarize(lengths)
    assert (stats.p50, stats.p90, stats.p99, stats.longest, stats.longest_row) == expected


def test_counts_are_what_the_model_sees(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "qwen2")
    rows = load_vi_gsm8k(FIXTURE).select(range(5))
    prompts = sequence_lengths(rows, tokenizer, ["prompt"])
    whole = sequence_lengths(rows, tokenizer, ["prompt", "completion"])
    for row, p, w in zip(rows, prompts, whole, strict=True):
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert p == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        assert w == len(tokenizer(full, add_special_tokens=False)["input_ids"]) and w > p


def test_fail_gives_the_numbers_and_drop_keeps_what_fits(capsys):
    rows = datasets.Dataset.from_dict({"prompt": ["a", "b", "c", "d"]})
    with pytest.raises(LengthBudgetError, match=r"2 of 4 GRPO prompts need more than 100 tokens \(longest: 90 \+ 30 "
                                                r"reserved = 120, row 3\)\. Raise max_seq_length\."):
        enforce_budget(rows, [50, 80, 60, 90], limit=100, reserve=30, what="GRPO prompts",
                       fix="Raise max_seq_length.")
    kept = enforce_budget(rows, [50, 80, 60, 90], limit=100, reserve=30, on_overflow="drop")
    assert kept["prompt"] == ["a", "c"]
    assert "dropped 2 of 4 rows longer than 70 tokens" in capsys.readouterr().out
    with pytest.raises(DataError, match="on_long_rows must be one of"):
        enforce_budget(rows, [1, 1, 1, 1], limit=10, on_overflow="truncate")


def test_grpo_stops_before_training_when_prompts_do_not_fit(tmp_path):
    run_dir = tmp_path / "grpo"
    proc = run_entry(["python", "-m", "recipes.grpo", "--config", "configs/grpo/tiny.yaml", "--output_dir",
                      str(run_dir), "--max_seq_length", "100", "--backend", "hf"], check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "GRPO prompts need more than 100 tokens" in errors[0] and "+ 24 reserved" in errors[0]
    assert "--on_long_rows drop" in errors[0] and "Traceback" not in proc.stderr
    assert not (run_dir / "adapter").exists()


def test_grpo_trains_without_the_long_prompts_when_asked(tmp_path):
    run_dir = tmp_path / "grpo"
    proc = run_entry(["python", "-m", "recipes.grpo", "--config", "configs/grpo/tiny.yaml", "--output_dir",
                      str(run_dir), "--max_seq_length", "110", "--on_long_rows", "drop", "--max_steps", "1",
                      "--eval_every_save", "false", "--backend", "hf"], env={"OMP_NUM_THREADS": "1"})
    dropped = [line for line in proc.stdout.splitlines() if line.startswith("[length] dropped")]
    assert dropped and "longer than 86 tokens" in dropped[0]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


def test_sft_stops_when_answers_would_be_cut(tmp_path):
    proc = run_entry(["python", "-m", "recipes.sft", "--config", "configs/sft/tiny.yaml", "--output_dir",
                      str(tmp_path / "sft"), "--max_length", "150", "--backend", "hf"], check=False)
    assert proc.returncode == 2
    assert "SFT rows (prompt + answer) need more than 150 tokens" in proc.stderr
