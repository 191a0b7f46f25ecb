"""The length budget: rows longer than the model's window stop a run before training, with numbers."""

import datasets
import pytest

import core.boot  # noqa: F401  (Unsloth first, as in every entry point: recipes.dpo is imported below)
from data.common import DataError
from data.lengths import LengthBudgetError, enforce_budget, first_difference, sequence_lengths, summarize
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


@pytest.mark.parametrize("a,b,expected", [
    ([1, 2, 3], [1, 2, 4], 2),
    ([5, 2], [1, 2], 0),
    ([1, 2], [1, 2, 3], 2),      # one answer is the other plus more: they differ where the shorter ends
    ([1, 2, 3], [1, 2, 3], None),
])
def test_first_difference(a, b, expected):
    assert first_difference(a, b) == expected


def test_cut_keeps_long_rows_while_what_must_survive_fits(capsys):
    rows = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"]})
    budget = dict(limit=100, what="pairs", on_overflow="cut", needed_what="the first differing token")
    kept = enforce_budget(rows, [50, 180, 120], needed=[20, 60, 100], **budget)
    assert kept["prompt"] == ["a", "b", "c"]
    assert ("2 of 3 pairs are longer than 100 tokens and will be cut there (--on_long_rows cut); each keeps the "
            "first differing token (the latest at token 100, row 2)") in capsys.readouterr().out
    # One token later and the cut would leave row 2's answers identical: stop, with the row.
    with pytest.raises(LengthBudgetError, match=r"1 of 3 pairs would lose the first differing token if cut at 100 "
                                                r"tokens \(the latest at token 101, row 2\)"):
        enforce_budget(rows, [50, 180, 120], needed=[20, 60, 101], **budget)


def test_fail_names_cut_only_where_rows_can_be_cut():
    rows = datasets.Dataset.from_dict({"prompt": ["a", "b"]})
    with pytest.raises(LengthBudgetError) as err:
        enforce_budget(rows, [50, 180], limit=100, what="pairs", needed=[20, 130], needed_what="the first differing token")
    assert "--on_long_rows cut to train on their first 100 tokens (1 of 2 keep the first differing token)" in str(err.value)
    with pytest.raises(LengthBudgetError) as err:
        enforce_budget(rows, [50, 180], limit=100, what="GRPO prompts")
    assert "cut" not in str(err.value)
    # A recipe that passes nothing to keep cannot cut: GRPO prompts, SFT rows, LM sentences.
    with pytest.raises(DataError, match="--on_long_rows cut: GRPO prompts cannot be cut"):
        enforce_budget(rows, [50, 180], limit=100, what="GRPO prompts", on_overflow="cut")


def test_dpo_pair_budget_measures_where_the_answers_differ(tiny_models):
    """recipes/dpo.py's budget on two hand-made pairs: whole, cut, and cut too early."""
    from transformers import AutoTokenizer

    from data.lengths import sequence_ids
    from recipes.dpo import pair_budget

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "qwen2")
    shared = "Hà Nội là thủ đô của Việt Nam, một thành phố có lịch sử hơn một nghìn năm. " * 3
    pairs = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": "Thủ đô?"}], "chosen": [{"role": "assistant", "content": "Hà Nội."}],
         "rejected": [{"role": "assistant", "content": "Hanoi."}]},
        # The answers share a long beginning: they differ only after it.
        {"prompt": [{"role": "user", "content": "Kể về Hà Nội."}],
         "chosen": [{"role": "assistant", "content": shared + "Cảm ơn."}],
         "rejected": [{"role": "assistant", "content": shared + "Thanks."}]},
    ])
    chosen, rejected = (sequence_ids(pairs, tokenizer, ["prompt", side]) for side in ("chosen", "rejected"))
    longest = max(len(chosen[1]), len(rejected[1]))
    differ = first_difference(chosen[1], rejected[1]) + 1
    assert differ < longest - 1
    assert len(pair_budget(pairs, tokenizer, longest, "pairs", "fail")) == 2
    with pytest.raises(LengthBudgetError, match="1 of 2 pairs"):
        pair_budget(pairs, tokenizer, longest - 1, "pairs", "fail")
    assert len(pair_budget(pairs, tokenizer, differ, "pairs", "cut")) == 2
    with pytest.raises(LengthBudgetError, match=rf"would lose the first token where the two answers differ if cut at "
                                                 rf"{differ - 1} tokens \(the latest at token {differ}, row 1\)"):
        pair_budget(pairs, tokenizer, differ - 1, "pairs", "cut")


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
