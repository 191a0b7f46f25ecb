"""Reward registry: names, dotted paths, parameterised rewards, errors."""

import subprocess
import sys
from pathlib import Path

import pytest

import rewards
from rewards import FACTORIES, REWARDS, get_reward_func, get_reward_funcs
from rewards.math import correctness, format_soft, format_strict

GOOD = "3 x 12 = 36\n#### 36"


def test_registry_has_required_names():
    for name in ("correctness", "format", "format_strict", "format_soft", "tag_count",
                 "repetition_penalty", "length_penalty"):
        assert callable(REWARDS[name])
    assert REWARDS["format"] is format_soft  # the default gives partial credit
    assert REWARDS["length_penalty"].__name__ == f"length_penalty_{rewards.DEFAULT_MAX_CHARS}"


def test_lookup_by_name_keeps_order():
    funcs = get_reward_funcs(["correctness", "format_strict", "format"])
    assert funcs == [correctness, format_strict, format_soft]


@pytest.mark.parametrize("path", ["rewards.math:correctness", "rewards.math.correctness"])
def test_dotted_path(path):
    assert get_reward_func(path) is correctness


@pytest.mark.parametrize(
    ("spec", "name", "text_len", "expected"),
    [
        ("length_penalty:800", "length_penalty_800", 1200, -0.5),
        ("length_penalty:800,-2", "length_penalty_800", 1600, -2.0),
        ("length_penalty: max_chars=10, penalty=-0.5", "length_penalty_10", 20, -0.5),
    ],
)
def test_parameterised_length_penalty(spec, name, text_len, expected):
    func = get_reward_func(spec)
    assert func.__name__ == name
    assert func(["x" * text_len]) == pytest.approx([expected])


def test_parameterised_repetition_penalty():
    func = get_reward_func("repetition_penalty:ngram_size=2,threshold=0.0")
    assert func(["a b a b a b"])[0] < 0.0


def test_callable_passes_through():
    def my_reward(completions, **kwargs):
        return [0.0] * len(completions)

    assert get_reward_funcs([my_reward, "tag_count"])[0] is my_reward


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        get_reward_funcs(["correctness", "corectness"])
    message = str(err.value)
    assert "corectness" in message
    assert str(sorted(REWARDS)) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("rewards.no_such_module:f", "cannot import"),
        ("rewards.math:no_such_function", "no callable"),
        ("rewards.math:ANSWER_PREFIX", "no callable"),  # exists but is a string
        ("length_penalty:0", "positive integer"),
        ("length_penalty:800,-1,7", "bad arguments"),
    ],
)
def test_bad_specs_raise_value_error(spec, match):
    with pytest.raises(ValueError, match=match):
        get_reward_func(spec)


def test_lazy_factory_is_imported_on_use(monkeypatch):
    # The place reserved for torch-backed rewards: a "module:factory" string, imported only when
    # a config names it (rewards/math.py stands in for rewards/sentiment.py here).
    monkeypatch.setitem(FACTORIES, "lazy_length", "rewards.math:make_length_penalty")
    assert get_reward_func("lazy_length:30").__name__ == "length_penalty_30"


def test_import_rewards_does_not_import_torch():
    code = "import sys, rewards; assert 'torch' not in sys.modules and 'trl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
