"""UIT-VSFC students' feedback (`uitnlp/vietnamese_students_feedback`): sentiment data and PPO prompts.

Rows are Vietnamese sentences students wrote about courses, lecturers and facilities, labelled
0 negative / 1 neutral / 2 positive, with a topic id. The PPO recipe steers a language model to
write one sentiment, the reward model is a classifier trained on the same corpus, and the
language model is first adapted to the corpus. Three views of the same rows:

- `load_feedback(source, split)`: `Dataset(sentence, label, topic)` for the classifier;
- `load_texts(source, split)`: `Dataset(text)` for causal-LM adaptation;
- `load_prompts(source, split)`: `Dataset(prompt, sentence, label)`: the first 2-8 words of
  sentences longer than 50 characters, which the policy continues (the published setting).

A source is the hub id (splits train/validation/test) or a local JSON/JSONL/Parquet file with the
same fields. A local file is one split, so `train` and `validation` are a seeded split of it
(`test` is the same held-out part as `validation`, `all` is every row): the shipped fixture
`data/fixtures/students_feedback_sample.jsonl` works everywhere that way.
"""

from __future__ import annotations

import random
import re
from typing import Any

import datasets

from data.common import FIXTURES, DataError, is_local, load_source, seeded_split, validate_rows

HUB_ID = "uitnlp/vietnamese_students_feedback"
FIXTURE = FIXTURES / "students_feedback_sample.jsonl"
LABELS = ("negative", "neutral", "positive")
SPLITS = ("train", "validation", "test", "all")

# The corpus writes "dễ hiểu , nhiệt tình ." (tokenised text); the published cleaning removes the
# space before punctuation so the language model learns ordinary Vietnamese punctuation.
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:…%)\]}])")
_SPACES = re.compile(r"\s+")


def clean_sentence(text: str) -> str:
    """Remove spaces before punctuation and collapse runs of whitespace."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", text)).strip()


def _label(row: dict[str, Any]) -> Any:
    # A file that mixes rows with `sentiment` and rows with `label` loads with None in the other.
    return row["sentiment"] if row.get("sentiment") is not None else row.get("label")


def _check(row: dict[str, Any]) -> str | None:
    sentence = row.get("sentence")
    if not isinstance(sentence, str) or not sentence.strip():
        return "sentence is missing or empty"
    label = _label(row)
    if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1, 2):
        return f"sentiment must be 0, 1 or 2, got {label!r}"
    topic = row.get("topic", -1)
    if topic is not None and (isinstance(topic, bool) or not isinstance(topic, int)):
        return f"topic must be an integer, got {topic!r}"
    return None


def _raw_rows(source: str, split: str, validation_size: float, seed: int) -> list[dict[str, Any]]:
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if is_local(source):
        rows = list(load_source(source))
        if split == "all":
            return rows
        train, held = seeded_split(rows, validation_size, seed)
        return train if split == "train" else held
    if split == "all":
        return [row for name in ("train", "validation", "test") for row in load_source(source, split=name)]
    return list(load_source(source, split=split))


def load_feedback(
    source: str = HUB_ID,
    split: str = "train",
    on_bad_rows: str = "skip",
    clean: bool = True,
    validation_size: float = 0.2,
    seed: int = 42,
) -> datasets.Dataset:
    """Labelled sentences: `Dataset(sentence: str, label: int 0/1/2, topic: int)`.

    Args:
        source: hub id or local JSON/JSONL/Parquet file with `sentence`, `sentiment` (or
            `label`) and optionally `topic`.
        split: `train`, `validation`, `test` or `all`. A local file is split with `seed`.
        on_bad_rows: `skip` (report and drop) or `fail`.
        clean: remove the spaces before punctuation (see `clean_sentence`).
        validation_size: held-out fraction when the source is a single local file.
        seed: seed of that split.
    """
    rows, _ = validate_rows(_raw_rows(source, split, validation_size, seed), _check, on_bad_rows,
                            what=f"feedback rows ({source}, {split})")
    out = {"sentence": [], "label": [], "topic": []}
    for row in rows:
        sentence = row["sentence"]
        out["sentence"].append(clean_sentence(sentence) if clean else sentence.strip())
        out["label"].append(int(_label(row)))
        topic = row.get("topic", -1)
        out["topic"].append(-1 if topic is None else int(topic))
    return datasets.Dataset.from_dict(out)


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
) -> datasets.Dataset:
    """PPO prompts: `Dataset(prompt, sentence, label)` from sentences longer than `min_chars`.

    Each prompt is the first 2-8 words (seeded per row) of a cleaned sentence; `sentence` and
    `label` are kept for analysis. `limit` keeps the first `limit` prompts.
    """
    if not 1 <= min_words <= max_words:
        raise DataError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    rows = load_feedback(source, split, on_bad_rows, validation_size=validation_size, seed=seed)
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
