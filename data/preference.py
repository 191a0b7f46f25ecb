"""Preference pairs (a prompt, a chosen answer, a rejected answer) for DPO, in TRL's conversational format.

The published run uses `thainq107/Vi-Alpaca-Preference` (`id`, `question`, `chosen`, `rejected`, all
strings). Users bring their own pairs in any of three layouts, one per row:

    {"question": "...", "chosen": "...", "rejected": "..."}                    # the dataset's own
    {"prompt": "...", "chosen": "...", "rejected": "..."}                      # TRL standard
    {"prompt": [{"role": "user", "content": "..."}],                           # TRL conversational
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [...]}

and TRL's implicit-prompt layout (only `chosen`/`rejected`, two whole conversations sharing the
prompt). Any source `data.common` reads works (JSON Lines, JSON, CSV, TSV, Parquet, a save_to_disk
directory, a hub id); chat-form cells need a format with lists (JSON Lines, JSON, Parquet), and
`columns` maps other column names (``{"question": "cau_hoi", "chosen": "tot", "rejected": "kem"}``).

Every row comes out as TRL's conversational preference columns `prompt`, `chosen`, `rejected`
(lists of `{"role", "content"}` messages) plus a string `id`. A system prompt is added
to prompts given as plain text; conversational prompts are used as given.

    train, held_out = load_preference("data/fixtures/preference_sample.jsonl", test_size=0.25)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from data.common import (
    DataError,
    Row,
    apply_columns,
    check_bad_rows_out,
    columns_present,
    convert_rows,
    read_rows,
    seeded_split,
    source_label,
)

DEFAULT_SOURCE = "thainq107/Vi-Alpaca-Preference"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "preference_sample.jsonl"
# The published run's system prompt, and a Vietnamese one asking for Vietnamese answers.
SYSTEM_PROMPT = "You are a helpful assistant."
SYSTEM_PROMPT_VI = "Bạn là một trợ lý hữu ích. Hãy trả lời bằng tiếng Việt, chính xác, rõ ràng và lịch sự."
# Short names accepted wherever a system prompt is configured ("none" means no system message).
SYSTEM_PROMPTS = {"en": SYSTEM_PROMPT, "vi": SYSTEM_PROMPT_VI, "none": None}
ROLES = ("system", "user", "assistant")
# What `columns` may name.
COLUMN_FIELDS = ("question", "prompt", "chosen", "rejected", "id")


def resolve_system_prompt(value: str | None) -> str | None:
    """`en`, `vi` or `none` -> the preset; other text is the system prompt itself; empty means none."""
    if value is None or not value.strip():
        return None
    return SYSTEM_PROMPTS.get(value.strip().lower(), value)


# ------------------------------------------------------------------------------- row conversion
def _messages_problem(messages: Any, what: str) -> str | None:
    """Why `messages` is not a valid list of chat messages, or None."""
    if not isinstance(messages, list) or not messages:
        return f"{what} is an empty or non-list conversation"
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"{what} has a message without 'role' and 'content'"
        if message["role"] not in ROLES:
            return f"{what} has unknown role {message['role']!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(message["content"], str):
            return f"{what} has non-text content (only text messages are supported)"
    return None


def _as_answer(value: Any, what: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """A chosen/rejected answer (text or assistant messages) -> (messages, problem)."""
    if value is None:
        return None, f"missing '{what}'"
    if isinstance(value, str):
        if not value.strip():
            return None, f"empty '{what}'"
        return [{"role": "assistant", "content": value}], None
    problem = _messages_problem(value, f"'{what}'")
    if problem:
        return None, problem
    if any(m["role"] != "assistant" for m in value):
        return None, f"'{what}' must hold only assistant messages (the prompt goes in 'prompt')"
    if not "".join(m["content"] for m in value).strip():
        return None, f"empty '{what}'"
    return [{"role": m["role"], "content": m["content"]} for m in value], None


def _as_prompt(value: Any, system_prompt: str | None) -> tuple[list[dict[str, str]] | None, str | None]:
    """A prompt (text or messages) -> (messages, problem); text gets the system prompt."""
    if isinstance(value, str):
        if not value.strip():
            return None, "empty prompt/question"
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return system + [{"role": "user", "content": value}], None
    problem = _messages_problem(value, "'prompt'")
    if problem:
        return None, problem
    if value[-1]["role"] != "user":
        return None, "'prompt' must end with a user message"
    return [{"role": m["role"], "content": m["content"]} for m in value], None


def _split_implicit(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """TRL's implicit-prompt layout: the longest shared leading messages are the prompt."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return None, chosen, rejected
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared] or None, chosen[shared:], rejected[shared:]


def _plain(messages: list[dict[str, str]]) -> str:
    """The messages' text with whitespace collapsed, for comparing answers."""
    return " ".join(" ".join(m["content"].split()) for m in messages)


