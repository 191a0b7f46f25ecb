"""UIT-VSFC students' feedback (`uitnlp/vietnamese_students_feedback`): sentiment data and PPO prompts.

Rows are Vietnamese sentences students wrote about courses, lecturers and facilities, labelled
0 negative / 1 neutral / 2 positive, with a topic id. The PPO recipe steers a language model to
write one sentiment, the reward model is a classifier trained on the same corpus, and the
language model is first adapted to the corpus. Three views of the same rows:

- `load_feedback(source, split)`: `Dataset(sentence, label, topic)` for the classifier;
- `load_texts(source, split)`: `Dataset(text)` for causal-LM adaptation;
- `load_prompts(source, split)`: `Dataset(prompt, sentence, label)`: the first 2-8 words of
  sentences longer than 50 characters, which the policy continues (the published setting).

A source is the hub id (splits train/validation/test), a save_to_disk DatasetDict with such splits,
or a local JSON Lines / JSON / CSV / TSV / Parquet file with the same fields (labels as ids or as
names, `columns` for other column names; see `data.common`). A local file is one split, so `train`
and `validation` are a seeded split of it (`test` is the same held-out part as `validation`, `all`
is every row): the shipped fixture `data/fixtures/students_feedback_sample.jsonl` works everywhere
that way.
"""

from __future__ import annotations

import random
import re
from typing import Any

import datasets

from data.common import (
    FIXTURES,
    DataError,
    Row,
    apply_columns,
    check_bad_rows_out,
    columns_present,
    convert_rows,
    has_splits,
    is_local,
    read_rows,
    seeded_split,
    source_label,
)

HUB_ID = "uitnlp/vietnamese_students_feedback"
FIXTURE = FIXTURES / "students_feedback_sample.jsonl"
LABELS = ("negative", "neutral", "positive")
TOPICS = ("lecturer", "training_program", "facility", "others")
# Names accepted for label and topic ids (lower case, "_" read as a space), English and Vietnamese.
LABEL_NAMES = {"negative": 0, "neutral": 1, "positive": 2, "tiêu cực": 0, "trung tính": 1, "trung lập": 1,
               "tích cực": 2}
TOPIC_NAMES = {"lecturer": 0, "training program": 1, "facility": 2, "others": 3, "giảng viên": 0,
               "chương trình đào tạo": 1, "cơ sở vật chất": 2, "khác": 3}
# What `columns` may name.
COLUMN_FIELDS = ("sentence", "label", "sentiment", "topic")
SPLITS = ("train", "validation", "test", "all")

# The corpus writes "dễ hiểu , nhiệt tình ." (tokenised text); the published cleaning removes the
# space before punctuation so the language model learns ordinary Vietnamese punctuation.
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:…%)\]}])")
_SPACES = re.compile(r"\s+")


def clean_sentence(text: str) -> str:
    """Remove spaces before punctuation and collapse runs of whitespace."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", text)).strip()


def _as_id(value: Any, names: dict[str, int], count: int) -> int | None:
    """A label or topic given as an id (2, "2") or a name ("positive", "tích cực") -> its id, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = " ".join(value.strip().lower().split())
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            return names.get(text.replace("_", " "))
    return value if isinstance(value, int) and 0 <= value < count else None


def to_feedback(row: dict[str, Any]) -> dict[str, Any] | str:
    """One raw row -> ``{sentence, label, topic}`` (ids; topic -1 when absent), or why it is unusable."""
    sentence = row.get("sentence")
    if not isinstance(sentence, str) or not sentence.strip():
        return "sentence is missing or empty"
    # A file that mixes rows with `sentiment` and rows with `label` loads with None in the other.
    raw_label = row["sentiment"] if row.get("sentiment") is not None else row.get("label")
    label = _as_id(raw_label, LABEL_NAMES, len(LABELS))
    if label is None:
        return (f"sentiment must be 0, 1 or 2 or a label name ({', '.join(LABELS)}; tiêu cực, trung tính, "
                f"tích cực), got {raw_label!r}")
    raw_topic = row.get("topic")
    topic = -1 if raw_topic is None or raw_topic == "" else _as_id(raw_topic, TOPIC_NAMES, len(TOPICS))
    if topic is None:
        return f"topic must be 0-{len(TOPICS) - 1} or a topic name ({', '.join(TOPICS)}), got {raw_topic!r}"
    return {"sentence": sentence, "label": label, "topic": topic}


def check_layout(present: set[str], source: str) -> None:
    """Refuse data without a sentence and a label column, naming the columns it has and the fix."""
    if "sentence" in present and present & {"label", "sentiment"}:
        return
    raise DataError(
        f"{source} has the column(s) {', '.join(sorted(present))}; labelled feedback needs sentence and label "
        "(or sentiment). Name yours with --columns (YAML: columns:), e.g. sentence=cau,label=nhan"
    )


def _saved_splits(source: str) -> list[str]:
    import json
    from pathlib import Path

    return list(json.loads((Path(source) / "dataset_dict.json").read_text(encoding="utf-8"))["splits"])


