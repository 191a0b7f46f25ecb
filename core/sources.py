"""Where a data source is: a hub id only if it looks like one, else a local path, checked at once.

A typo in a file name used to go to the Hugging Face hub: `data/fixtures/bai_toan.cvs` came back as
"could not load ... from the hub ... Offline?", and `mydata/bai_toan` spent 30 s on network
retries. Here a string is a hub id only when it can be nothing else (`looks_like_hub_id`); every
other string is a local path, and a missing one is reported with the closest existing names, the
way a misspelt YAML key names the closest key. `check_data_arguments` runs this check in
core/boot.py, before torch and Unsloth are imported, so such a typo costs well under a second.

Standard library only: core/boot.py imports it before anything heavy.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

# owner/name[:config][@revision]: hub names hold letters, digits, "-", "_" and "."; a git revision may
# hold a slash (refs/pr/1).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?(?:@[\w./-]+)?")
# A file extension: letters, maybe one final digit (.csv, .jsonl, .bz2, and typos such as .cvs or
# .josn). In hub names a dot is followed by a digit ("Qwen2.5-3B", "NuminaMath-1.5").
_EXTENSION = re.compile(r"\.[A-Za-z]{2,8}\d?$")


def looks_like_hub_id(source: str) -> bool:
    """True when `source` can only mean a hub dataset: ``owner/name[:config][@revision]`` with no
    file extension, that is not an existing path and whose owner is not a local folder.

    Everything else is a local path, so a typo in a file name is never sent to the hub (where it
    failed after a network timeout, blaming the connection).
    """
    if os.path.exists(os.path.expanduser(source)) or not _HUB_ID.fullmatch(source):
        return False
    owner, name = source.split("@", 1)[0].split(":", 1)[0].split("/")
    # mydata/bai_toan beside a folder mydata/: a file whose extension was left out, not a hub id.
    return not _EXTENSION.search(name) and not os.path.isdir(owner)


# Folders never searched for "did you mean" (large, or not the user's data).
_SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".cache"}
_MAX_CANDIDATES = 5000  # enough for a project tree; keeps the answer well under a second


def _best_matches(word: str, candidates: list[str], n: int, cutoff: float = 0.6) -> list[str]:
    """The candidates spelled closest to `word` (difflib ratio >= cutoff), keeping only those nearly
    as close as the best one: "bai_toan.cvs" names bai_toan.csv, not every bai_toan_*.csv beside it."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates), reverse=True)
    scored = [(r, c) for r, c in scored if r >= cutoff]
    return [c for r, c in scored[:n] if r >= scored[0][0] - 0.1]


def closest_paths(source: str, n: int = 3) -> list[str]:
    """Existing paths spelled closest to the missing `source`, written the way the user wrote it.

    Searched below the deepest folder of `source` that exists: first at the depth of the missing
    part, so a typo in the file name ("bai_toan.cvs") or in a folder ("fixture/bai_toan.csv")
    finds its file; else by file name a few folders down ("data/bai_toan.csv" finds
    data/fixtures/bai_toan.csv). Hidden and tool folders (.git, .venv, ...) are skipped.
    """
    path = Path(os.path.expanduser(source))
    anchor = path.parent
    while not anchor.is_dir():  # ends at "." or "/" at the latest
        anchor = anchor.parent
    missing = path.relative_to(anchor)
    depth = len(missing.parts)
    same_depth: list[str] = []
    deeper: list[str] = []
    for root, dirs, files in os.walk(anchor):
        rel = Path(root).relative_to(anchor)
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        if len(rel.parts) + 1 == depth:
            same_depth += [str(rel / name) for name in dirs + sorted(files)]
        deeper += [str(rel / name) for name in sorted(files)]
        if len(rel.parts) + 1 >= max(depth, 3) or len(deeper) >= _MAX_CANDIDATES:
            dirs[:] = []  # deep enough: a misplaced file is seldom further down
        if len(deeper) >= _MAX_CANDIDATES:
            break
    # The name itself must be close too: two folders alike and a file unlike is no match.
    same_depth = [c for c in same_depth if difflib.SequenceMatcher(None, missing.name, Path(c).name).ratio() >= 0.6]
    close = _best_matches(str(missing), same_depth, n)
    if not close:
        names = {}
        for rel_path in deeper:
            names.setdefault(Path(rel_path).name, []).append(rel_path)
        # Names alone are short: only a near-identical one counts (bai_toan -> bai_toan.csv).
        close = [p for name in _best_matches(missing.name, list(names), n, cutoff=0.75) for p in names[name]][:n]
    prefix = source[: -len(str(missing))] if source.endswith(str(missing)) else f"{anchor}/"
    return [prefix + c for c in close]


def missing_path_message(source: str) -> str:
    """What to say about a local data path that does not exist: the closest existing names, and
    why a hub-like string was read as a path."""
    close = closest_paths(source)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    owner = source.split("/", 1)[0]
    why = (f"{owner}/ is a local folder, so this is read as a path; "
           if "/" in source and _HUB_ID.fullmatch(source) and os.path.isdir(owner) else "")
    return (f"data file not found: {source} ({hint}{why}give an existing .jsonl/.json/.csv/.tsv/.parquet "
            "file or a save_to_disk directory; a hub dataset is written owner/name)")


# The options that name data a command reads. From a YAML config only `dataset_name` counts: the
# other two may sit in a config unused (eval_every_save: false, no target_value).
DATA_OPTIONS = ("dataset_name", "eval_dataset_name", "target_dataset_name")


def data_arguments(argv: list[str], config: dict | None) -> list[str]:
    """The data sources a command line names (`--dataset_name X`, `--dataset_name=X`, the old
    `--dataset`), plus the config's `dataset_name` when the command line does not override it."""
    given: dict[str, str] = {}
    if isinstance(config, dict) and isinstance(config.get("dataset_name"), str):
        given["dataset_name"] = config["dataset_name"]
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        key = "dataset_name" if key == "dataset" else key
        if key in DATA_OPTIONS:
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            given[key] = value
    return [v for v in given.values() if v]


def check_data_arguments(argv: list[str], config: dict | None) -> None:
    """Exit with one `error:` line (code 2) when a local data path on the command line (or the
    config's dataset_name) does not exist. Nothing for --help, hub ids, or existing paths."""
    if "-h" in argv or "--help" in argv:
        return
    for source in data_arguments(argv, config):
        if not looks_like_hub_id(source) and not os.path.exists(os.path.expanduser(source)):
            print(f"error: {missing_path_message(source)}", file=sys.stderr)
            sys.exit(2)
