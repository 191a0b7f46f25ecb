"""Token lengths of a dataset in a model's tokens, and the length budget every recipe checks.

A sequence that is longer than the model's window is not an error anywhere downstream: TRL cuts
SFT/DPO rows at `max_length` (the answer's final "#### n" line is the part that goes), and on a GPU
Unsloth's forward truncates prompt + completion at `max_seq_length` with only a warning, which
misaligns GRPO's log-probabilities. So before training each recipe measures its rows here and
stops with the numbers and the fix, or drops the rows that do not fit when the user asks for it.
Where cutting is the method's own, documented choice (DPO pairs: TRL keeps the first `max_length`
tokens), the user may ask for that instead; the budget then checks the part of each row that must
survive the cut.

    lengths = sequence_lengths(dataset, tokenizer, ["prompt"])      # chat template applied
    dataset = enforce_budget(dataset, lengths, limit=1024, reserve=768, what="GRPO prompts",
                             on_overflow="fail", fix="...")

Pure Python plus the tokenizer passed in: no torch, usable by `make data` as well as the recipes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from data.common import DataError

# What to do with rows that do not fit: stop, train without them, or let the trainer cut them (only
# where a recipe says which part of a row must survive the cut: `enforce_budget(needed=...)`).
ON_OVERFLOW = ("fail", "drop", "cut")


class LengthBudgetError(DataError):
    """Rows longer than the model's window; the message gives the numbers and the fix."""


def _as_text(value: Any, tokenizer, add_generation_prompt: bool) -> str:
    """A prompt/completion cell as the text the model sees: chat messages through the template."""
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=add_generation_prompt)
        return "".join(str(v) for v in value)
    return "" if value is None else str(value)


def sequence_lengths(dataset, tokenizer, columns: Sequence[str], batch_size: int = 512) -> list[int]:
    """Tokens per row of the named columns joined as the trainer joins them (`sequence_ids`)."""
    return [len(ids) for ids in sequence_ids(dataset, tokenizer, columns, batch_size)]


def sequence_ids(dataset, tokenizer, columns: Sequence[str], batch_size: int = 512) -> list[list[int]]:
    """Token ids per row of the named columns joined as the trainer joins them.

    A conversational `prompt` is rendered with the chat template and the generation prompt (what
    GRPO and evaluation feed the model); a conversational completion is the assistant turn the
    template renders after it. Counting the rendered text with `add_special_tokens=False` matches
    TRL, which tokenizes the templated text as is.
    """
    rows: list[list[int]] = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start:start + batch_size]
        texts = []
        for i in range(len(batch[columns[0]])):
            prompt = batch[columns[0]][i]
            text = _as_text(prompt, tokenizer, add_generation_prompt=len(columns) == 1)
            for column in columns[1:]:
                cell = batch[column][i]
                if isinstance(cell, list) and cell and isinstance(cell[0], dict) and isinstance(prompt, list):
                    # The completion as the template renders it after the prompt: full - prompt.
                    full = tokenizer.apply_chat_template(prompt + cell, tokenize=False)
                    text = full if full.startswith(text) else text + full
                else:
                    text += _as_text(cell, tokenizer, add_generation_prompt=False)
            texts.append(text)
        rows.extend(tokenizer(texts, add_special_tokens=False)["input_ids"])
    return rows


@dataclass(frozen=True)
class LengthStats:
    """Percentiles of a list of token lengths (nearest-rank), the longest and where it is."""

    n: int
    p50: int
    p90: int
    p99: int
    longest: int
    longest_row: int

    def describe(self) -> str:
        return f"median {self.p50}, p90 {self.p90}, p99 {self.p99}, longest {self.longest} (row {self.longest_row})"


def summarize(lengths: Sequence[int]) -> LengthStats:
    """Median, 90th and 99th percentile and the longest of `lengths` (non-empty)."""
    if not lengths:
        raise ValueError("no lengths to summarize")
    ordered = sorted(lengths)

    def rank(q: float) -> int:  # nearest rank: the smallest value with at least q of the values at or below it
        return ordered[max(1, math.ceil(q * len(ordered))) - 1]

    longest = max(lengths)
    return LengthStats(len(lengths), rank(0.5), rank(0.9), rank(0.99), longest, list(lengths).index(longest))


