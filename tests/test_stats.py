"""Paired bootstrap intervals, pass@k and majority voting."""

import json

import pytest

from evaluate.stats import compare_runs, main, majority_vote, paired_bootstrap, pass_at_k


def test_identical_runs_give_a_zero_width_interval_at_zero():
    a = [1, 0, 1, 1, 0, 0, 1, 0] * 10
    d = paired_bootstrap(a, list(a))
    assert d.diff == 0.0 and d.low == 0.0 and d.high == 0.0
    assert d.p_value == 1.0


def test_clearly_better_run_has_interval_above_zero():
    # 100 problems: B solves everything A solves plus 30 more (no regressions).
    a = [1] * 20 + [0] * 80
    b = [1] * 50 + [0] * 50
    d = paired_bootstrap(a, b, seed=1)
    assert d.n == 100 and d.mean_a == 0.2 and d.mean_b == 0.5
    assert d.diff == pytest.approx(0.3)
    assert 0.15 < d.low < 0.3 < d.high < 0.45
    assert d.p_value < 0.001
    assert d.p_text() == "p < 0.0001"  # no resample crossed 0: bounded by 1/10000, not "0.000"
    worse = paired_bootstrap(b, a, seed=1)
    assert worse.high < 0 and worse.low == pytest.approx(-d.high)


def test_noisy_small_difference_interval_contains_zero():
    # Same accuracy, different problems solved: the interval straddles 0 and is wide.
    a = [1, 0] * 25
    b = [0, 1] * 25
    d = paired_bootstrap(a, b)
    assert d.diff == 0.0
    assert d.low < -0.15 and d.high > 0.15
    assert d.p_text() == f"p = {d.p_value:.3f}" and d.p_value > 0.5


def test_bootstrap_is_deterministic_and_checks_inputs():
    a, b = [0, 1, 1, 0, 1], [1, 1, 1, 0, 0]
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="no paired"):
        paired_bootstrap([], [])


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (2, 0, 1, 0.0),
        (2, 1, 1, 0.5),
        (2, 1, 2, 1.0),  # k == n: any sample correct
        (2, 2, 2, 1.0),
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 1, 0.3),  # pass@1 is the plain mean
        (4, 0, 4, 0.0),
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["5", "6", "5"], "5"),
        (["6", "5"], "6"),  # tie: the first seen wins
        (["6", "5", "5", "6"], "6"),
        ([None, "3", None], "3"),  # no answer does not vote
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def _write(path, correct, questions=None):
    questions = questions or [f"q{i}" for i in range(len(correct))]
    path.write_text("".join(json.dumps({"question": q, "answer": "1", "correct": c}) + "\n"
                            for q, c in zip(questions, correct, strict=True)), encoding="utf-8")
    return path


def test_compare_runs_pairs_by_question_not_by_line(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", [True, False, False, True], ["x", "y", "z", "w"])
    # Same problems in another order, plus one that A never answered.
    b = _write(tmp_path / "b.jsonl", [True, True, True, False, True], ["w", "z", "y", "x", "extra"])
    d = compare_runs(a, b)
    assert d.n == 4
    assert (d.mean_a, d.mean_b) == (0.5, 0.75)
    assert main([str(a), str(b), "--n_resamples", "200"]) == 0
    assert json.loads(capsys.readouterr().out)["diff"] == pytest.approx(0.25)
    c = _write(tmp_path / "c.jsonl", [True], ["other"])
    assert main([str(a), str(c)]) == 2
    assert "share no problems" in capsys.readouterr().err
