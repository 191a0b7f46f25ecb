"""Tests for the seeded Vietnamese arithmetic problem generator (data/synthetic.py)."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from data.common import DataError
from data.synthetic import (
    CONNECTORS,
    COUNT_TEMPLATES,
    FRIENDS,
    GIVERS,
    MONEY_COST_TEMPLATES,
    MONEY_HELD_TEMPLATES,
    NAMES,
    OBJECTS,
    generate,
    generate_problem,
    main,
    make_ood,
    make_splits,
    number_key,
    vi_number,
)

EQUATION = re.compile(r"^(\d+) ([-+x:]) (\d+) = (\d+)$")
VI_NUMBER = re.compile(r"\d{1,3}(?:\.\d{3})+|\d+")  # "15.000" or "15"
VIETNAMESE_LETTERS = set("ăâđêôơưàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ")


def chain(explanation: str) -> list[tuple[int, str, int, int]]:
    """The explanation's equations as (left, op, right, result), parsed independently of the module."""
    equations = []
    for part in explanation.split("; "):
        m = EQUATION.match(part)
        assert m, f"not an equation: {part!r} in {explanation!r}"
        equations.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return equations


def operands(explanation: str) -> list[int]:
    eqs = chain(explanation)
    return [eqs[0][0]] + [right for _, _, right, _ in eqs]


@pytest.fixture(scope="module")
def mixed() -> list[dict]:
    return generate(600, seed=11, money_rate=0.3)


def test_same_seed_same_problems_other_seed_other_problems():
    assert generate(40, seed=3) == generate(40, seed=3)
    assert generate(40, seed=3) != generate(40, seed=4)
    assert generate_problem(random.Random(7), 2) == generate_problem(random.Random(7), 2)
    assert make_splits(30, 20, seed=5) == make_splits(30, 20, seed=5)


def test_schema_and_types(mixed):
    for row in mixed:
        assert set(row) == {"question", "explanation", "answer", "steps"}
        assert all(isinstance(row[k], str) for k in ("question", "explanation", "answer"))
        assert "####" not in row["explanation"]
        assert "{" not in row["question"] and "}" not in row["question"], row["question"]


def test_answer_is_the_evaluated_equation_chain(mixed):
    for row in mixed:
        eqs = chain(row["explanation"])
        assert len(eqs) == row["steps"]
        for i, (left, op, right, result) in enumerate(eqs):
            if i:
                assert left == eqs[i - 1][3], f"chain broken in {row['explanation']!r}"
            if op == "+":
                assert left + right == result
            elif op == "-":
                assert left - right == result and result >= 1
            elif op == "x":
                assert left * right == result
            else:
                assert right >= 2 and left % right == 0 and left // right == result, row["explanation"]
        assert int(row["answer"]) == eqs[-1][3]


def test_answers_are_canonical_positive_integers(mixed):
    for row in mixed:
        assert re.fullmatch(r"[1-9]\d*", row["answer"]), row["answer"]


def test_values_stay_bounded(mixed):
    for row in mixed:
        money = "đồng" in row["question"]
        limit = 1_000_000 if money else 1000
        for left, op, right, result in chain(row["explanation"]):
            assert 1 <= result <= limit and left <= limit
            if money:  # amounts are whole thousands; counts and divisors are small
                assert left % 1000 == 0 and result % 1000 == 0
                assert right % 1000 == 0 if op in "+-" else right <= 10


def test_one_step_problems_use_small_operands():
    rows = generate(400, seed=2, min_steps=1, max_steps=1, money_rate=0.0)
    for row in rows:
        ((left, op, right, _),) = chain(row["explanation"])
        if op in "+-":
            assert 2 <= left <= 50 and 2 <= right <= 50
        elif op == "x":  # inside the 10 x 10 table
            assert 2 <= left <= 10 and 2 <= right <= 10
        else:
            assert 2 <= right <= 10 and 2 <= left // right <= 10


@pytest.mark.parametrize(
    "min_steps, max_steps, weights, expected",
    [
        (1, 3, [0.6, 0.4, 0.0], {1: 0.6, 2: 0.4, 3: 0.0}),
        (1, 3, None, {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}),
        (2, 3, [1.0, 3.0], {2: 0.25, 3: 0.75}),
        (3, 3, None, {3: 1.0}),
    ],
)
def test_step_counts_follow_bounds_and_weights(min_steps, max_steps, weights, expected):
    rows = generate(600, seed=1, min_steps=min_steps, max_steps=max_steps, step_weights=weights)
    counts = Counter(row["steps"] for row in rows)
    assert set(counts) <= set(range(min_steps, max_steps + 1))
    for steps, share in expected.items():
        assert abs(counts[steps] / len(rows) - share) < 0.07, (steps, counts)


