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

Sources: the hub id (files vi_train.json / vi_test.json, splits ``train`` / ``test``), another hub
id, or a local JSON Lines / JSON / CSV / TSV / Parquet file or save_to_disk directory (see
`data.common`). Besides the three fields, rows may come in the layouts users already have (see
`to_problem`): GSM8K's own (``answer`` holding the reasoning and a final ``#### N`` line), TRL's
prompt/completion, or chat ``messages``; ``columns`` maps other column names (``cau_hoi`` ->
question). Bad rows (a missing or empty field, an answer that is not a number, a line that is not
JSON) are reported with their line and skipped or, with ``on_bad_rows="fail"``, stop the run.

Command line (`make data`): prepare one split and cache it as JSON Lines, e.g. on a machine with
internet before copying to one without. The file keeps the three raw fields (canonical answer),
so it is itself a valid source::

    python -m data.vi_gsm8k --source hllj/vi_gsm8k --split test --out runs/data/vi_gsm8k-test.jsonl
    python -m data.vi_gsm8k --source my.csv --columns question=cau_hoi,explanation=loi_giai,answer=dap_an \
        --out runs/data/my.jsonl --bad_rows_out runs/data/my-bad-rows.jsonl
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from typing import Any

import datasets

from core.cli import ArgumentParser
from core.files import write_jsonl_atomic
from data.common import (
    DataError,
    Row,
    apply_columns,
    check_bad_rows_out,
    columns_present,
    convert_rows,
    is_local,
    parse_hub_id,
    read_rows,
    source_label,
)
from rewards.math import ANSWER_FORMAT_HINT, ANSWER_PREFIX, normalize_answer

DEFAULT_SOURCE = "hllj/vi_gsm8k"
HUB_DATA_FILES = {"train": "vi_train.json", "test": "vi_test.json"}
FIELDS = ("question", "explanation", "answer")
# What `columns` may name: the three fields, and those of the other layouts `to_problem` accepts.
COLUMN_FIELDS = ("question", "explanation", "answer", "prompt", "completion", "messages")

SYSTEM_PROMPT = "Bạn là một trợ lý giỏi toán. Hãy giải bài toán của người dùng. " + ANSWER_FORMAT_HINT

# GSM8K's calculator annotations ("48/2 = <<48/2=24>>24") survive in some translations; they are
# not reasoning a model should imitate.
_CALCULATOR_RE = re.compile(r"<<[^<>\n]*>>")
# An explanation that already ends with its own answer line ("#### 17" or "### 17").
_TRAILING_ANSWER_RE = re.compile(r"\n?[ \t]*#{3,4}[^\n]*\s*$")
# The final-answer line of GSM8K's own format ("#### 72"), or of a completion in the SFT format.
_ANSWER_LINE_RE = re.compile(r"^[ \t]*#{3,4}(?!#)[ \t]*(\S[^\n]*?)[ \t]*$", re.MULTILINE)


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


def _text_field(row: dict[str, Any], name: str) -> tuple[str | None, str | None]:
    """(text, None) for a usable field, else (None, why not)."""
    value = row.get(name)
    if value is None:
        return None, f"missing field {name!r}"
    text = _as_text(value)
    if text is None:
        return None, f"field {name!r} is a {type(value).__name__}, not text"
    if not text:
        return None, f"empty field {name!r}"
    return text, None


