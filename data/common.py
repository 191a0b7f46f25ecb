"""Reading a user's data, whatever its format, and the row checks every dataset module shares.

A source is one of:

- a local file: JSON Lines (``.jsonl``/``.ndjson``), JSON (``.json``: a list of objects, ``{"data":
  [...]}``, or JSON Lines under a .json name), Parquet, CSV or TSV (first line: column names);
- a directory written by `datasets`' ``save_to_disk`` (one Dataset, or a DatasetDict whose split is
  chosen by ``split``);
- a Hugging Face hub id, optionally with a configuration and a revision:
  ``owner/name``, ``owner/name:config``, ``owner/name@revision``, ``owner/name:config@revision``.

A string is a hub id only if it looks like one (`core.sources.looks_like_hub_id`): one slash, no
file extension (``.csv``, and a misspelt ``.cvs`` too), not an existing path, and no local folder
named like its owner. Anything else is a local path, read without a network call: a path that does
not exist fails at once, naming the closest existing files ("did you mean
data/fixtures/bai_toan.csv?"); the training and evaluation commands check this before they import
torch (core/boot.py).

Text files may start with a UTF-8 byte-order mark and use Windows line ends (CRLF), as files saved
by Excel or Notepad do. Every text value (and every column name) is NFC-normalised on the way in:
Vietnamese copied from some sources arrives decomposed ("ạ" as "a" + a combining dot), which looks
the same but tokenizes differently and never compares equal to the composed form.

Every record keeps where it came from, so a bad one is reported the way the user finds it: "line
12" is the 1-based line of a text file (the line a record starts on; a CSV header is line 1),
"index 3" the 0-based position in a Parquet file, a save_to_disk directory or a hub split (what
``dataset[3]`` and pandas' ``iloc[3]`` show). A record that cannot be read at all (a malformed JSON
line, a CSV line with the wrong number of fields) is a bad row like any other: skipped and reported
with ``on_bad_rows="skip"``, the first one stops the run with ``"fail"``. ``bad_rows_out`` writes
every rejected row with its place and reason to a JSON Lines file the user can fix rows from.

``columns`` maps the loader's field names to the user's: ``{"question": "cau_hoi", "answer":
"dap_an"}`` (or, on a command line, ``question=cau_hoi,answer=dap_an``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cli import UserError
from core.files import write_jsonl_atomic
from core.sources import looks_like_hub_id, missing_path_message

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                  ".csv": "csv", ".tsv": "tsv"}
ON_BAD_ROWS = ("skip", "fail")
# Bad rows printed one per line before the summary; all of them go to bad_rows_out.
SHOWN_BAD_ROWS = 20


class DataError(UserError, ValueError):
    """A user-facing data problem: the message says what is wrong and what to do."""


@dataclass
class Row:
    """One record of a source.

    Fields:
        where: "line N" (1-based line of a text file) or "index N" (0-based row of a table).
        index: 0-based position among the source's records (stable ids, seeded splits).
        data: the record's fields, text NFC-normalised; None when it could not be read.
        problem: why the record could not be read (None when it could).
        text: the raw text of an unreadable record, for bad_rows_out.
        original: the fields under the user's column names, when `apply_columns` renamed them
            (bad_rows_out shows the row as the user's file has it).
    """

    where: str
    index: int
    data: dict[str, Any] | None
    problem: str | None = None
    text: str | None = None
    original: dict[str, Any] | None = None


def nfc(value: Any) -> Any:
    """`value` with every string in it (nested lists and dicts, keys included) in Unicode NFC."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [nfc(v) for v in value]
    if isinstance(value, dict):
        return {nfc(k): nfc(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------ sources
def is_local(source: str) -> bool:
    """True when `source` is a local path (existing or not) rather than a hub id
    (`core.sources.looks_like_hub_id`)."""
    return not looks_like_hub_id(source)


def missing_path_error(source: str) -> DataError:
    """The one-line error for a local path that does not exist, with the closest existing names."""
    return DataError(missing_path_message(source))


def parse_hub_id(source: str) -> tuple[str, str | None, str | None]:
    """``owner/name[:config][@revision]`` -> (repository, config or None, revision or None)."""
    repo, _, revision = source.partition("@")
    repo, _, config = repo.partition(":")
    if not repo or (_ and not config) or ("@" in source and not revision):
        raise DataError(f"cannot read {source!r} as a hub id: write owner/name, owner/name:config, "
                        "owner/name@revision or owner/name:config@revision")
    return repo, config or None, revision or None


def is_saved_dataset(path: str | Path) -> bool:
    """True for a directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    path = Path(path)
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def has_splits(source: str) -> bool:
    """True when `source` has named splits (a hub id or a saved DatasetDict); a file is one split."""
    if not is_local(source):
        return True
    return Path(source).is_dir() and (Path(source) / "dataset_dict.json").is_file()


def source_label(source: str, split: str | None = None) -> str:
    """How messages name a source: the path as given, or the hub id with its split."""
    return source if is_local(source) or not split else f"{source} ({split})"


def read_rows(source: str, split: str = "train", data_files: dict[str, str] | None = None) -> list[Row]:
    """Every record of `source` as a `Row`, text NFC-normalised (see the module docstring).

    Args:
        source: local file, save_to_disk directory or hub id (``owner/name[:config][@revision]``).
        split: the split of a hub dataset or a saved DatasetDict; a file is one split and ignores it.
        data_files: hub data files per split, for repositories that ship raw files.

    Raises:
        DataError: the source cannot be found or read as a whole (not UTF-8, unsupported type,
            a .json document that is malformed, a CSV quote that is never closed, hub errors).
    """
    if not is_local(source):
        return _read_hub(source, split, data_files)
    path = Path(source)
    if path.is_dir():
        if not is_saved_dataset(path):
            raise DataError(f"{source} is a directory but not one written by datasets' save_to_disk "
                            "(no state.json or dataset_dict.json); give a data file or such a directory")
        return _read_saved(path, split)
    if not path.is_file():
        raise missing_path_error(source)
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unsupported data file type {path.suffix!r} for {source}: "
                        "use .jsonl, .json, .csv, .tsv or .parquet")
    if kind == "parquet":
        return _read_parquet(path)
    text = _read_text(path)
    if kind == "jsonl":
        return _jsonl_rows(text)
    if kind == "json":
        return _json_rows(text, source)
    return _delimited_rows(text, source, "\t" if kind == "tsv" else ",")


def _read_text(path: Path) -> str:
    """The file as text; a UTF-8 byte-order mark is dropped, CRLF is handled by the readers."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path} line {line} is not UTF-8 text (byte 0x{raw[err.start]:02x}): save the file "
                        "as UTF-8 (Excel: 'CSV UTF-8'; editors: 'Save with encoding')") from None


def _lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines would also split on U+2028 and friends, which may sit
    # inside a JSON string.
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _jsonl_rows(text: str, first_line: int = 1) -> list[Row]:
    rows = []
    for lineno, line in enumerate(_lines(text), start=first_line):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append(Row(where, len(rows), None, f"malformed JSON ({err.msg}, column {err.colno})", line))
            continue
        if not isinstance(value, dict):
            rows.append(Row(where, len(rows), None, f"expected a JSON object, got {type(value).__name__}", line))
            continue
        rows.append(Row(where, len(rows), nfc(value)))
    return rows


def _json_rows(text: str, source: str) -> list[Row]:
    """A .json file: a list of objects, {"data": [...]}, or JSON Lines saved under a .json name."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return []
    if text[start] == "[":
        return _json_array_rows(text, start, source)
    try:
        value, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise DataError(f"{source} line {err.lineno}: malformed JSON ({err.msg})") from None
    if text[end:].strip():  # a second value follows: JSON Lines under a .json name
        return _jsonl_rows(text)
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        return [Row(f"index {i}", i, nfc(v)) if isinstance(v, dict)
                else Row(f"index {i}", i, None, f"expected a JSON object, got {type(v).__name__}", json.dumps(v))
                for i, v in enumerate(value["data"])]
    if isinstance(value, dict):
        return [Row(f"line {text.count(chr(10), 0, start) + 1}", 0, nfc(value))]
    raise DataError(f"{source} must hold a list of objects, {{\"data\": [...]}} or JSON Lines")


def _json_array_rows(text: str, start: int, source: str) -> list[Row]:
    """Walk a top-level JSON array element by element, so each row knows its line."""
    decoder = json.JSONDecoder()
    rows: list[Row] = []
    line, counted = 1 + text.count("\n", 0, start), start

    def skip_space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip_space(start + 1)
    if i < len(text) and text[i] == "]":
        return rows
    while True:
        line += text.count("\n", counted, i)
        counted = i
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            # One JSON document: after a syntax error there is no next row to resume from.
            raise DataError(f"{source} line {err.lineno}: malformed JSON ({err.msg}); a .json file is one "
                            "document, so nothing after it can be read: fix it, or save the rows as JSON Lines "
                            "(one object per line), where a bad line is skipped on its own") from None
        where = f"line {line}"
        if isinstance(value, dict):
            rows.append(Row(where, len(rows), nfc(value)))
        else:
            rows.append(Row(where, len(rows), None, f"expected a JSON object, got {type(value).__name__}",
                            text[i:end]))
        i = skip_space(end)
        if i < len(text) and text[i] == ",":
            i = skip_space(i + 1)
            continue
        if i < len(text) and text[i] == "]":
            return rows
        line += text.count("\n", counted, i)
        raise DataError(f"{source} line {line}: malformed JSON (expected ',' or ']' after a list item)")


def _delimited_rows(text: str, source: str, delimiter: str) -> list[Row]:
    """CSV/TSV with a header line; quoted fields may hold the delimiter, quotes and line breaks."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    name = "TSV" if delimiter == "\t" else "CSV"
    header: list[str] | None = None
    rows: list[Row] = []
    lines: list[str] = []
    last_line = 0
    while True:
        first = last_line + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                raise DataError(f"{source} line {first}: a quoted field starts here and is never closed, so "
                                f"the rest of the file would be read into it; close the quote (\"\") and rerun") \
                    from None
            lines = lines or _lines(text)
            rows.append(Row(f"line {first}", len(rows), None, f"malformed {name} ({err})",
                            "\n".join(lines[first - 1:reader.line_num])))
            last_line = reader.line_num
            continue
        last_line = reader.line_num
        if not fields or fields == [""]:
            continue
        if header is None:
            header = [nfc(h.strip()) or f"column_{i + 1}" for i, h in enumerate(fields)]
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DataError(f"{source} line {first}: column name(s) {', '.join(repeated)} appear twice in the header")
            continue
        where = f"line {first}"
        if len(fields) != len(header):
            rows.append(Row(where, len(rows), None,
                            f"{len(fields)} fields where the header has {len(header)} "
                            f"(an unquoted {'tab' if delimiter == chr(9) else 'comma'} inside a value?)",
                            delimiter.join(fields)))
            continue
        rows.append(Row(where, len(rows), {h: nfc(v) for h, v in zip(header, fields, strict=True)}))
    if header is None:
        raise DataError(f"{source} is empty: a {name} file needs a header line with the column names")
    return rows


def _table_rows(records: Iterable[dict[str, Any]]) -> list[Row]:
    return [Row(f"index {i}", i, nfc(record)) for i, record in enumerate(records)]


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path} is not a readable Parquet file ({type(err).__name__}: {err})") from None
    return _table_rows(table.to_pylist())


def _read_saved(path: Path, split: str) -> list[Row]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged directory raises FileNotFoundError, ValueError, ArrowInvalid...
        raise DataError(f"could not read the save_to_disk directory {path} ({type(err).__name__}: {err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path} has splits {', '.join(loaded)}, not {split!r}; choose one of them")
        loaded = loaded[split]
    return _table_rows(loaded.to_list())


def _read_hub(source: str, split: str, data_files: dict[str, str] | None) -> list[Row]:
    import datasets

    repo, config, revision = parse_hub_id(source)
    kwargs: dict[str, Any] = {"split": split or "train"}
    if config is not None:
        kwargs["name"] = config
    if revision is not None:
        kwargs["revision"] = revision
    if data_files is not None:
        kwargs["data_files"] = data_files
    try:
        dataset = datasets.load_dataset(repo, **kwargs)
    except Exception as err:  # the hub raises many types; the user needs one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(
            f"could not load {source!r} from the Hugging Face hub ({type(err).__name__}: {first}). "
            "Offline? Give a local .jsonl/.json/.csv/.tsv/.parquet file or a save_to_disk directory instead."
        ) from None
    return _table_rows(dataset.to_list())


