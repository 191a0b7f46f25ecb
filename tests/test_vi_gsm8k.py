"""data/vi_gsm8k.py: loading, validation, answer normalisation, prompt/target format, the CLI."""

import json

import pytest

from data.common import DataError
from data.vi_gsm8k import (
    DEFAULT_SOURCE,
    SYSTEM_PROMPT,
    build_prompt,
    format_target,
    load_vi_gsm8k,
    read_raw_rows,
)
from rewards.math import ANSWER_FORMAT_HINT, extract_answer, format_strict
from tests.conftest import ROOT, run_entry

FIXTURE = ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"question": "Lan có 12 quả táo, mua thêm 7 quả. Hỏi Lan có bao nhiêu quả?",
        "explanation": "Số táo là: 12 + 7 = 19 (quả).", "answer": "19"}


def test_fixture_loads_with_trainer_columns():
    ds = load_vi_gsm8k(str(FIXTURE))
    assert len(ds) == 60
    assert set(ds.column_names) == {"prompt", "completion", "answer", "question", "explanation"}
    row = ds[0]
    assert row["prompt"] == [{"role": "system", "content": SYSTEM_PROMPT},
                             {"role": "user", "content": row["question"]}]
    assert row["completion"] == [{"role": "assistant", "content": format_target(row["explanation"], row["answer"])}]
    # Every target is read back as its gold answer by the strict checker the metric uses, and
    # has the exact format the strict format reward pays for.
    for target, gold in zip((c[0]["content"] for c in ds["completion"]), ds["answer"], strict=True):
        assert extract_answer(target, strict=True) == float(gold)
    assert format_strict(ds["completion"]) == [1.0] * len(ds)


def test_system_prompt_asks_for_the_answer_line():
    assert ANSWER_FORMAT_HINT in SYSTEM_PROMPT and "####" in SYSTEM_PROMPT


@pytest.mark.parametrize("system_prompt", [None, ""])
def test_no_system_prompt_means_no_system_message(system_prompt):
    assert build_prompt("  Câu hỏi?\n", system_prompt) == [{"role": "user", "content": "Câu hỏi?"}]


@pytest.mark.parametrize(
    "explanation, answer, expected",
    [
        ("12 + 7 = 19.", "19", "12 + 7 = 19.\n#### 19"),
        ("12 + 7 = 19.\n\n", "19", "12 + 7 = 19.\n#### 19"),  # trailing blank lines dropped
        # GSM8K calculator annotations are not reasoning to imitate
        ("48 : 2 = <<48/2=24>>24 (quả).", "24", "48 : 2 = 24 (quả).\n#### 24"),
        # an explanation that already ends with its answer line keeps only ours
        ("5 x 3 = 15\n#### 15", "15", "5 x 3 = 15\n#### 15"),
        ("5 x 3 = 15\n### 15", "15", "5 x 3 = 15\n#### 15"),
        ("Nhiệt độ giảm 3 độ.", "-3", "Nhiệt độ giảm 3 độ.\n#### -3"),
    ],
)
def test_format_target(explanation, answer, expected):
    assert format_target(explanation, answer) == expected


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("1.250.000", "1250000"),  # Vietnamese thousands dots
        ("3,5", "3.5"),  # Vietnamese decimal comma
        ("2.5", "2.5"),
        ("-3", "-3"),  # sign kept
        ("1,250", "1250"),  # English thousands
        (" 17 ", "17"),
        (17, "17"),  # a number in JSON, not text
        (0.25, "0.25"),
    ],
)
def test_answers_are_normalised(tmp_path, raw, canonical):
    path = write_jsonl(tmp_path / "one.jsonl", [{**GOOD, "answer": raw}])
    assert load_vi_gsm8k(str(path))["answer"] == [canonical]


def malformed_rows():
    return [
        GOOD,
        {"question": "Không có lời giải", "answer": "5"},  # line 2: missing explanation
        {**GOOD, "answer": "mười chín"},  # line 3: not a number
        {**GOOD, "question": "   "},  # line 4: empty question
        {**GOOD, "answer": None},  # line 5: null answer
        {**GOOD, "question": "Hỏi khác?", "answer": "19,0"},
    ]


