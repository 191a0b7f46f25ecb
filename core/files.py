"""Atomic writes for every file the toolkit produces (predictions, metrics, reports, data splits)
and for directories it builds (tiny test models, benchmark models).

Each writes to a hidden temp file beside the target and renames it into place, so a crash or a
Ctrl-C never leaves half a file where a finished one is expected. UTF-8, with Vietnamese kept
readable (no \\u escapes). Standard library only, so light entry points (the demo driver, the
report) can use it without importing torch or datasets.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


@contextmanager
def staged_directory(out: str | Path) -> Iterator[Path]:
    """Yield an empty directory beside `out` to build in; when the block ends without an error,
    it replaces `out` (which may exist, e.g. an incomplete earlier build); on an error it is
    removed and `out` is left as it was. Concurrent builders never see half a directory."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