def _raw_rows(source: str, split: str, validation_size: float, seed: int) -> list[Row]:
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not has_splits(source):
        rows = read_rows(source)
        if split == "all":
            return rows
        train, held = seeded_split(rows, validation_size, seed, source=source)
        return train if split == "train" else held
    if split != "all":
        return read_rows(source, split)
    names = _saved_splits(source) if is_local(source) else ["train", "validation", "test"]
    rows = []
    for name in names:
        for row in read_rows(source, name):
            row.where, row.index = f"{name} {row.where}", len(rows)
            rows.append(row)
    return rows


def load_feedback(
    source: str = HUB_ID,
    split: str = "train",
    on_bad_rows: str = "skip",
    clean: bool = True,
    validation_size: float = 0.2,
    seed: int = 42,
    columns: dict[str, str] | str | None = None,
    bad_rows_out: str | None = None,
) -> datasets.Dataset:
    """Labelled sentences: `Dataset(sentence: str, label: int 0/1/2, topic: int)`.

    Args:
        source: hub id (``owner/name[:config][@revision]``), or a local .jsonl/.json/.csv/.tsv/
            .parquet file or save_to_disk directory with `sentence`, `sentiment` (or `label`; ids
            0/1/2 or names such as "positive" / "tích cực") and optionally `topic`.
        split: `train`, `validation`, `test` or `all`. A single local file is split with `seed`.
        on_bad_rows: `skip` (report each with its line and drop it) or `fail` (stop at the first).
        clean: remove the spaces before punctuation (see `clean_sentence`).
        validation_size: held-out fraction when the source is a single local file.
        seed: seed of that split.
        columns: the loader's field names -> yours (fields: sentence, label, sentiment, topic).
        bad_rows_out: JSON Lines file to write the rejected rows to, with their places and reasons.
    """
    good, _ = load_feedback_rows(source, split, on_bad_rows, clean, validation_size, seed, columns, bad_rows_out)
    records = [record for _, record in good]
    return datasets.Dataset.from_dict({name: [r[name] for r in records] for name in ("sentence", "label", "topic")})


def load_feedback_rows(
    source: str = HUB_ID,
    split: str = "train",
    on_bad_rows: str = "skip",
    clean: bool = True,
    validation_size: float = 0.2,
    seed: int = 42,
    columns: dict[str, str] | str | None = None,
    bad_rows_out: str | None = None,
) -> tuple[list[tuple[Row, dict[str, Any]]], list[dict[str, Any]]]:
    """`load_feedback`'s rows before they become a Dataset: (row, record) pairs and the bad rows' records."""
    check_bad_rows_out(bad_rows_out)
    label = source_label(source, split)
    rows = apply_columns(_raw_rows(source, split, validation_size, seed), columns, COLUMN_FIELDS, label,
                         "feedback rows")
    present = columns_present(rows)
    if present:
        check_layout(present, label)
    good, bad = convert_rows(rows, to_feedback, label, on_bad_rows, f"feedback rows ({split})", bad_rows_out)
    for _, record in good:
        record["sentence"] = clean_sentence(record["sentence"]) if clean else record["sentence"].strip()
    return good, bad


def load_texts(source: str = HUB_ID, split: str = "train", on_bad_rows: str = "skip", **kwargs) -> datasets.Dataset:
    """Cleaned sentences as `Dataset(text)`, the plain language-modeling format of TRL's SFTTrainer."""
    rows = load_feedback(source, split, on_bad_rows, **kwargs)
    return datasets.Dataset.from_dict({"text": rows["sentence"]})


def make_prompt(sentence: str, rng: random.Random, min_words: int = 2, max_words: int = 8) -> str:
    """The first k words of `sentence`, k drawn from [min_words, max_words] and leaving at least one word."""
    words = sentence.split()
    k = rng.randint(min_words, max_words)
    return " ".join(words[: max(1, min(k, len(words) - 1))])


def load_prompts(
    source: str = HUB_ID,
    split: str = "train",
    on_bad_rows: str = "skip",
    min_chars: int = 50,
    min_words: int = 2,
    max_words: int = 8,
    limit: int | None = None,
    seed: int = 42,
    validation_size: float = 0.2,
    columns: dict[str, str] | str | None = None,
    bad_rows_out: str | None = None,
) -> datasets.Dataset:
    """PPO prompts: `Dataset(prompt, sentence, label)` from sentences longer than `min_chars`.

    Each prompt is the first 2-8 words (seeded per row) of a cleaned sentence; `sentence` and
    `label` are kept for analysis. `limit` keeps the first `limit` prompts. `columns` and
    `bad_rows_out` are `load_feedback`'s.
    """
    if not 1 <= min_words <= max_words:
        raise DataError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    rows = load_feedback(source, split, on_bad_rows, validation_size=validation_size, seed=seed, columns=columns,
                         bad_rows_out=bad_rows_out)
    rng = random.Random(seed)
    out = {"prompt": [], "sentence": [], "label": []}
    for sentence, label in zip(rows["sentence"], rows["label"], strict=True):
        if len(sentence) <= min_chars:
            continue
        out["prompt"].append(make_prompt(sentence, rng, min_words, max_words))
        out["sentence"].append(sentence)
        out["label"].append(label)
    if not out["prompt"]:
        raise DataError(f"no sentence in {source} ({split}) is longer than {min_chars} characters; lower min_chars")
    dataset = datasets.Dataset.from_dict(out)
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset
