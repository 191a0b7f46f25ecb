"""data.preference: every accepted layout -> TRL conversational pairs; bad rows reported by index."""

import json

import datasets
import pytest

from data.common import DataError
from data.preference import (
    FIXTURE,
    SYSTEM_PROMPT,
    SYSTEM_PROMPT_VI,
    load_preference,
    resolve_system_prompt,
    sft_on_chosen,
    to_conversational,
)

USER = [{"role": "user", "content": "Thủ đô của Việt Nam?"}]
GOOD = [{"role": "assistant", "content": "Hà Nội."}]
BAD = [{"role": "assistant", "content": "Hanoi."}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# One row per layout: the raw row and the prompt it must produce (system prompt "en").
LAYOUTS = [
    # the dataset's own columns (thainq107/Vi-Alpaca-Preference): the system prompt is added
    ({"id": 7, "question": "Thủ đô của Việt Nam?", "chosen": "Hà Nội.", "rejected": "Hanoi."},
     [{"role": "system", "content": SYSTEM_PROMPT}] + USER),
    # TRL standard (strings): same treatment as a question
    ({"prompt": "Thủ đô của Việt Nam?", "chosen": "Hà Nội.", "rejected": "Hanoi."},
     [{"role": "system", "content": SYSTEM_PROMPT}] + USER),
    # TRL conversational: the prompt is used as given, no system prompt added
    ({"prompt": USER, "chosen": GOOD, "rejected": BAD}, USER),
    # TRL implicit prompt: the shared leading messages become the prompt
    ({"chosen": USER + GOOD, "rejected": USER + BAD}, USER),
    # conversational prompt with text answers (mixed): answers become assistant messages
    ({"prompt": USER, "chosen": "Hà Nội.", "rejected": "Hanoi."}, USER),
]


@pytest.mark.parametrize("raw,prompt", LAYOUTS)
def test_every_layout_becomes_conversational(raw, prompt):
    row = to_conversational(raw, SYSTEM_PROMPT)
    assert row == {"prompt": prompt, "chosen": GOOD, "rejected": BAD}


# One row per problem: the raw row and a phrase the report must contain.
PROBLEMS = [
    ({"question": "q", "chosen": "a"}, "missing 'rejected'"),
    ({"question": "q", "chosen": "   ", "rejected": "b"}, "empty 'chosen'"),
    ({"question": "  ", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"chosen": "a", "rejected": "b"}, "missing 'question' or 'prompt'"),
    # identical up to whitespace is still identical: nothing to learn from the pair
    ({"question": "q", "chosen": "Hà  Nội.\n", "rejected": "Hà Nội."}, "identical"),
    ({"prompt": USER, "chosen": USER + GOOD, "rejected": BAD}, "only assistant messages"),
    ({"prompt": USER + GOOD, "chosen": GOOD, "rejected": BAD}, "must end with a user message"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": GOOD, "rejected": BAD}, "unknown role"),
    ({"prompt": [{"role": "user", "content": ["img"]}], "chosen": GOOD, "rejected": BAD}, "non-text content"),
    ({"prompt": [], "chosen": GOOD, "rejected": BAD}, "empty or non-list"),
    ({"prompt": USER, "chosen": [{"role": "assistant"}], "rejected": BAD}, "without 'role' and 'content'"),
    # implicit layout whose conversations share nothing
    ({"chosen": GOOD, "rejected": BAD}, "share no prompt"),
]


@pytest.mark.parametrize("raw,reason", PROBLEMS)
def test_bad_rows_are_explained(raw, reason):
    problem = to_conversational(raw, SYSTEM_PROMPT)
    assert isinstance(problem, str) and reason in problem


def test_fixture_loads_with_a_seeded_disjoint_held_out_split():
    train, held = load_preference(str(FIXTURE), test_size=0.25, seed=0)
    assert (len(train), len(held)) == (36, 12)
    assert train.column_names == ["id", "prompt", "chosen", "rejected"]
    assert not set(train["id"]) & set(held["id"])
    again_train, again_held = load_preference(str(FIXTURE), test_size=0.25, seed=0)
    assert list(again_held["id"]) == list(held["id"]) and list(again_train["id"]) == list(train["id"])
    _, other = load_preference(str(FIXTURE), test_size=0.25, seed=1)
    assert list(other["id"]) != list(held["id"])
    row = held[0]
    assert row["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"]


def test_split_by_count_none_and_max_pairs():
    train, held = load_preference(str(FIXTURE), test_size=5, seed=0)
    assert (len(train), len(held)) == (43, 5)
    train, held = load_preference(str(FIXTURE), test_size=0)
    assert held is None and len(train) == 48
    train, held = load_preference(str(FIXTURE), test_size=2, max_pairs=10)
    assert (len(train), len(held)) == (8, 2)
    with pytest.raises(DataError, match="test_size"):
        load_preference(str(FIXTURE), test_size=1.5)


def test_malformed_file_skip_reports_rows_and_fail_raises(tmp_path, capsys):
    rows = [
        {"id": "a", "question": "Một cộng một bằng mấy?", "chosen": "Bằng hai.", "rejected": "Three."},
        {"id": "b", "question": "q", "chosen": "", "rejected": "x"},              # line 2: empty chosen
        {"id": "c", "prompt": USER, "chosen": GOOD, "rejected": BAD},             # line 3: fine (other layout)
        {"id": "d", "question": "q", "chosen": "giống", "rejected": "giống"},    # line 4: identical
        {"id": "e", "question": "q", "chosen": ["not", "messages"], "rejected": "x"},  # line 5: bad list
        {"id": "f", "question": "Hai cộng hai?", "chosen": "Bằng bốn.", "rejected": "Five."},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    train, held = load_preference(path, test_size=1, seed=0)
    out = capsys.readouterr().out
    assert "skipped 3 of 6 preference pairs" in out
    assert "line 2: empty 'chosen'" in out and "line 4: chosen and rejected are identical" in out and "line 5:" in out
    assert sorted(list(train["id"]) + list(held["id"])) == ["a", "c", "f"]
    with pytest.raises(DataError, match=r"pairs.jsonl line 2: empty 'chosen'\. .*--on_bad_rows skip"):
        load_preference(path, on_bad_rows="fail")


def test_unreadable_inputs_fail_with_one_clear_error(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "chosen": "a", "rejected": "b"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(DataError, match="broken.jsonl line 2: malformed JSON"):
        load_preference(str(broken), on_bad_rows="fail")
    with pytest.raises(DataError, match="not found"):
        load_preference(str(tmp_path / "missing.jsonl"))
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(DataError, match="no usable preference pairs"):
        load_preference(only_bad)
    # Columns that fit no layout: one line naming what the file has and how to map it.
    no_rejected = write_jsonl(tmp_path / "half.jsonl", [{"question": "q", "chosen": "a"}])
    with pytest.raises(DataError, match=r"has the column\(s\) chosen, question; .*--columns"):
        load_preference(no_rejected)


def test_json_array_and_parquet_files(tmp_path):
    rows = [{"prompt": f"Câu hỏi {i}?", "chosen": f"Trả lời {i}.", "rejected": f"Answer {i}."} for i in range(6)]
    as_json = tmp_path / "pairs.json"
    as_json.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    as_parquet = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(as_parquet))
    for path in (as_json, as_parquet):
        train, held = load_preference(str(path), test_size=2, system_prompt="none")
        assert len(train) == 4 and len(held) == 2
        assert train[0]["prompt"][0]["role"] == "user"  # "none": no system message
        assert train[0]["id"].startswith("row-")


@pytest.mark.parametrize("value,expected", [
    ("en", SYSTEM_PROMPT),
    ("VI", SYSTEM_PROMPT_VI),
    ("none", None),
    ("", None),
    (None, None),
    ("Bạn là trợ lý toán học.", "Bạn là trợ lý toán học."),
])
def test_system_prompt_presets(value, expected):
    assert resolve_system_prompt(value) == expected


def test_vietnamese_system_prompt_reaches_the_prompt():
    train, _ = load_preference(str(FIXTURE), system_prompt="vi", test_size=0)
    assert train[0]["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT_VI}


def test_sft_on_chosen_gives_prompt_completion_rows():
    train, _ = load_preference(str(FIXTURE), test_size=0)
    sft = sft_on_chosen(train)
    assert sorted(sft.column_names) == ["completion", "id", "prompt"]
    assert sft[3]["completion"] == train[3]["chosen"] and sft[3]["prompt"] == train[3]["prompt"]