@pytest.mark.parametrize(
    "ops, symbols",
    [
        (("+",), {"+"}),
        (("-",), {"-"}),
        (("*",), {"x"}),
        (("/",), {":"}),  # three divisions in a row need a lucky start: the retries must find one
        (("+", "-"), {"+", "-"}),
    ],
)
def test_only_requested_operations_appear(ops, symbols):
    rows = generate(60, seed=4, ops=ops, money_rate=0.2)
    seen = {op for row in rows for _, op, _, _ in chain(row["explanation"])}
    assert seen == symbols


def test_questions_are_vietnamese_and_distinct(mixed):
    questions = [row["question"] for row in mixed]
    assert len(set(questions)) == len(questions)
    for q in questions:
        assert VIETNAMESE_LETTERS & set(q.lower()), q
        assert q.startswith(q[0].upper()) and q.endswith("?")


def test_question_numbers_are_the_explanation_operands(mixed):
    # Every number written in the question (read the Vietnamese way) is an operand of the chain,
    # and every operand is written in the question: no hidden or stray numbers.
    for row in mixed:
        written = [int(tok.replace(".", "")) for tok in VI_NUMBER.findall(row["question"])]
        assert sorted(written) == sorted(operands(row["explanation"])), row


def test_money_questions_group_thousands_vietnamese_style():
    rows = generate(200, seed=8, money_rate=1.0)
    assert all("đồng" in row["question"] for row in rows)
    for row in rows:
        grouped = re.findall(r"(\d{1,3}(?:\.\d{3})+) đồng", row["question"])
        assert grouped, row["question"]
        values = [int(g.replace(".", "")) for g in grouped]
        assert sorted(values) == sorted(v for v in operands(row["explanation"]) if v >= 1000)
        assert "." not in row["explanation"] and "." not in row["answer"]


@pytest.mark.parametrize("value, text", [(0, "0"), (999, "999"), (1000, "1.000"), (15000, "15.000"),
                                         (1250000, "1.250.000")])
def test_vi_number(value, text):
    assert vi_number(value) == text


def test_templates_are_varied_per_operation():
    # A 135M model must not get away with memorising one sentence per operation.
    for op in ("+", "-", "/"):
        assert len(COUNT_TEMPLATES[op]) >= 8, op
    assert len(COUNT_TEMPLATES["*first"]) >= 8 and len(COUNT_TEMPLATES["*"]) >= 8
    for templates in (MONEY_HELD_TEMPLATES, MONEY_COST_TEMPLATES):
        assert all(len(templates[op]) >= 3 for op in ("+", "-", "*", "/"))
    # and the generator really uses them: with names, people, objects and numbers masked out,
    # the step sentences of one-step problems still come in many shapes per operation.
    people = sorted([name for name, _ in NAMES] + [w for ws in (*GIVERS.values(), *FRIENDS.values()) for w in ws],
                    key=len, reverse=True)
    words = sorted({w for o in OBJECTS for w in (o.amount, o.unit, o.noun, o.box)}, key=len, reverse=True)
    for op in ("+", "-", "*", "/"):
        rows = generate(300, seed=6, min_steps=1, max_steps=1, ops=(op,), money_rate=0.0)
        shapes = set()
        for row in rows:
            text = row["question"].lower()
            step = text.rsplit(". ", 1)[0] if op == "*" else text.split(". ")[1]
            for connector in CONNECTORS:
                step = step.removeprefix(connector)
            for word in people:
                step = re.sub(rf"\b{re.escape(word.lower())}\b", "_", step)
            for word in words:
                step = re.sub(rf"\b{re.escape(word)}\b", "_", step)
            shapes.add(re.sub(r"\d+", "#", step))
        assert len(shapes) >= 8, (op, sorted(shapes))


def test_splits_are_disjoint_and_test_is_stable():
    train, test = make_splits(300, 200, seed=0)
    assert len(train) == 300 and len(test) == 200
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert not {tuple(operands(r["explanation"])) for r in train} & {tuple(operands(r["explanation"])) for r in test}
    assert {tuple(operands(r["explanation"])) for r in test} == {number_key(r) for r in test}
    train_small, test_again = make_splits(50, 200, seed=0)
    assert test_again == test  # the test stream never looks at n_train
    assert train_small == train[:50]
    assert make_splits(50, 100, seed=0)[1] == test[:100]
    assert make_splits(50, 200, seed=1)[1] != test


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_steps": 0},
        {"max_steps": 4},
        {"min_steps": 3, "max_steps": 2},
        {"step_weights": [1.0, 1.0]},  # three levels need three weights
        {"step_weights": [0.0, 0.0, 0.0]},
        {"step_weights": [1.0, -1.0, 1.0]},
        {"ops": ("^",)},
        {"ops": ()},
        {"money_rate": 1.5},
    ],
)
def test_bad_options_raise_data_error(kwargs):
    with pytest.raises(DataError):
        generate(5, **kwargs)