def enforce_budget(
    dataset,
    lengths: Sequence[int],
    limit: int,
    reserve: int = 0,
    what: str = "rows",
    on_overflow: str = "fail",
    fix: str = "",
    needed: Sequence[int] | None = None,
    needed_what: str = "",
):
    """Keep `dataset` only if every row's length + `reserve` fits in `limit` tokens.

    Args:
        lengths: tokens per row (`sequence_lengths`), in dataset order.
        limit: the window: `max_seq_length` (GRPO) or the effective `max_length` (SFT, DPO).
        reserve: tokens each row needs on top of its own (GRPO: `max_completion_length`).
        what: the rows' name in messages.
        on_overflow: "fail" raises LengthBudgetError with the numbers and `fix`; "drop" removes
            the rows that do not fit and prints how many; "cut" keeps them for the trainer to cut
            at `limit`, provided the part of every row that must survive the cut fits (`needed`).
        needed: tokens per row that must stay within the window when the row is cut (DPO: up to
            the first token where the two answers differ); None: rows cannot be cut.
        needed_what: what those tokens keep, for messages.
    Returns the dataset, minus the dropped rows.
    """
    if on_overflow not in ON_OVERFLOW:
        raise DataError(f"on_long_rows must be one of {ON_OVERFLOW}, got {on_overflow!r}")
    if on_overflow == "cut" and needed is None:
        raise DataError(f"--on_long_rows cut: {what} cannot be cut, this recipe needs them whole (cut is for DPO "
                        "pairs, which TRL trains on up to max_length); use fail or drop")
    if len(lengths) != len(dataset) or (needed is not None and len(needed) != len(dataset)):
        raise ValueError(f"{len(lengths)} lengths for {len(dataset)} rows")
    stats = summarize(lengths)
    room = limit - reserve
    over = [i for i, n in enumerate(lengths) if n > room]
    reserved = f" + {reserve} reserved" if reserve else ""
    budget = f"budget {limit} = up to {room}{reserved}" if reserve else f"budget {limit}"
    print(f"[length] {what}: {stats.describe()} tokens; {budget}")
    if not over:
        return dataset
    if on_overflow == "cut":
        lost = [i for i, n in enumerate(needed) if n > room]
        worst = max(range(len(needed)), key=lambda i: needed[i])
        if lost:
            raise LengthBudgetError(
                f"{len(lost)} of {len(lengths)} {what} would lose {needed_what} if cut at {room} tokens "
                f"(the latest at token {needed[worst]}, row {worst}). {fix}"
            )
        print(f"[length] {len(over)} of {len(lengths)} {what} are longer than {room} tokens and will be cut there "
              f"(--on_long_rows cut); each keeps {needed_what} (the latest at token {needed[worst]}, row {worst})")
        return dataset
    if on_overflow == "fail":
        total = f" = {stats.longest + reserve}" if reserve else ""
        hint = " Or pass --on_long_rows drop to train without them"
        if needed is not None:
            cuttable = sum(n <= room for n in needed)
            hint += (f", or --on_long_rows cut to train on their first {room} tokens ({cuttable} of {len(lengths)} "
                     f"keep {needed_what})")
        raise LengthBudgetError(
            f"{len(over)} of {len(lengths)} {what} need more than {limit} tokens (longest: {stats.longest}"
            f"{reserved}{total}, row {stats.longest_row}). {fix}{hint}."
        )
    keep = [i for i in range(len(lengths)) if lengths[i] <= room]
    if not keep:
        raise LengthBudgetError(f"every one of the {len(lengths)} {what} is longer than {room} tokens. {fix}")
    print(f"[length] dropped {len(over)} of {len(lengths)} {what} longer than {room} tokens (--on_long_rows drop)")
    return dataset.select(keep)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where `a` and `b` differ (the shorter's length when one is a prefix
    of the other); None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):  # the shorter one ends the comparison
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_lengths(dataset, tokenizer, columns: list[str], limit: int, reserve: int, what: str, on_long_rows: str,
                  fix: str):
    """The length budget (data/lengths.py) with the recipe's numbers; returns the dataset kept."""
    lengths = sequence_lengths(dataset, tokenizer, columns)
    return enforce_budget(dataset, lengths, limit=limit, reserve=reserve, what=what, on_overflow=on_long_rows, fix=fix)
