"""data.common and the three loaders on the files users have: every format, BOM/CRLF, NFD text,
bad rows with their line numbers, column mapping, GSM8K's own layout, bad_rows_out, small splits."""

import csv
import json
import unicodedata

import datasets
import pytest

from core.sources import looks_like_hub_id
from data import common
from data.common import DataError, parse_columns, parse_hub_id, read_rows, seeded_split
from data.preference import load_preference
from data.students_feedback import load_feedback
from data.vi_gsm8k import load_vi_gsm8k, to_problem
from tests.conftest import ROOT, run_entry

ROWS = [
    {"question": "Lan có 12 quả táo, mua thêm 7 quả. Hỏi Lan có bao nhiêu quả?",
     "explanation": "Số táo là: 12 + 7 = 19 (quả).", "answer": "19"},
    {"question": "Một sợi dây dài 3,6 m cắt thành 4 đoạn bằng nhau. Mỗi đoạn dài mấy mét?",
     "explanation": "Mỗi đoạn dài: 3,6 : 4 = 0,9 (m).\nĐáp số: 0,9 m.", "answer": "0,9"},
    {"question": "Mẹ có 100.000 đồng, mua cam hết 75.000 đồng. Mẹ còn bao nhiêu tiền?",
     "explanation": "Mẹ còn: 100.000 - 75.000 = 25.000 (đồng).", "answer": "25.000"},
]
QUESTIONS = [r["question"] for r in ROWS]
ANSWERS = ["19", "0.9", "25000"]
MAPPED = [{"cau_hoi": r["question"], "loi_giai": r["explanation"], "dap_an": r["answer"]} for r in ROWS]
COLUMNS = "question=cau_hoi,explanation=loi_giai,answer=dap_an"