# ------------------------------------------------------------------------------- column mapping
def parse_columns(value: Mapping[str, str] | str | None) -> dict[str, str]:
    """A column mapping from YAML (a mapping) or a command line (``a=x,b=y`` or ``{a: x, b: y}``)."""
    if value is None:
        return {}
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            import yaml

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise DataError(f"cannot read columns {text!r}: write question=cau_hoi,answer=dap_an "
                                "or {question: cau_hoi, answer: dap_an}") from None
        else:
            pairs = [p for p in (part.strip() for part in text.split(",")) if p]
            bad = [p for p in pairs if p.count("=") != 1 or not all(s.strip() for s in p.split("="))]
            if bad:
                raise DataError(f"cannot read columns {text!r} (at {bad[0]!r}): write field=your_column "
                                "pairs separated by commas, e.g. question=cau_hoi,answer=dap_an")
            value = dict((k.strip(), v.strip()) for k, v in (p.split("=") for p in pairs))
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise DataError(f"columns must map field names to your column names, e.g. "
                        f"{{question: cau_hoi, answer: dap_an}}; got {value!r}")
    return {nfc(k): nfc(v) for k, v in value.items()}


def apply_columns(rows: list[Row], columns: Mapping[str, str] | str | None, fields: Sequence[str],
                  source: str, what: str) -> list[Row]:
    """Rename the user's columns to the loader's field names, in place.

    Args:
        columns: loader field -> the user's column (see `parse_columns`).
        fields: the field names this loader understands (the valid mapping keys).
        source, what: how messages name the data and its rows.
    Raises:
        DataError: an unknown field name (listing the valid ones), or a column the data lacks.
    """
    mapping = parse_columns(columns)
    unknown = [k for k in mapping if k not in fields]
    if unknown:
        raise DataError(f"unknown field(s) in columns: {', '.join(unknown)}; {what} use the fields "
                        f"{', '.join(fields)}")
    if not mapping:
        return rows
    present = set().union(*(r.data for r in rows if r.data is not None)) if rows else set()
    absent = [(k, v) for k, v in mapping.items() if v not in present]
    if absent and present:
        field_name, column = absent[0]
        raise DataError(f"columns maps {field_name} to {column!r}, but {source} has no column {column!r} "
                        f"(its columns: {', '.join(sorted(present))})")
    for row in rows:
        if row.data is None:
            continue
        row.original = row.data
        renamed = {k: v for k, v in row.data.items() if k not in mapping.values() and k not in mapping}
        for field_name, column in mapping.items():
            if column in row.data:
                renamed[field_name] = row.data[column]
        row.data = renamed
    return rows


