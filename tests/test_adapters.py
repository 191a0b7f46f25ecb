"""core/adapters.py: an adapter's base is found from any working directory and after moves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.adapters import (
    BASE_RECORD,
    adapter_base,
    base_candidates,
    record_adapter_base,
    resolve_adapter_base,
)
from core.cli import UserError


def make_model(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def make_adapter(path: Path, base: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 8}))
    return path


# base_candidates is pure path arithmetic: one row per situation.
A = Path("/p/runs/demo/grpo/adapter")
CANDIDATE_CASES = [
    # (name, record, cwd, first candidates expected, in order)
    ("runs/demo/sft/merged", None, Path("/elsewhere"),
     [Path("/p/runs/demo/grpo/runs/demo/sft/merged"), Path("/p/runs/demo/runs/demo/sft/merged")]),
    # the record's relative path comes first: it survives moving the whole tree
    ("runs/demo/sft/merged", {"kind": "local", "relative_to_adapter": "../../sft/merged", "absolute": "/old/x"},
     Path("/elsewhere"), [Path("/p/runs/demo/sft/merged")]),
    # an absolute name is tried as written, before the record's absolute path
    ("/models/base", {"kind": "local", "relative_to_adapter": "../m", "absolute": "/old/base"}, Path("/c"),
     [Path("/p/runs/demo/grpo/m"), Path("/models/base"), Path("/old/base")]),
    # a hub record adds nothing; ~ is expanded
    ("org/name", {"kind": "hub"}, Path("/c"), [Path("/p/runs/demo/grpo/org/name")]),
]


@pytest.mark.parametrize("name, record, cwd, expected_prefix", CANDIDATE_CASES)
def test_base_candidates_order(name, record, cwd, expected_prefix):
    found = base_candidates(A, name, record, cwd)
    assert found[: len(expected_prefix)] == expected_prefix
    assert len(found) == len(set(found))
    if not name.startswith("/"):
        # the working directory is tried after every folder above the adapter
        assert found.index(cwd / name) > max(found.index(folder / name) for folder in A.parents)


def test_relative_base_resolves_from_another_working_directory(tmp_path, monkeypatch):
    # The case: an adapter trained from the project root on `runs/demo/sft/merged`,
    # read from somewhere else (no record: saved before it existed).
    root = tmp_path / "project"
    base = make_model(root / "runs/demo/sft/merged")
    adapter = make_adapter(root / "runs/demo/grpo/adapter", "runs/demo/sft/merged")
    monkeypatch.chdir(tmp_path)
    assert resolve_adapter_base(adapter) == str(base)
    assert adapter_base(str(adapter)) == str(base)  # core.adapters.adapter_base goes through it
    # ... and after the whole project moved
    moved = tmp_path / "moved-project"
    shutil.move(root, moved)
    assert resolve_adapter_base(moved / "runs/demo/grpo/adapter") == str(moved / "runs/demo/sft/merged")


def test_the_adapters_own_tree_wins_over_the_working_directory(tmp_path, monkeypatch):
    # Two checkouts with a model of the same relative name: the adapter's own one is its base.
    mine = make_model(tmp_path / "a/runs/m")
    make_model(tmp_path / "b/runs/m")
    adapter = make_adapter(tmp_path / "a/runs/run/adapter", "runs/m")
    monkeypatch.chdir(tmp_path / "b")
    assert resolve_adapter_base(adapter) == str(mine)


def test_record_survives_moving_a_run_outside_the_project(tmp_path, monkeypatch):
    # Trained from /work with --output_dir elsewhere: only the record (or cwd) can find the base.
    work = tmp_path / "work"
    base = make_model(work / "models/base")
    adapter = make_adapter(tmp_path / "out/run/adapter", "models/base")
    monkeypatch.chdir(work)
    record = record_adapter_base(adapter, requested="models/base")
    assert record["kind"] == "local" and record["requested"] == "models/base"
    assert record["relative_to_adapter"] == "../../../work/models/base"
    assert json.loads((adapter / BASE_RECORD).read_text()) == record
    monkeypatch.chdir(tmp_path)
    assert resolve_adapter_base(adapter) == str(base)
    # The run folder alone moved: the recorded absolute path still finds the base.
    shutil.move(tmp_path / "out", tmp_path / "archive")
    assert resolve_adapter_base(tmp_path / "archive/run/adapter") == str(base)


@pytest.mark.parametrize("name, record_kind, expect_error", [
    ("runs/demo/sft/merged", None, True),   # two slashes: can only be a path
    ("./merged", None, True),
    ("/gone/model", None, True),
    ("merged", "local", True),              # the record knows it was a local directory
    ("org/name", None, False),              # looks like a hub id: handed to transformers
    ("org/name", "hub", False),
])
def test_missing_base(tmp_path, monkeypatch, name, record_kind, expect_error):
    adapter = make_adapter(tmp_path / "run/adapter", name)
    if record_kind:
        (adapter / BASE_RECORD).write_text(json.dumps(
            {"kind": record_kind, "relative_to_adapter": "../../gone", "absolute": "/nowhere/gone"}))
    monkeypatch.chdir(tmp_path)
    if expect_error:
        with pytest.raises(UserError, match="which is gone .*looked in:"):
            resolve_adapter_base(adapter)
    else:
        assert resolve_adapter_base(adapter) == name


def test_a_directory_that_is_not_a_model_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "run/runs/m").mkdir(parents=True)  # nearer, but empty
    base = make_model(tmp_path / "runs/m")
    adapter = make_adapter(tmp_path / "run/adapter", "runs/m")
    monkeypatch.chdir("/")
    assert resolve_adapter_base(adapter) == str(base)


def test_hub_base_is_recorded_as_hub(tmp_path, monkeypatch):
    adapter = make_adapter(tmp_path / "adapter", "unsloth/Qwen2.5-3B-Instruct")
    monkeypatch.chdir(tmp_path)
    assert record_adapter_base(adapter, requested="unsloth/Qwen2.5-3B-Instruct")["kind"] == "hub"
    assert resolve_adapter_base(adapter) == "unsloth/Qwen2.5-3B-Instruct"


def test_not_an_adapter(tmp_path):
    assert adapter_base(str(tmp_path)) is None
    with pytest.raises(UserError, match="not a LoRA adapter"):
        resolve_adapter_base(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        resolve_adapter_base(tmp_path)