def to_conversational(row: dict[str, Any], system_prompt: str | None = SYSTEM_PROMPT) -> dict[str, Any] | str:
    """One raw row in any supported layout -> `{prompt, chosen, rejected}` messages, or a problem string."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if row.get("prompt") is not None:
        prompt = row["prompt"]
    elif row.get("question") is not None:
        prompt = row["question"]
    elif isinstance(chosen, list):
        prompt, chosen, rejected = _split_implicit(chosen, rejected)
        if prompt is None:
            return "chosen and rejected share no prompt messages (implicit-prompt layout)"
    else:
        return "missing 'question' or 'prompt'"
    prompt_msgs, problem = _as_prompt(prompt, system_prompt)
    if problem:
        return problem
    chosen_msgs, problem = _as_answer(chosen, "chosen")
    if problem:
        return problem
    rejected_msgs, problem = _as_answer(rejected, "rejected")
    if problem:
        return problem
    if _plain(chosen_msgs) == _plain(rejected_msgs):
        return "chosen and rejected are identical (nothing to prefer)"
    return {"prompt": prompt_msgs, "chosen": chosen_msgs, "rejected": rejected_msgs}


# ------------------------------------------------------------------------------------- loading
def check_layout(present: set[str], source: str) -> None:
    """Refuse data without chosen/rejected columns, naming the columns it has and the fix."""
    if {"chosen", "rejected"} <= present:
        return
    raise DataError(
        f"{source} has the column(s) {', '.join(sorted(present))}; preference pairs need chosen and rejected "
        "(and question or prompt, unless both are whole conversations). Name yours with --columns "
        "(YAML: columns:), e.g. question=cau_hoi,chosen=tot,rejected=kem"
    )


def load_pairs(
    source: str = DEFAULT_SOURCE,
    split: str = "train",
    system_prompt: str | None = SYSTEM_PROMPT,
    on_bad_rows: str = "skip",
    columns: dict[str, str] | str | None = None,
    bad_rows_out: str | None = None,
) -> tuple[list[tuple[Row, dict[str, Any]]], list[dict[str, Any]]]:
    """Read, map, validate: (row, pair) for the usable rows (pair: id, prompt, chosen, rejected) and
    the bad rows' records. `system_prompt` takes the presets of `resolve_system_prompt`."""
    check_bad_rows_out(bad_rows_out)
    label = source_label(source, split)
    rows = apply_columns(read_rows(source, split), columns, COLUMN_FIELDS, label, "preference pairs")
    present = columns_present(rows)
    if present:
        check_layout(present, label)
    system = resolve_system_prompt(system_prompt)
    good, bad = convert_rows(rows, lambda data: to_conversational(data, system), label, on_bad_rows,
                             "preference pairs", bad_rows_out)
    out = []
    for row, pair in good:
        raw_id = row.data.get("id")
        out.append((row, {"id": str(raw_id) if raw_id is not None else f"row-{row.index}", **pair}))
    return out, bad


def load_preference(
    source: str = DEFAULT_SOURCE,
    split: str = "train",
    system_prompt: str | None = SYSTEM_PROMPT,
    on_bad_rows: str = "skip",
    test_size: float | int = 0.1,
    seed: int = 0,
    max_pairs: int | None = None,
    columns: dict[str, str] | str | None = None,
    bad_rows_out: str | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Load preference pairs -> (train, held-out) datasets with `id`, `prompt`, `chosen`, `rejected`.

    Args:
        source: hub id (``owner/name[:config][@revision]``), a local .jsonl/.json/.csv/.tsv/.parquet
            file or a save_to_disk directory (see `data.common`).
        split: hub split to read (a local file is one split).
        system_prompt: system message for prompts given as text (`en`, `vi`, `none` or the text).
        on_bad_rows: `skip` (report each with its line and drop it) or `fail` (stop at the first).
        test_size: held-out fraction (float) or count (int); 0 keeps every pair for training and
            returns None as the held-out set. A count the data cannot give is refused; a held-out
            part larger than the training part is warned about.
        seed: seed of the held-out split (the same seed always holds out the same pairs).
        max_pairs: keep only the first N valid pairs (before splitting), for quick runs.
        columns: the loader's field names -> yours (fields: question, prompt, chosen, rejected, id),
            e.g. ``{"question": "cau_hoi", "chosen": "tot", "rejected": "kem"}``.
        bad_rows_out: JSON Lines file to write the rejected rows to, with their places and reasons.
    """
    if isinstance(test_size, float) and not 0.0 <= test_size < 1.0:
        raise DataError(f"test_size must be a fraction in [0, 1) or a count of pairs, got {test_size}")
    label = source_label(source, split)
    good, _ = load_pairs(source, split, system_prompt, on_bad_rows, columns, bad_rows_out)
    pairs = [pair for _, pair in good]
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    if not test_size:
        print(f"[data] {label}: {len(pairs)} preference pairs, no held-out split")
        return datasets.Dataset.from_list(pairs), None
    train, held = seeded_split(pairs, test_size, seed, what="preference pairs", source=label)
    print(f"[data] {label}: {len(pairs)} preference pairs -> {len(train)} train / {len(held)} held-out (seed {seed})")
    return datasets.Dataset.from_list(train), datasets.Dataset.from_list(held)


def sft_on_chosen(dataset: datasets.Dataset) -> datasets.Dataset:
    """Prompt-completion rows (the chosen answers) for a supervised pass before DPO.

    TRL's SFTTrainer trains on the completion only for this layout, so the model learns to write
    the preferred answers without being trained to repeat the prompts.
    """
    return dataset.map(
        lambda row: {"prompt": row["prompt"], "completion": row["chosen"]},
        remove_columns=[c for c in dataset.column_names if c not in ("id", "prompt")],
        desc="SFT rows from chosen answers",
    )
