"""core/files.py: atomic writes of files and staged directories."""

import json

import pytest

from core.files import staged_directory, write_json_atomic, write_jsonl_atomic, write_text_atomic


def test_atomic_files_keep_vietnamese_and_leave_no_temp(tmp_path):
    write_text_atomic(tmp_path / "a.md", "Đáp số: 1.250.000 đồng\n")
    write_json_atomic(tmp_path / "m.json", {"câu": 3.5})
    write_jsonl_atomic(tmp_path / "p.jsonl", ({"i": i, "chữ": "ờ"} for i in range(3)))
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "Đáp số: 1.250.000 đồng\n"
    assert '"câu": 3.5' in (tmp_path / "m.json").read_text(encoding="utf-8")
    lines = (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2] and "ờ" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "m.json", "p.jsonl"]


def test_staged_directory_replaces_on_success_and_keeps_the_old_one_on_error(tmp_path):
    out = tmp_path / "model"
    with staged_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    assert (out / "weights").read_text() == "v1"

    with pytest.raises(RuntimeError), staged_directory(out) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "weights").read_text() == "v1"

    with staged_directory(out) as tmp:
        (tmp / "weights").write_text("v2")
    assert (out / "weights").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