def split_answer_line(text: str) -> tuple[str, str] | None:
    """GSM8K's own answer field: "reasoning...\n#### 72" -> ("reasoning...", "72"); None without one."""
    matches = list(_ANSWER_LINE_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return text[: last.start()].rstrip(), last.group(1).strip()


def _chat_problem(value: Any, what: str) -> str | None:
    """Why `value` is not a list of text chat messages, or None."""
    if not isinstance(value, list) or not value:
        return f"{what} is not a non-empty list of chat messages"
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            return f"{what} has a message without text 'role' and 'content'"
    return None


def _completion_text(value: Any) -> tuple[str | None, str | None]:
    """A completion (text, or assistant messages) -> (text, None) or (None, why not)."""
    if isinstance(value, str):
        return (value.strip(), None) if value.strip() else (None, "empty field 'completion'")
    if value is None:
        return None, "missing field 'completion'"
    problem = _chat_problem(value, "'completion'")
    if problem:
        return None, problem
    if any(m["role"] != "assistant" for m in value):
        return None, "'completion' must hold only assistant messages"
    text = "\n".join(m["content"] for m in value).strip()
    return (text, None) if text else (None, "empty field 'completion'")


def to_problem(row: dict[str, Any]) -> dict[str, Any] | str:
    """One raw row in any accepted layout -> ``{question, explanation, answer, messages}``, or why not.

    Layouts (after the column mapping), tried in this order:
    - ``messages``: a chat whose last message is the assistant's worked answer, ending in a
      ``#### <number>`` line; the messages before it are the prompt (ending with the user's);
    - ``prompt`` + ``completion``: text or chat messages; the completion ends in ``#### <number>``
      (or an ``answer`` column gives the number);
    - ``question`` + ``explanation`` + ``answer`` (a number): the hub dataset's own;
    - ``question`` + ``answer`` where the answer is the reasoning and a final ``#### <number>`` line
      (GSM8K's own format).
    ``messages`` in the result is the chat prompt when the row gave one, else None (the loader then
    builds it from the question and the system prompt). ``answer`` is canonical ("1250000").
    """
    prompt_messages = None
    if row.get("messages") is not None or row.get("prompt") is not None:
        if row.get("messages") is not None:
            messages = row["messages"]
            problem = _chat_problem(messages, "'messages'")
            if problem:
                return problem
            if messages[-1]["role"] != "assistant":
                return "'messages' must end with the assistant's answer"
            prompt, completion = messages[:-1], [messages[-1]]
        else:
            prompt, completion = row["prompt"], row.get("completion")
            if completion is None and row.get("explanation") is not None:
                completion = row["explanation"]
        if isinstance(prompt, str):
            question = prompt.strip()
            if not question:
                return "empty prompt"
        else:
            problem = _chat_problem(prompt, "the prompt")
            if problem:
                return problem
            if prompt[-1]["role"] != "user":
                return "the prompt must end with a user message"
            prompt_messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
            question = prompt[-1]["content"].strip()
            if not question:
                return "empty user message in the prompt"
        explanation, problem = _completion_text(completion)
        if problem:
            return problem
        split = split_answer_line(explanation)
        if split is not None:
            explanation, raw_answer = split
        if row.get("answer") is not None:
            raw_answer = _as_text(row["answer"])
        elif split is None:
            return "completion has no final '#### <number>' line (and there is no answer column)"
        if not explanation:
            return "completion holds only the answer line, no reasoning"
    else:
        question, problem = _text_field(row, "question")
        if problem:
            return problem
        raw_answer, problem = _text_field(row, "answer")
        if problem:
            return problem
        split = split_answer_line(raw_answer)
        if split is not None:
            reasoning, raw_answer = split
        explanation = _as_text(row.get("explanation"))
        if not explanation:
            if split is None or not reasoning:
                _, problem = _text_field(row, "explanation")
                return problem + " (or an answer with the reasoning and a final '#### <number>' line, GSM8K's own format)"
            explanation = reasoning
    answer = normalize_answer(raw_answer or "")
    if answer is None:
        return f"answer {str(raw_answer)[:40]!r} is not a number"
    return {"question": question, "explanation": explanation, "answer": answer, "messages": prompt_messages}


def check_layout(present: set[str], source: str) -> None:
    """Refuse data whose columns fit no accepted layout, naming what they do hold and the fix."""
    if "messages" in present or "prompt" in present or {"question", "answer"} <= present:
        return
    raise DataError(
        f"{source} has the column(s) {', '.join(sorted(present))}; math rows need question + explanation + answer, "
        "question + answer (GSM8K's '#### <number>' format), prompt + completion, or messages. Name yours with "
        "--columns (YAML: columns:), e.g. question=cau_hoi,explanation=loi_giai,answer=dap_an"
    )


def read_raw_rows(source: str = DEFAULT_SOURCE, split: str = "train") -> list[Row]:
    """The unprocessed records of one split, each with its line or index (see `data.common.read_rows`)."""
    data_files = None
    if not is_local(source) and parse_hub_id(source)[0] == DEFAULT_SOURCE:  # a local path is never parsed as an id
        if split not in HUB_DATA_FILES:
            raise DataError(f"{source} has splits {sorted(HUB_DATA_FILES)}, not {split!r}")
        data_files = {split: HUB_DATA_FILES[split]}
    return read_rows(source, split, data_files=data_files)


def load_problems(
    source: str = DEFAULT_SOURCE,
    split: str = "train",
    on_bad_rows: str = "skip",
    columns: dict[str, str] | str | None = None,
    bad_rows_out: str | None = None,
) -> tuple[list[tuple[Row, dict[str, Any]]], list[dict[str, Any]]]:
    """Read, map, validate: (row, problem) pairs of the usable rows, and the bad rows' records
    (see `data.common.convert_rows`)."""
    check_bad_rows_out(bad_rows_out)
    label = source_label(source, split)
    rows = apply_columns(read_raw_rows(source, split), columns, COLUMN_FIELDS, label, "math rows")
    present = columns_present(rows)
    if present:
        check_layout(present, label)
    return convert_rows(rows, to_problem, label, on_bad_rows, "rows", bad_rows_out)


def load_vi_gsm8k(
    source: str = DEFAULT_SOURCE,
    split: str = "train",
    on_bad_rows: str = "skip",
    limit: int | None = None,
    seed: int = 0,
    system_prompt: str | None = SYSTEM_PROMPT,
    columns: dict[str, str] | str | None = None,
    bad_rows_out: str | None = None,
) -> datasets.Dataset:
    """Load one split as a Dataset with columns prompt, completion, answer, question, explanation.

    Args:
        source: hub id (default `hllj/vi_gsm8k`; ``owner/name[:config][@revision]``), a local
            .jsonl/.json/.csv/.tsv/.parquet file or a save_to_disk directory (see `data.common`).
        split: "train" or "test" for the hub; ignored for a local file (one file is one split).
        on_bad_rows: "skip" (report each with its line and drop it) or "fail" (stop at the first).
        limit: keep a seeded random subset of this many valid rows (file order kept), like the
            published 100-problem test sample; None keeps all.
        seed: seed of that subset.
        system_prompt: system message of every prompt built from a question; None or "" for none
            (see `build_prompt`). A chat prompt given by the data gets it only if it has no system
            message of its own.
        columns: the loader's field names -> yours, e.g. ``{"question": "cau_hoi", "explanation":
            "loi_giai", "answer": "dap_an"}`` or ``"question=cau_hoi,answer=dap_an"``; fields:
            question, explanation, answer, prompt, completion, messages.
        bad_rows_out: JSON Lines file to write the rejected rows to, with their places and reasons.
    """
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of rows, got {limit}")
    good, _ = load_problems(source, split, on_bad_rows, columns, bad_rows_out)
    problems = [problem for _, problem in good]
    if limit is not None and limit < len(problems):
        keep = sorted(random.Random(seed).sample(range(len(problems)), limit))
        problems = [problems[i] for i in keep]
    return to_dataset(problems, system_prompt)


def to_dataset(problems: list[dict[str, Any]], system_prompt: str | None = SYSTEM_PROMPT) -> datasets.Dataset:
    """`to_problem` results -> the trainer's columns (prompt, completion, answer, question, explanation)."""
    records = []
    for problem in problems:
        prompt = problem["messages"]
        if prompt is None:
            prompt = build_prompt(problem["question"], system_prompt)
        elif system_prompt and not any(m["role"] == "system" for m in prompt):
            prompt = [{"role": "system", "content": system_prompt}] + prompt
        records.append(
            {
                "prompt": prompt,
                "completion": [{"role": "assistant",
                                "content": format_target(problem["explanation"], problem["answer"])}],
                "answer": problem["answer"],
                "question": problem["question"],
                "explanation": problem["explanation"],
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
    parser = ArgumentParser(description="Prepare a vi_gsm8k split and cache it as JSON Lines.")
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="hub id (owner/name[:config][@revision]), a .jsonl/.json/.csv/.tsv/.parquet file "
                             "or a save_to_disk directory")
    parser.add_argument("--split", default="train", help="train or test (hub source)")
    parser.add_argument("--out", required=True, help="output .jsonl file (never overwritten)")
    parser.add_argument("--limit", type=int, default=None, help="seeded random subset of this many rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--on_bad_rows", choices=("skip", "fail"), default="skip")
    parser.add_argument("--columns", default=None,
                        help="your column names, e.g. question=cau_hoi,explanation=loi_giai,answer=dap_an")
    parser.add_argument("--bad_rows_out", default=None, help="write the rejected rows and reasons to this .jsonl")
    args = parser.parse_args(argv)
    try:
        if Path(args.out).exists():
            raise DataError(f"{args.out} already exists; not overwriting it (delete it or choose another --out)")
        dataset = load_vi_gsm8k(args.source, args.split, args.on_bad_rows, args.limit, args.seed,
                                columns=args.columns, bad_rows_out=args.bad_rows_out)
        write_jsonl(args.out, dataset.select_columns(list(FIELDS)).to_list())
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[data] wrote {len(dataset)} {args.split} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
