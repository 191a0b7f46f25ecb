"""Vietnamese GSM8K (`hllj/vi_gsm8k`): grade-school math word problems with worked solutions.

Raw rows have three text fields: ``question``, ``explanation`` (the reasoning) and ``answer`` (a
number). `load_vi_gsm8k` turns them into the columns the trainers expect:

- ``prompt``: chat messages (an optional system prompt asking for step-by-step reasoning and a
  final ``#### <số>`` line, then the question as the user turn);
- ``completion``: one assistant message, the explanation followed by ``#### <answer>`` - the SFT
  target, learned with completion-only loss;
- ``answer``: the gold number in canonical form ("1250000", "3.5", "-3"), read from the raw
  answer with `rewards.math.normalize_answer` - the form the correctness reward compares with;
- ``question``, ``explanation``: the raw texts, for evaluation (ROUGE/BLEU of the reasoning).

Sources: the hub id (files vi_train.json / vi_test.json, splits ``train`` / ``test``) or a local
JSON / JSONL / Parquet file with the same three fields. Bad rows (missing or empty field, an
answer that is not a number) are reported by index and skipped or, with ``on_bad_rows="fail"``,
stop the run.

Command line (`make data`): prepare one split and cache it as JSON Lines, e.g. on a machine with
internet before copying to one without. The file keeps the three raw fields (canonical answer),
so it is itself a valid source::

    python -m data.vi_gsm8k --source hllj/vi_gsm8k --split test --out runs/data/vi_gsm8k-test.jsonl
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path
from typing import Any

import datasets

from data.common import DataError, is_local, load_source, read_jsonl, validate_rows
from data.files import write_jsonl_atomic
from rewards.math import ANSWER_FORMAT_HINT, ANSWER_PREFIX, normalize_answer

DEFAULT_SOURCE = "hllj/vi_gsm8k"
HUB_DATA_FILES = {"train": "vi_train.json", "test": "vi_test.json"}
FIELDS = ("question", "explanation", "answer")

SYSTEM_PROMPT = "Bạn là một trợ lý giỏi toán. Hãy giải bài toán của người dùng. " + ANSWER_FORMAT_HINT

# GSM8K's calculator annotations ("48/2 = <<48/2=24>>24") survive in some translations; they are
# not reasoning a model should imitate.
_CALCULATOR_RE = re.compile(r"<<[^<>\n]*>>")
# An explanation that already ends with its own answer line ("#### 17" or "### 17").
_TRAILING_ANSWER_RE = re.compile(r"\n?[ \t]*#{3,4}[^\n]*\s*$")


def build_prompt(question: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """Chat messages asking the model to solve ``question``.

    ``system_prompt`` None or "" sends no system message. Note that many chat templates then
    insert their own default one (Qwen2.5: "You are Qwen, created by Alibaba Cloud...", SmolLM2:
    "You are a helpful AI assistant named SmolLM..."), and that without `SYSTEM_PROMPT` the model
    is not told about the ``#### <số>`` answer line: it has to learn the format from SFT or from
    the format rewards.
    """
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question.strip()})
    return messages


def format_target(explanation: str, answer: str) -> str:
    """The assistant's answer text: the reasoning, then a final ``#### <answer>`` line.

    Calculator annotations ``<<...>>`` and an answer line the explanation already ends with are
    removed first, so the target has exactly one ``####`` line, the last one.
    """
    reasoning = _CALCULATOR_RE.sub("", explanation)
    reasoning = _TRAILING_ANSWER_RE.sub("", reasoning).rstrip()
    return f"{reasoning}\n{ANSWER_PREFIX} {answer}"


def _as_text(value: Any) -> str | None:
    """A field as stripped text; numbers (a JSON answer 17) become text; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value.strip() if isinstance(value, str) else None