def test_bad_rows_skipped_with_line_and_reason(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", malformed_rows())
    ds = load_vi_gsm8k(str(path), on_bad_rows="skip")
    assert ds["question"] == [GOOD["question"], "Hỏi khác?"]
    assert ds["answer"] == ["19", "19"]
    out = capsys.readouterr().out
    assert f"skipped 4 of 6 rows in {path}" in out
    for expected in ("line 2: missing field 'explanation'", "line 3: answer 'mười chín' is not a number",
                     "line 4: empty field 'question'", "line 5: missing field 'answer'"):
        assert f"{path} {expected}" in out


def test_bad_rows_fail_at_the_first_when_asked(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", malformed_rows())
    with pytest.raises(DataError, match=r"bad.jsonl line 2: missing field 'explanation'.*--on_bad_rows skip") as err:
        load_vi_gsm8k(str(path), on_bad_rows="fail")
    assert "line 3" not in str(err.value)


def test_json_array_and_parquet_sources(tmp_path):
    import datasets

    rows = [GOOD, {**GOOD, "answer": "3,5"}]
    json_path = tmp_path / "rows.json"
    json_path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    parquet_path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet_path))
    for path in (json_path, parquet_path):
        assert load_vi_gsm8k(str(path))["answer"] == ["19", "3.5"]


def test_limit_is_a_seeded_subset():
    full = load_vi_gsm8k(str(FIXTURE))["question"]
    a = load_vi_gsm8k(str(FIXTURE), limit=10, seed=1)["question"]
    b = load_vi_gsm8k(str(FIXTURE), limit=10, seed=1)["question"]
    c = load_vi_gsm8k(str(FIXTURE), limit=10, seed=2)["question"]
    assert a == b and a != c
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(full)
    assert a != full[:10]  # a random sample, not the head of the file
    assert [full.index(q) for q in a] == sorted(full.index(q) for q in a)  # file order kept
    assert load_vi_gsm8k(str(FIXTURE), limit=1000)["question"] == full


def test_user_mistakes_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_vi_gsm8k(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="limit"):
        load_vi_gsm8k(str(FIXTURE), limit=0)
    with pytest.raises(DataError, match="splits"):
        read_raw_rows(DEFAULT_SOURCE, "validation")  # refused before any download


def test_cli_writes_a_reloadable_file_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cache" / "test.jsonl"
    args = ["python", "-m", "data.vi_gsm8k", "--source", str(FIXTURE), "--split", "test", "--out", str(out),
            "--limit", "12"]
    proc = run_entry(args)
    assert "wrote 12 test rows" in proc.stdout
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"question", "explanation", "answer"}
    # The cached file is itself a valid source, giving the same rows.
    assert load_vi_gsm8k(str(out))["question"] == load_vi_gsm8k(str(FIXTURE), limit=12)["question"]
    before = out.read_bytes()
    again = run_entry(args, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before


def test_make_data_builds_both_splits_once(tmp_path):
    proc = run_entry(["make", "data", f"SOURCE={FIXTURE}", f"DATA_DIR={tmp_path}"])
    assert proc.stdout.count("wrote 60") == 2
    assert {p.name for p in tmp_path.iterdir()} == {"vi_gsm8k-train.jsonl", "vi_gsm8k-test.jsonl"}
    again = run_entry(["make", "data", f"SOURCE={FIXTURE}", f"DATA_DIR={tmp_path}"])
    assert "wrote" not in again.stdout  # existing files are kept, not rebuilt


def test_a_field_missing_from_the_first_row_is_still_reported(tmp_path):
    """Columns come from every row, not the first one: row 0 lacking `explanation` is a bad row."""
    import json as _json

    from data.vi_gsm8k import load_vi_gsm8k

    rows = [{"question": "Lan có 3 quả táo, ăn 1 quả. Còn mấy quả?", "answer": "2"},
            {"question": "Có 2 + 2 quả cam. Có mấy quả?", "explanation": "2 + 2 = 4", "answer": "4"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(_json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    data = load_vi_gsm8k(str(path), on_bad_rows="skip")
    assert len(data) == 1 and data[0]["answer"] == "4"