def write_csv(path, rows, delimiter=",", bom=False, crlf=False):
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter,
                                lineterminator="\r\n" if crlf else "\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path, rows, bom=False, crlf=False):
    end = "\r\n" if crlf else "\n"
    text = "".join(json.dumps(r, ensure_ascii=False) + end for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------------- formats
def _jsonl(tmp_path, rows):
    return write_jsonl(tmp_path / "d.jsonl", rows)


def _json_array(tmp_path, rows):
    (tmp_path / "d.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return tmp_path / "d.json"


def _json_data_key(tmp_path, rows):
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    return tmp_path / "d.json"


def _jsonl_named_json(tmp_path, rows):  # JSON Lines under a .json name, as many exports are
    return write_jsonl(tmp_path / "d.json", rows)


def _parquet(tmp_path, rows):
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    return tmp_path / "d.parquet"


def _csv(tmp_path, rows):
    return write_csv(tmp_path / "d.csv", rows)


def _tsv(tmp_path, rows):
    return write_csv(tmp_path / "d.tsv", rows, delimiter="\t")


def _saved_dataset(tmp_path, rows):
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def _saved_dataset_dict(tmp_path, rows):  # the loader reads its "train" split
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


WRITERS = [_jsonl, _json_array, _json_data_key, _jsonl_named_json, _parquet, _csv, _tsv, _saved_dataset,
           _saved_dataset_dict]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__.strip("_"))
def test_every_format_gives_the_same_problems(tmp_path, writer):
    ds = load_vi_gsm8k(str(writer(tmp_path, ROWS)))
    assert ds["question"] == QUESTIONS and ds["answer"] == ANSWERS
    assert ds["explanation"][1] == ROWS[1]["explanation"]  # a line break inside a CSV/TSV cell survives


def test_hub_id_with_config_and_revision_reaches_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list([ROWS[0], {**ROWS[1], "answer": "không biết"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_vi_gsm8k("an-org/toan-lop-5:vi@a1b2c3", split="test")
    assert calls == [("an-org/toan-lop-5", {"split": "test", "name": "vi", "revision": "a1b2c3"})]
    assert ds["answer"] == ["19"]
    # The published source keeps its data files; rows of a table are reported by 0-based index.
    with pytest.raises(DataError, match=r"hllj/vi_gsm8k \(test\) index 1: answer 'không biết' is not a number"):
        load_vi_gsm8k("hllj/vi_gsm8k", split="test", on_bad_rows="fail")
    assert calls[-1] == ("hllj/vi_gsm8k", {"split": "test", "data_files": {"test": "vi_test.json"}})


@pytest.mark.parametrize("text, expected", [
    ("owner/name", ("owner/name", None, None)),
    ("owner/name:cfg", ("owner/name", "cfg", None)),
    ("owner/name@v1.0", ("owner/name", None, "v1.0")),
    ("owner/name:cfg@main", ("owner/name", "cfg", "main")),
])
def test_hub_ids(text, expected):
    assert parse_hub_id(text) == expected


@pytest.mark.parametrize("text", ["owner/name:", "owner/name@", ":cfg"])
def test_malformed_hub_ids(text):
    with pytest.raises(DataError, match="cannot read"):
        parse_hub_id(text)


def test_hub_errors_are_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load 'an-org/x' .*reach the hub\). Offline\?") as err:
        load_vi_gsm8k("an-org/x")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("source, hub", [
    ("hllj/vi_gsm8k", True),
    ("an-org/toan-lop-5:vi@a1b2c3", True),
    ("AI-MO/NuminaMath-1.5", True),                # a dot followed by a digit is part of a hub name
    ("an-org/x@refs/pr/1", True),                  # a git revision may hold a slash
    ("data/fixtures/bai_toan.cvs", False),         # more than one slash
    ("an-org/bai_toan.cvs", False),                # a file extension, even a misspelt one
    ("an-org/toan.jsonl", False),
    ("data/bai_toan", False),                      # data/ is a folder here: a path missing its extension
    ("bai_toan", False),                           # no owner: a hub id is owner/name
    ("./hllj/vi_gsm8k", False), ("/abs/x", False), ("~/x/y", False), ("C:\\data\\x.csv", False),
    ("data/fixtures/bai_toan.csv", False),         # exists
])
def test_a_string_is_a_hub_id_only_if_it_looks_like_one(source, hub):
    assert looks_like_hub_id(source) is hub and common.is_local(source) is not hub


@pytest.mark.parametrize("source, closest", [
    ("data/fixtures/bai_toan.cvs", "data/fixtures/bai_toan.csv"),           # the typo: only the close one
    ("data/fixture/bai_toan.csv", "data/fixtures/bai_toan.csv"),            # a typo in the folder
    ("data/fixtures/bai_toan", "data/fixtures/bai_toan.csv"),               # the extension left out
    ("data/bai_toan.csv", "data/fixtures/bai_toan.csv"),                    # the right name in the wrong folder
    ("./data/fixtures/vi_gsm8k_sample.josnl", "./data/fixtures/vi_gsm8k_sample.jsonl"),
])
def test_a_missing_local_file_names_the_closest_existing_one_without_the_hub(source, closest, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError(f"{source} went to the hub")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(DataError) as err:
        load_vi_gsm8k(source)
    assert str(err.value).startswith(f"data file not found: {source} (did you mean {closest}? ")
    assert "\n" not in str(err.value)  # one suggestion (the "? " right after it), one line


def test_a_misspelt_dataset_fails_before_the_imports(tmp_path):
    """The issue's command: one error line naming the file beside it, before torch, Unsloth,
    transformers or datasets are imported (core/boot.py checks the path first; no network, well
    under a second). The child finds stand-ins for them first on its path that stop it if imported."""
    stubs = tmp_path / "stubs"
    for name in ("torch", "unsloth", "transformers", "datasets", "huggingface_hub"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise SystemExit('{name} was imported')\n")
    proc = run_entry(["python", "-m", "recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                      "--dataset_name", "data/fixtures/bai_toan.cvs", "--output_dir", str(tmp_path / "x")],
                     env={"PYTHONPATH": str(stubs)}, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: data file not found: data/fixtures/bai_toan.cvs (did you mean data/fixtures/bai_toan.csv? give an "
        "existing .jsonl/.json/.csv/.tsv/.parquet file or a save_to_disk directory; a hub dataset is written owner/name)"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_bom_and_crlf_are_accepted(tmp_path, bom, crlf, kind):
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", ROWS, bom=bom, crlf=crlf)
        ds = load_vi_gsm8k(str(path))
    else:
        path = write_csv(tmp_path / "d.csv", MAPPED, bom=bom, crlf=crlf)
        ds = load_vi_gsm8k(str(path), columns=COLUMNS)
    assert ds["question"] == QUESTIONS and ds["answer"] == ANSWERS
    assert not any("\r" in e or "\ufeff" in q for e, q in zip(ds["explanation"], ds["question"], strict=True))


def test_decomposed_vietnamese_is_composed_on_the_way_in(tmp_path, capsys):
    nfd_rows = [{unicodedata.normalize("NFD", k): unicodedata.normalize("NFD", v) for k, v in r.items()}
                for r in MAPPED]
    assert nfd_rows[0] != MAPPED[0]  # the file really holds decomposed text (keys included)
    path = write_csv(tmp_path / "nfd.csv", nfd_rows)
    ds = load_vi_gsm8k(str(path), columns={"question": "cau_hoi", "explanation": "loi_giai", "answer": "dap_an"})
    assert ds["question"] == QUESTIONS
    assert all(unicodedata.is_normalized("NFC", m["content"]) for p in ds["prompt"] for m in p)
    # every loader, nested chat messages included
    pair = {"prompt": [{"role": "user", "content": unicodedata.normalize("NFD", "Thủ đô của Việt Nam?")}],
            "chosen": unicodedata.normalize("NFD", "Hà Nội."), "rejected": "Hanoi."}
    train, _ = load_preference(str(write_jsonl(tmp_path / "p.jsonl", [pair])), test_size=0)
    assert train[0]["prompt"][0]["content"] == "Thủ đô của Việt Nam?" and train[0]["chosen"][0]["content"] == "Hà Nội."
    feedback = write_jsonl(tmp_path / "f.jsonl", [{"sentence": unicodedata.normalize("NFD", "thầy dạy rất hay"),
                                                   "label": "tích cực"}])
    assert load_feedback(str(feedback), "all")["sentence"] == ["thầy dạy rất hay"]


# -------------------------------------------------------------------------------- bad rows
BAD_JSONL = "\n".join([
    json.dumps(ROWS[0], ensure_ascii=False),
    '{"question": "Câu hỏi bị cắt giữa chừng", "expla',  # line 2: a truncated export
    "",  # blank lines are not rows, but they count as lines
    '["không", "phải", "đối tượng"]',  # line 4: not an object
    json.dumps({**ROWS[1], "answer": "chín phần mười"}, ensure_ascii=False),  # line 5: not a number
    json.dumps({"question": "Thiếu lời giải?", "answer": "5"}, ensure_ascii=False),  # line 6
    json.dumps({**ROWS[2], "question": "  "}, ensure_ascii=False),  # line 7: empty
    json.dumps(ROWS[2], ensure_ascii=False),
]) + "\n"
BAD_JSONL_REASONS = [
    "line 2: malformed JSON (Unterminated string starting at, column 43)",
    "line 4: expected a JSON object, got list",
    "line 5: answer 'chín phần mười' is not a number",
    "line 6: missing field 'explanation' (or an answer with the reasoning and a final '#### <number>' line, "
    "GSM8K's own format)",
    "line 7: empty field 'question'",
]


def test_every_bad_row_kind_is_skipped_with_its_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD_JSONL, encoding="utf-8")
    ds = load_vi_gsm8k(str(path))
    assert ds["question"] == [QUESTIONS[0], QUESTIONS[2]]
    out = capsys.readouterr().out
    for reason in BAD_JSONL_REASONS:
        assert f"[data] {path} {reason}" in out
    assert f"skipped 5 of 7 rows in {path}" in out
    # fail: the first bad row, the same message, one line
    with pytest.raises(DataError) as err:
        load_vi_gsm8k(str(path), on_bad_rows="fail")
    assert str(err.value).startswith(f"{path} {BAD_JSONL_REASONS[0]}. Fix it, or pass --on_bad_rows skip")
    assert "\n" not in str(err.value)


def test_csv_bad_rows_report_the_line_an_editor_shows(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text(
        "cau_hoi,loi_giai,dap_an\r\n"
        '"Hai dòng\r\ntrong một ô: 2 + 3 = ?","2 + 3 = 5",5\r\n'  # lines 2-3: one record
        "Thiếu một cột,1 + 1 = 2\r\n"  # line 4: two fields
        '"Sai dấu ngoặc"x,1 + 2 = 3,3\r\n'  # line 5: text after a closing quote
        "Có dấu phẩy, không bọc ngoặc,2 + 2 = 4,4\r\n"  # line 6: four fields
        "Tính 6 : 2,6 : 2 = 3,ba\r\n"  # line 7: not a number
        "Tính 9 - 4,9 - 4 = 5,5\r\n", encoding="utf-8")
    ds = load_vi_gsm8k(str(path), columns=COLUMNS)
    assert ds["question"] == ["Hai dòng\r\ntrong một ô: 2 + 3 = ?", "Tính 9 - 4"]
    out = capsys.readouterr().out
    assert "line 4: 2 fields where the header has 3 (an unquoted comma inside a value?)" in out
    assert "line 5: malformed CSV (',' expected after '\"')" in out
    assert "line 6: 4 fields where the header has 3" in out
    assert "line 7: answer 'ba' is not a number" in out
    assert "skipped 4 of 6 rows" in out


def test_parquet_bad_rows_are_reported_by_index(tmp_path):
    path = _parquet(tmp_path, [ROWS[0], {**ROWS[1], "answer": ""}])
    with pytest.raises(DataError, match=r"d.parquet index 1: empty field 'answer'"):
        load_vi_gsm8k(str(path), on_bad_rows="fail")


def test_a_json_array_row_knows_its_line(tmp_path):
    path = _json_array(tmp_path, [ROWS[0], "không phải đối tượng", {**ROWS[1], "answer": "?"}])
    with pytest.raises(DataError, match=r"d.json line 7: expected a JSON object, got str"):
        load_vi_gsm8k(str(path), on_bad_rows="fail")


@pytest.mark.parametrize("name, content, message", [
    # one JSON document: after a syntax error there is nothing to resume from
    ("a.json", '[\n{"question": "q", "answer": 1},\n{"question": \n]', r"a.json line 4: malformed JSON .*JSON Lines"),
    ("b.csv", 'cau_hoi,dap_an\n1,2\n"không đóng ngoặc,3\n4,5\n', r"b.csv line 3: a quoted field starts here and is never closed"),
    ("c.csv", "cau_hoi,cau_hoi\n1,2\n", r"c.csv line 1: column name\(s\) cau_hoi appear twice"),
    ("d.jsonl", b'{"question": "caf\xe9"}\n'.decode("latin-1"), r"d.jsonl line 1 is not UTF-8 text \(byte 0xe9\)"),
    ("e.xlsx", "", r"unsupported data file type '.xlsx'.*use .jsonl, .json, .csv, .tsv or .parquet"),
    ("f.csv", "", r"f.csv is empty: a CSV file needs a header line"),
])
def test_unreadable_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if name == "d.jsonl":
        path.write_bytes(b'{"question": "caf\xe9"}\n')
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        read_rows(str(path))
    assert "\n" not in str(err.value)


def test_missing_files_and_plain_directories(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_rows(str(tmp_path / "khong_co.csv"))
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        read_rows(str(tmp_path))
    _saved_dataset_dict(tmp_path, ROWS)
    with pytest.raises(DataError, match="has splits train, test, not 'validation'"):
        read_rows(str(tmp_path / "saved"), "validation")


def test_bad_rows_out_keeps_every_rejected_row_and_never_overwrites(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text(BAD_JSONL, encoding="utf-8")
    out = tmp_path / "reports" / "bad-rows.jsonl"
    load_vi_gsm8k(str(source), bad_rows_out=str(out))
    saved = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [f"{r['where']}: {r['reason']}" for r in saved] == BAD_JSONL_REASONS
    assert saved[0]["text"] == '{"question": "Câu hỏi bị cắt giữa chừng", "expla'  # the raw line, to fix
    assert saved[2]["row"]["answer"] == "chín phần mười"
    assert f"all of them, with their reasons, are in {out}" in capsys.readouterr().out
    # A second load in the same run (a held-out split, say) adds to the file it wrote...
    load_vi_gsm8k(str(source), bad_rows_out=str(out))
    assert len(out.read_text(encoding="utf-8").splitlines()) == 10
    # ...but a file that was there before the run is never overwritten.
    other = tmp_path / "old.jsonl"
    other.write_text("giữ nguyên\n", encoding="utf-8")
    with pytest.raises(DataError, match="old.jsonl already exists; not overwriting it"):
        load_vi_gsm8k(str(source), bad_rows_out=str(other))
    assert other.read_text(encoding="utf-8") == "giữ nguyên\n"


# -------------------------------------------------------------------------- column mapping
@pytest.mark.parametrize("value, expected", [
    (None, {}),
    ("", {}),
    ("question=cau_hoi, answer=dap_an", {"question": "cau_hoi", "answer": "dap_an"}),
    ("{question: cau_hoi, answer: dap_an}", {"question": "cau_hoi", "answer": "dap_an"}),  # YAML flow
    ('{"question": "câu hỏi"}', {"question": "câu hỏi"}),  # JSON, a column name with spaces
    ({"sentence": "cau"}, {"sentence": "cau"}),  # from a YAML config
])
def test_parse_columns(value, expected):
    assert parse_columns(value) == expected


@pytest.mark.parametrize("value", ["question", "question=", "a=b=c", "[question]", {"question": 3}])
def test_parse_columns_refuses_what_it_cannot_read(value):
    with pytest.raises(DataError, match="columns"):
        parse_columns(value)


def test_column_mapping_for_math_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", MAPPED)
    ds = load_vi_gsm8k(str(path), columns={"question": "cau_hoi", "explanation": "loi_giai", "answer": "dap_an"})
    assert ds["question"] == QUESTIONS and ds["answer"] == ANSWERS
    with pytest.raises(DataError) as err:
        load_vi_gsm8k(str(path), columns="question=cau_hoi,loigiai=loi_giai")
    assert str(err.value) == ("unknown field(s) in columns: loigiai; math rows use the fields question, explanation, "
                              "answer, prompt, completion, messages")
    with pytest.raises(DataError, match=r"maps answer to 'dapan', but .* has no column 'dapan' \(its columns: "
                                        r"cau_hoi, dap_an, loi_giai\)"):
        load_vi_gsm8k(str(path), columns="question=cau_hoi,explanation=loi_giai,answer=dapan")
    # Unmapped columns that fit no layout: one line naming the columns and the fix.
    with pytest.raises(DataError, match=r"has the column\(s\) cau_hoi, dap_an, loi_giai; math rows need .*--columns"):
        load_vi_gsm8k(str(path))


def test_column_mapping_for_preference_pairs(tmp_path):
    rows = [{"cau_hoi": f"Câu hỏi {i}?", "tot": f"Trả lời đúng {i}.", "kem": f"Wrong {i}."} for i in range(4)]
    path = write_csv(tmp_path / "pairs.csv", rows)
    train, held = load_preference(str(path), columns="question=cau_hoi,chosen=tot,rejected=kem", test_size=1,
                                  system_prompt="none")
    assert len(train) == 3 and len(held) == 1
    assert train[0]["prompt"] == [{"role": "user", "content": "Câu hỏi 0?"}]
    assert train[0]["chosen"] == [{"role": "assistant", "content": "Trả lời đúng 0."}]
    with pytest.raises(DataError, match=r"unknown field\(s\) in columns: answer; preference pairs use the fields "
                                        r"question, prompt, chosen, rejected, id"):
        load_preference(str(path), columns="answer=tot")


def test_column_mapping_and_label_names_for_feedback(tmp_path):
    rows = [{"cau": "thầy dạy nhiệt tình , dễ hiểu .", "nhan": "tích cực", "chu_de": "0"},
            {"cau": "phòng học quá nóng", "nhan": "Negative", "chu_de": "cơ sở vật chất"},
            {"cau": "môn học bình thường", "nhan": "1", "chu_de": ""},
            {"cau": "ổn", "nhan": "rất tốt", "chu_de": "0"}]  # line 5: not a label
    path = write_csv(tmp_path / "feedback.csv", rows)
    ds = load_feedback(str(path), "all", columns={"sentence": "cau", "label": "nhan", "topic": "chu_de"})
    assert ds["sentence"] == ["thầy dạy nhiệt tình, dễ hiểu.", "phòng học quá nóng", "môn học bình thường"]
    assert ds["label"] == [2, 0, 1] and ds["topic"] == [0, 2, -1]
    with pytest.raises(DataError, match=r"feedback.csv line 5: sentiment must be 0, 1 or 2 or a label name"):
        load_feedback(str(path), "all", on_bad_rows="fail", columns="sentence=cau,label=nhan,topic=chu_de")
    with pytest.raises(DataError, match=r"unknown field\(s\) in columns: text; feedback rows use the fields "
                                        r"sentence, label, sentiment, topic"):
        load_feedback(str(path), "all", columns="text=cau")


# ------------------------------------------------------------------------- other layouts
REASONING = "Tháng 5 bán được: 48 : 2 = <<48/2=24>>24 (kẹp).\nCả hai tháng: 48 + 24 = <<48+24=72>>72 (kẹp)."


@pytest.mark.parametrize("row", [
    # GSM8K's own: the answer holds the reasoning and a final "#### N" line
    {"question": "Natalia bán kẹp tóc ...", "answer": REASONING + "\n#### 72"},
    # TRL prompt/completion, as text
    {"prompt": "Natalia bán kẹp tóc ...", "completion": REASONING + "\n#### 72"},
    # prompt/completion as chat messages
    {"prompt": [{"role": "user", "content": "Natalia bán kẹp tóc ..."}],
     "completion": [{"role": "assistant", "content": REASONING + "\n#### 72"}]},
    # one chat: the last message is the answer
    {"messages": [{"role": "user", "content": "Natalia bán kẹp tóc ..."},
                  {"role": "assistant", "content": REASONING + "\n#### 72"}]},
    # a completion without the answer line, with an answer column
    {"prompt": "Natalia bán kẹp tóc ...", "completion": REASONING, "answer": 72},
], ids=["gsm8k", "prompt-completion", "conversational", "messages", "answer-column"])
def test_layouts_users_already_have(row, tmp_path):
    problem = to_problem(row)
    assert problem["question"] == "Natalia bán kẹp tóc ..."
    assert problem["explanation"] == REASONING and problem["answer"] == "72"
    ds = load_vi_gsm8k(str(write_jsonl(tmp_path / "d.jsonl", [row])))
    # The SFT target has exactly one answer line and no calculator annotations.
    assert ds["completion"][0][0]["content"] == "Tháng 5 bán được: 48 : 2 = 24 (kẹp).\nCả hai tháng: 48 + 24 = 72 (kẹp).\n#### 72"
    assert ds["prompt"][0][-1] == {"role": "user", "content": "Natalia bán kẹp tóc ..."}


def test_a_chat_prompt_keeps_its_own_system_message(tmp_path):
    own = [{"role": "system", "content": "Trả lời ngắn gọn."}, {"role": "user", "content": "1 + 1 = ?"}]
    rows = [{"prompt": own, "completion": "1 + 1 = 2\n#### 2"},
            {"prompt": own[1:], "completion": "1 + 1 = 2\n#### 2"}]
    ds = load_vi_gsm8k(str(write_jsonl(tmp_path / "d.jsonl", rows)), system_prompt="Giải toán.")
    assert ds["prompt"][0] == own
    assert ds["prompt"][1] == [{"role": "system", "content": "Giải toán."}] + own[1:]


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "q", "completion": "chỉ có lời giải"}, "completion has no final '#### <number>' line"),
    ({"messages": [{"role": "user", "content": "q"}]}, "'messages' must end with the assistant's answer"),
    ({"prompt": [{"role": "assistant", "content": "x"}], "completion": "1\n#### 1"}, "must end with a user message"),
    ({"prompt": "q", "completion": "#### 4"}, "only the answer line, no reasoning"),
    ({"question": "q", "answer": "Không có dòng đáp số"}, "missing field 'explanation' (or an answer with"),
])
def test_layout_problems_are_explained(row, reason):
    assert reason in to_problem(row)


# ------------------------------------------------------------------------------ small data
def test_held_out_splits_that_take_most_of_the_data_are_said_out_loud(tmp_path, capsys):
    pairs = [{"question": f"Câu {i}?", "chosen": f"Đúng {i}.", "rejected": f"Sai {i}."} for i in range(5)]
    path = str(write_jsonl(tmp_path / "five.jsonl", pairs))
    # The demo config's test_size 12 on 5 pairs used to become 1 train / 4 held-out in silence.
    with pytest.raises(DataError, match=r"held-out split of 12 preference pairs needs more than the 5 there are; "
                                        r"give a smaller count \(at most 4\), a fraction such as 0.2, or 0"):
        load_preference(path, test_size=12)
    train, held = load_preference(path, test_size=3)
    assert (len(train), len(held)) == (2, 3)
    assert "warning: " in capsys.readouterr().out
    load_preference(path, test_size=0.2)
    assert "warning" not in capsys.readouterr().out
    with pytest.raises(DataError, match="cannot be split"):
        seeded_split([1], 0.5, seed=0)


def test_a_fixture_csv_round_trip():
    """The README's example file: Excel-style (BOM, CRLF), one bad row on line 29."""
    raw = (ROOT / "data" / "fixtures" / "bai_toan.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    rows = common.read_rows(str(ROOT / "data" / "fixtures" / "bai_toan.csv"))
    assert len(rows) == 28 and rows[20].where == "line 29" and rows[20].data["dap_an"] == "năm"


def test_many_bad_rows_print_a_bounded_list_and_a_summary(tmp_path, capsys):
    rows = [ROWS[0]] + [{**ROWS[1], "answer": "không rõ"} for _ in range(30)]
    load_vi_gsm8k(str(write_jsonl(tmp_path / "many.jsonl", rows)))
    out = capsys.readouterr().out.splitlines()
    assert sum(line.endswith("(skipped)") for line in out) == common.SHOWN_BAD_ROWS
    assert "skipped 30 of 31 rows" in out[-1] and f"the first {common.SHOWN_BAD_ROWS} shown above" in out[-1]