def columns_present(rows: Iterable[Row]) -> set[str]:
    """The column names that hold a value in at least one readable row."""
    names: set[str] = set()
    for row in rows:
        if row.data is not None:
            names.update(k for k, v in row.data.items() if v is not None)
    return names


# ---------------------------------------------------------------------------------- bad rows
_BAD_ROWS_FILES: dict[Path, list[dict[str, Any]]] = {}


def check_bad_rows_out(path: str | None) -> None:
    """Refuse a bad_rows_out file that exists already, unless this process wrote it (several loads)."""
    if path and Path(path).exists() and Path(path).resolve() not in _BAD_ROWS_FILES:
        raise DataError(f"bad_rows_out {path} already exists; not overwriting it (delete it or name another file)")


def _save_bad_rows(path: str, records: list[dict[str, Any]]) -> None:
    """Add `records` to `path` (JSON Lines, written atomically). Several loads in one run (train and
    held-out, say) add to the same file; only the first process of a multi-process launch writes."""
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) != 0:
        return
    check_bad_rows_out(path)
    key = Path(path).resolve()
    _BAD_ROWS_FILES.setdefault(key, []).extend(records)
    key.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(key, _BAD_ROWS_FILES[key])


def convert_rows(
    rows: list[Row],
    convert: Callable[[dict[str, Any]], dict[str, Any] | str],
    source: str,
    on_bad_rows: str = "skip",
    what: str = "rows",
    bad_rows_out: str | None = None,
) -> tuple[list[tuple[Row, dict[str, Any]]], list[dict[str, Any]]]:
    """Turn readable rows into the loader's records; report every bad row with its place and reason.

    Args:
        rows: from `read_rows` (after `apply_columns`).
        convert: a row's fields -> the converted record, or a string saying why the row is unusable.
        source: how messages name the data (`source_label`).
        on_bad_rows: "skip" prints each bad row (the first `SHOWN_BAD_ROWS`) and a summary line and
            drops them; "fail" raises DataError at the first, with the same message.
        what: the rows' name in messages ("rows", "preference pairs").
        bad_rows_out: JSON Lines file that receives every rejected row with its place and reason.
    Returns:
        (row, record) for every good row, in source order, and the bad rows as bad_rows_out records
        (``source``, ``where``, ``reason``, and ``row`` or, for an unreadable record, ``text``).
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise DataError(f"on_bad_rows must be 'skip' or 'fail', got {on_bad_rows!r}")
    good: list[tuple[Row, dict[str, Any]]] = []
    bad: list[dict[str, Any]] = []
    for row in rows:
        result = row.problem if row.data is None else convert(row.data)
        if not isinstance(result, str):
            good.append((row, result))
            continue
        record = {"source": source, "where": row.where, "reason": result}
        record.update({"row": row.original or row.data} if row.data is not None else {"text": row.text})
        bad.append(record)
        if on_bad_rows == "fail":
            if bad_rows_out:
                _save_bad_rows(bad_rows_out, bad)
            raise DataError(f"{source} {row.where}: {result}. Fix it, or pass --on_bad_rows skip to leave "
                            "such rows out")
        if len(bad) <= SHOWN_BAD_ROWS:
            print(f"[data] {source} {row.where}: {result} (skipped)")
    if bad:
        shown = f"the first {SHOWN_BAD_ROWS} shown above" if len(bad) > SHOWN_BAD_ROWS else "each shown above"
        if bad_rows_out:
            _save_bad_rows(bad_rows_out, bad)
            saved = f"; all of them, with their reasons, are in {bad_rows_out}"
        else:
            saved = "; --bad_rows_out FILE saves them with their reasons"
        print(f"[data] skipped {len(bad)} of {len(rows)} {what} in {source} ({shown}){saved}")
    if not good:
        raise DataError(f"no usable {what} in {source}" + (" (every row was bad; see above)" if rows else " (it is empty)"))
    return good, bad


# ------------------------------------------------------------------------------------ splits
def seeded_split(rows: list[Any], test_size: float | int, seed: int, what: str = "rows",
                 source: str = "the data") -> tuple[list[Any], list[Any]]:
    """Deterministic train/held-out split of a list (a fraction or a count for the held-out part).

    A count larger than the data allows, or data too small to split, is refused with the fix; a
    held-out part larger than the training part is allowed but said out loud.
    """
    n = len(rows)
    if n < 2:
        raise DataError(f"{source}: {n} usable {what} cannot be split into train and held-out parts; "
                        f"add {what}, or turn the held-out split off (test_size: 0 where the recipe has it)")
    if isinstance(test_size, float):
        n_test = int(round(test_size * n))
    else:
        n_test = int(test_size)
        if n_test >= n:
            raise DataError(f"{source}: a held-out split of {n_test} {what} needs more than the {n} there are; "
                            f"give a smaller count (at most {n - 1}), a fraction such as 0.2, or 0 for no held-out split")
    n_test = max(1, min(n_test, n - 1))
    if n_test > n - n_test:
        print(f"[data] warning: {source}: the held-out split takes {n_test} of {n} {what}, leaving {n - n_test} "
              f"to train on; lower the held-out size or add {what}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return [rows[i] for i in train], [rows[i] for i in held]