def test_cli_writes_splits_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["--n_train", "40", "--n_test", "20", "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    assert "40 problems" in capsys.readouterr().out
    raw = (out / "train.jsonl").read_text(encoding="utf-8")
    assert "\\u" not in raw and "Hỏi" in raw  # ensure_ascii=False: Vietnamese stays readable
    train = [json.loads(line) for line in raw.splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (train, test) == make_splits(40, 20, seed=3)

    (out / "test.jsonl").write_text("keep me\n", encoding="utf-8")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    assert (out / "test.jsonl").read_text(encoding="utf-8") == "keep me\n"

    assert main(args + ["--overwrite"]) == 0
    assert len((out / "test.jsonl").read_text(encoding="utf-8").splitlines()) == 20
    assert not list(out.glob("*.tmp"))


def test_cli_reports_bad_options_in_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--ops=+^"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_dev_split_is_apart_from_both_and_leaves_test_alone():
    train, test = make_splits(300, 100, seed=0)
    train_d, test_d, dev = make_splits(300, 100, seed=0, n_dev=40)
    assert test_d == test and len(dev) == 40 and len(train_d) == 300
    keys = {name: {number_key(r) for r in rows} for name, rows in (("train", train_d), ("test", test_d), ("dev", dev))}
    assert not keys["dev"] & keys["test"] and not keys["dev"] & keys["train"] and not keys["train"] & keys["test"]
    assert make_splits(300, 100, seed=0, n_dev=40) == (train_d, test_d, dev)  # deterministic


def test_cli_writes_a_dev_file_only_when_asked(tmp_path):
    assert main(["--n_train", "30", "--n_test", "10", "--n_dev", "5", "--seed", "3", "--out", str(tmp_path / "a")]) == 0
    dev = [json.loads(line) for line in (tmp_path / "a" / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    assert dev == make_splits(30, 10, seed=3, n_dev=5)[2]
    assert main(["--n_train", "30", "--n_test", "10", "--out", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b" / "dev.jsonl").exists()


def test_number_ranges_left_the_training_draws_unchanged():
    """The seeds the README's demo numbers were measured with must still give the same problems
    (digests taken before number ranges became an option)."""
    import hashlib

    def digest(splits):
        return hashlib.sha256(json.dumps(splits, ensure_ascii=False, sort_keys=True).encode()).hexdigest()

    assert digest(make_splits(300, 100, seed=0, n_dev=30)) == \
        "80230ca7cfc51759a83f8afcc26ff5bd5abd2651fee5b891426a76f86d9c09e0"
    assert digest(make_splits(200, 50, seed=3, max_steps=1)) == \
        "77c00bf40bbaf961448a3ad9063827ceebaeb839d78a7b63777e7b8eb58dba7f"


def test_ood_problems_use_numbers_no_training_problem_can_draw():
    ood = make_ood(300, seed=0, money_rate=0.3)
    train, test, dev = make_splits(300, 100, seed=0, n_dev=30, money_rate=0.3)
    assert len(ood) == 300 and make_ood(300, seed=0, money_rate=0.3) == ood  # deterministic
    # (number_key alone can meet one: "15 x 13" and "15 - 13" share their numbers)
    assert not {r["explanation"] for r in ood} & {r["explanation"] for rows in (train, test, dev) for r in rows}
    assert not {r["question"] for r in ood} & {r["question"] for rows in (train, test, dev) for r in rows}
    for row in ood:
        scale = 1000 if "đồng" in row["question"] else 1
        steps = chain(row["explanation"])
        for i, (left, op, right, result) in enumerate(steps):
            if op in "+-":  # training adds and subtracts 2-50
                assert 51 <= right // scale <= 99, row
            elif op == "x":  # training: the 10 x 10 table first, then factors 2-5
                assert (11 <= right <= 15 and 11 <= left // scale <= 15) if i == 0 else 6 <= right <= 9, row
            else:  # training divides by 2-10
                assert 11 <= right <= 15, row
            assert 1 <= result // scale <= 5000
        if steps[0][1] in "+-":
            assert 51 <= steps[0][0] // scale <= 99, row
    # every operation and a few step counts show up, as in the other splits
    assert {op for r in ood for _, op, _, _ in chain(r["explanation"])} == {"+", "-", "x", ":"}
    assert {r["steps"] for r in ood} == {1, 2, 3}


def test_cli_writes_an_ood_file_only_when_asked_and_leaves_the_others_alone(tmp_path):
    args = ["--n_train", "30", "--n_test", "10", "--seed", "3", "--max_steps", "1"]
    assert main(args + ["--out", str(tmp_path / "a"), "--n_test_ood", "12"]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    read = lambda path: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]  # noqa: E731
    assert read(tmp_path / "a" / "test_ood.jsonl") == make_ood(12, seed=3, max_steps=1)
    assert not (tmp_path / "b" / "test_ood.jsonl").exists()
    for split in ("train", "test"):
        assert read(tmp_path / "a" / f"{split}.jsonl") == read(tmp_path / "b" / f"{split}.jsonl")
