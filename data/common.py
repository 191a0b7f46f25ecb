"""Shared loading and validation for every dataset module in `data/`.

A source is either a Hugging Face hub id (``hllj/vi_gsm8k``) or a local JSON / JSONL / Parquet
file. Each dataset module turns the raw rows into the columns a TRL trainer expects and reports
bad rows by index, letting the user choose to skip them or stop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """A user-facing data problem: the message says what is wrong and what to do."""


def is_local(source: str) -> bool:
    """True when `source` names a local file (or looks like one) rather than a hub id."""
    return os.path.exists(source) or Path(source).suffix.lower() in LOCAL_SUFFIXES


def load_source(
    source: str,
    split: str | None = None,
    data_files: dict[str, str] | None = None,
    name: str | None = None,
) -> datasets.Dataset:
    """Load rows from a local JSON/JSONL/Parquet file or from the hub.

    Args:
        source: local file path or hub dataset id.
        split: hub split name (ignored for a local file, which is one split).
        data_files: hub data files per split, for repositories that ship raw files.
        name: hub dataset configuration name.
    """
    if is_local(source):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"data file not found: {source} (give an existing .json/.jsonl/.parquet file or a hub id)")
        builder = LOCAL_SUFFIXES.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"unsupported data file type {path.suffix!r} for {source}: use .json, .jsonl or .parquet")
        if builder == "json" and path.suffix.lower() == ".json":
            return rows_to_dataset(read_json_array(path))
        if builder == "json":
            return rows_to_dataset(read_jsonl(path))
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    try:
        if data_files is not None:
            return datasets.load_dataset(source, name=name, data_files=data_files, split=split or "train")
        return datasets.load_dataset(source, name=name, split=split or "train")
    except Exception as err:  # the hub raises many types; the user needs one line
        raise DataError(
            f"could not load {source!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline? Pass a local .json/.jsonl/.parquet file instead."
        ) from None


def rows_to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """A Dataset with the union of every row's keys (missing values None).

    `Dataset.from_list` takes the columns from the first row only, which would silently drop a
    field that row lacks - and with it the chance to report the other rows' problems.
    """
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return datasets.Dataset.from_list([{c: row.get(c) for c in columns} for row in rows])


def read_json_array(path: str | Path) -> list[dict[str, Any]]:
    """Read a .json file holding a list of objects (or {"data": [...]}).

    `datasets` reads these too, but reading them here gives a clear error on malformed JSON
    instead of an Arrow traceback. A list item that is not an object becomes `{"_bad": item}`,
    so validation reports it by row index.
    """
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if isinstance(rows, dict) and "data" in rows:
        rows = rows["data"]
    if not isinstance(rows, list):
        raise DataError(f"{path} must hold a list of objects (or JSON Lines)")
    return [r if isinstance(r, dict) else {"_bad": r} for r in rows]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file; a malformed line raises DataError naming its line number."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
    return rows


def validate_rows(
    rows: Iterable[dict[str, Any]],
    check: Callable[[dict[str, Any]], str | None],
    on_error: str = "skip",
    what: str = "rows",
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Split rows into good ones and (index, reason) problems.

    `check(row)` returns None for a good row or a short reason. With ``on_error="fail"`` the first
    problems raise DataError listing up to five of them; with ``"skip"`` bad rows are dropped and
    a one-line summary is printed.
    """
    if on_error not in ("skip", "fail"):
        raise DataError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    good, bad = [], []
    for index, row in enumerate(rows):
        reason = check(row)
        if reason is None:
            good.append(row)
        else:
            bad.append((index, reason))
    if bad:
        shown = "; ".join(f"row {i}: {r}" for i, r in bad[:5])
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        if on_error == "fail":
            raise DataError(f"{len(bad)} bad {what}: {shown}{more}. Fix them or pass --on_bad_rows skip.")
        print(f"[data] skipped {len(bad)} bad {what}: {shown}{more}")
    if not good:
        raise DataError(f"no usable {what} left after validation")
    return good, bad


def require_columns(dataset: datasets.Dataset, columns: Iterable[str], source: str) -> None:
    """Fail with one line when `dataset` lacks any of `columns`."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{source} lacks column(s) {missing}; it has {dataset.column_names}. "
            "Rename the fields or point to a file with that schema."
        )


def seeded_split(rows: list[Any], test_size: float | int, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic train/held-out split of a list (fraction or count for the held-out part)."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = int(round(test_size * len(rows))) if isinstance(test_size, float) else int(test_size)
    n_test = max(1, min(n_test, len(rows) - 1)) if len(rows) > 1 else 0
    held = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return [rows[i] for i in train], [rows[i] for i in held]