def check_row(row: dict[str, Any]) -> str | None:
    """Why a raw row is unusable, or None when it is fine."""
    if "_bad" in row:
        return "not a JSON object"
    for name in FIELDS:
        value = row.get(name)
        if value is None:
            return f"missing field {name!r}"
        text = _as_text(value)
        if text is None:
            return f"field {name!r} is a {type(value).__name__}, not text"
        if not text:
            return f"empty field {name!r}"
    if normalize_answer(_as_text(row["answer"])) is None:
        return f"answer {str(row['answer'])[:40]!r} is not a number"
    return None


def read_raw_rows(source: str = DEFAULT_SOURCE, split: str = "train") -> list[dict[str, Any]]:
    """The unprocessed rows of one split, as dicts (field values untouched)."""
    if is_local(source):
        if Path(source).suffix.lower() == ".jsonl" and Path(source).is_file():
            # Read JSON Lines ourselves: Arrow refuses a column that mixes "17" and 17.
            return read_jsonl(source)
        return load_source(source).to_list()
    data_files = None
    if source == DEFAULT_SOURCE:
        if split not in HUB_DATA_FILES:
            raise DataError(f"{source} has splits {sorted(HUB_DATA_FILES)}, not {split!r}")
        data_files = {split: HUB_DATA_FILES[split]}
    return load_source(source, split=split, data_files=data_files).to_list()


def load_vi_gsm8k(
    source: str = DEFAULT_SOURCE,
    split: str = "train",
    on_bad_rows: str = "skip",
    limit: int | None = None,
    seed: int = 0,
    system_prompt: str | None = SYSTEM_PROMPT,
) -> datasets.Dataset:
    """Load one split as a Dataset with columns prompt, completion, answer, question, explanation.

    Args:
        source: hub id (default `hllj/vi_gsm8k`) or a local .json/.jsonl/.parquet file.
        split: "train" or "test" for the hub; ignored for a local file (one file is one split).
        on_bad_rows: "skip" (report and drop) or "fail" (raise DataError naming the rows).
        limit: keep a seeded random subset of this many valid rows (file order kept), like the
            published 100-problem test sample; None keeps all.
        seed: seed of that subset.
        system_prompt: system message of every prompt; None or "" for none (see `build_prompt`).
    """
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of rows, got {limit}")
    rows = read_raw_rows(source, split)
    good, _ = validate_rows(rows, check_row, on_error=on_bad_rows, what=f"rows in {source} ({split})")
    if limit is not None and limit < len(good):
        keep = sorted(random.Random(seed).sample(range(len(good)), limit))
        good = [good[i] for i in keep]
    records = []
    for row in good:
        question, explanation = _as_text(row["question"]), _as_text(row["explanation"])
        answer = normalize_answer(_as_text(row["answer"]))
        records.append(
            {
                "prompt": build_prompt(question, system_prompt),
                "completion": [{"role": "assistant", "content": format_target(explanation, answer)}],
                "answer": answer,
                "question": question,
                "explanation": explanation,
            }
        )
    return datasets.Dataset.from_list(records)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON Lines atomically; refuses to overwrite."""
    path = Path(path)
    if path.exists():
        raise DataError(f"{path} already exists; not overwriting it (delete it or choose another --out)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(path, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare a vi_gsm8k split and cache it as JSON Lines.")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="hub id or local .json/.jsonl/.parquet file")
    parser.add_argument("--split", default="train", help="train or test (hub source)")
    parser.add_argument("--out", required=True, help="output .jsonl file (never overwritten)")
    parser.add_argument("--limit", type=int, default=None, help="seeded random subset of this many rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--on_bad_rows", choices=("skip", "fail"), default="skip")
    args = parser.parse_args(argv)
    try:
        if Path(args.out).exists():
            raise DataError(f"{args.out} already exists; not overwriting it (delete it or choose another --out)")
        dataset = load_vi_gsm8k(args.source, args.split, args.on_bad_rows, args.limit, args.seed)
        write_jsonl(args.out, dataset.select_columns(list(FIELDS)).to_list())
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[data] wrote {len(dataset)} {args.split} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
