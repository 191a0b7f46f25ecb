"""A report on a dataset before any GPU time is spent on it: `make data-report`.

For a training source (and optionally a test source) of one of the three kinds the toolkit trains
on, it writes ``report.md`` and ``lengths.png`` to the output directory:

- rows read, kept and skipped, with the place and reason of each skipped row;
- prompt and target lengths in the chosen model's tokens (median, p90, p99, the longest and where
  it is), measured by `data.lengths` exactly as the recipes' length budget measures them, and the
  ``max_length`` / ``max_seq_length`` / ``max_completion_length`` they imply;
- duplicates inside each source (the same question after NFC, lower case and collapsed spaces),
  and questions repeated with different answers;
- train/test contamination: test questions that occur in the training data exactly, and
  near-duplicates: Jaccard similarity of the two questions' word 3-gram sets, with every number
  read as the same word (a test problem copied with other numbers is still found), at or above
  ``--near_threshold``.

Kinds: ``math`` (`data.vi_gsm8k`: question / explanation / answer and the other layouts it
accepts), ``preference`` (`data.preference`), ``feedback`` (`data.students_feedback`).

    python -m data.report --source data/fixtures/bai_toan.csv --test data/fixtures/bai_toan_kiem_tra.csv \\
        --columns question=cau_hoi,explanation=loi_giai,answer=dap_an --model_name_or_path runs/tiny/qwen2 --out runs/data-report

``--model`` is anything `AutoTokenizer` loads (a hub id, a model or adapter directory); only the
tokenizer is loaded. Without it the length section is left out. An existing report is never
overwritten.
"""

from __future__ import annotations

import os
import re
import sys
import time
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import ArgumentParser
from core.files import write_text_atomic
from data.common import DataError, Row
from data.lengths import LengthStats, sequence_lengths, summarize

KINDS = ("math", "preference", "feedback")
NEAR_THRESHOLD = 0.5
SHINGLE = 3  # words per n-gram of the near-duplicate check
ROUND_TO = 32  # implied limits are rounded up to a multiple of this
SHOWN = 10  # examples listed per finding

# A "word": letters/digits, keeping "1.250.000", "3,5" and "1/3" whole.
_WORD_RE = re.compile(r"\w+(?:[.,/]\w+)*")


# ------------------------------------------------------------------------------- text matching
def normalize_text(text: str) -> str:
    """NFC, lower case, whitespace collapsed: the key of the exact-duplicate checks."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def words(text: str) -> list[str]:
    """The words of `text` (normalized), every number replaced by one placeholder."""
    return ["<số>" if any(c.isdigit() for c in w) else w for w in _WORD_RE.findall(normalize_text(text))]


def shingles(text: str, n: int = SHINGLE) -> frozenset[tuple[str, ...]]:
    """The set of word n-grams of `text` (the whole word sequence when it is shorter than n)."""
    tokens = words(text)
    if len(tokens) < n:
        return frozenset([tuple(tokens)]) if tokens else frozenset()
    return frozenset(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def nearest(queries: Sequence[str], corpus: Sequence[str], n: int = SHINGLE,
            chunk: int = 512) -> list[tuple[int, float]]:
    """For each query text, (index of the most similar corpus text, its Jaccard similarity).

    Exact for every pair: both sides become binary word-n-gram matrices and one sparse product per
    chunk of queries counts the shared n-grams of all pairs at once (vi_gsm8k's 1.3k test x 7.5k
    train questions take about a second).
    """
    import numpy as np
    from scipy import sparse

    if not queries or not corpus:
        return [(-1, 0.0)] * len(queries)
    vocabulary: dict[tuple[str, ...], int] = {}

    def matrix(texts: Sequence[str]):
        indptr, indices = [0], []
        for text in texts:
            indices.extend(vocabulary.setdefault(g, len(vocabulary)) for g in shingles(text, n))
            indptr.append(len(indices))
        data = np.ones(len(indices), dtype=np.float32)
        return indptr, indices, data

    corpus_parts = matrix(corpus)
    query_parts = matrix(queries)
    width = len(vocabulary)
    corpus_m = sparse.csr_matrix((corpus_parts[2], corpus_parts[1], corpus_parts[0]), shape=(len(corpus), width))
    query_m = sparse.csr_matrix((query_parts[2], query_parts[1], query_parts[0]), shape=(len(queries), width))
    corpus_sizes = np.asarray(corpus_m.sum(axis=1)).ravel()
    query_sizes = np.asarray(query_m.sum(axis=1)).ravel()
    best: list[tuple[int, float]] = []
    for start in range(0, len(queries), chunk):
        shared = (query_m[start:start + chunk] @ corpus_m.T).toarray()
        union = query_sizes[start:start + chunk, None] + corpus_sizes[None, :] - shared
        similarity = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
        top = similarity.argmax(axis=1)
        best.extend((int(j), float(similarity[i, j])) for i, j in enumerate(top))
    return best


# ------------------------------------------------------------------------------------- loading
@dataclass
class Part:
    """One source as the report sees it: its usable rows, in order, and what was dropped."""

    name: str  # "train" or "test"
    source: str
    rows: list[Row]  # the usable rows (where they are in the file)
    keys: list[str]  # the question (prompt, sentence) of each usable row
    answers: list[str | None]  # the gold answer of each row (math), for conflicting duplicates
    dataset: Any  # the rows as the trainer gets them (datasets.Dataset)
    n_read: int
    skipped: list[str] = field(default_factory=list)  # "line 7: reason" per bad row


def load_part(kind: str, name: str, source: str, split: str, columns, system_prompt: str | None,
              on_bad_rows: str, bad_rows_out: str | None) -> Part:
    """Read one source with the loader of `kind`, keeping every row's place."""
    import datasets

    if kind == "math":
        from data.vi_gsm8k import load_problems, to_dataset

        good, bad = load_problems(source, split, on_bad_rows, columns, bad_rows_out)
        problems = [p for _, p in good]
        dataset = to_dataset(problems, system_prompt)
        keys, answers = [p["question"] for p in problems], [p["answer"] for p in problems]
    elif kind == "preference":
        from data.preference import load_pairs

        good, bad = load_pairs(source, split, system_prompt, on_bad_rows, columns, bad_rows_out)
        pairs = [p for _, p in good]
        dataset = datasets.Dataset.from_list(pairs)
        keys = [p["prompt"][-1]["content"] for p in pairs]
        answers = [None] * len(pairs)
    elif kind == "feedback":
        from data.students_feedback import load_feedback_rows

        good, bad = load_feedback_rows(source, split, on_bad_rows, columns=columns, bad_rows_out=bad_rows_out)
        records = [r for _, r in good]
        dataset = datasets.Dataset.from_dict({"sentence": [r["sentence"] for r in records],
                                              "label": [r["label"] for r in records]})
        keys, answers = [r["sentence"] for r in records], [str(r["label"]) for r in records]
    else:
        raise DataError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return Part(name, source, [row for row, _ in good], keys, answers, dataset, len(good) + len(bad),
                [f"{b['where']}: {b['reason']}" for b in bad])


# ------------------------------------------------------------------------------------- lengths
@dataclass
class Lengths:
    """Token lengths of one part: name -> per-row lengths (same order as the part's rows)."""

    columns: dict[str, list[int]]


def measure(kind: str, part: Part, tokenizer) -> Lengths:
    """Prompt, target and total tokens per row, with `data.lengths.sequence_lengths`."""
    ds = part.dataset
    if kind == "feedback":
        return Lengths({"sentence": sequence_lengths(ds, tokenizer, ["sentence"])})
    prompt = sequence_lengths(ds, tokenizer, ["prompt"])
    if kind == "math":
        full = sequence_lengths(ds, tokenizer, ["prompt", "completion"])
        return Lengths({"prompt": prompt, "target": [f - p for f, p in zip(full, prompt, strict=True)],
                        "prompt + target": full})
    chosen = sequence_lengths(ds, tokenizer, ["prompt", "chosen"])
    rejected = sequence_lengths(ds, tokenizer, ["prompt", "rejected"])
    return Lengths({"prompt": prompt,
                    "chosen": [c - p for c, p in zip(chosen, prompt, strict=True)],
                    "rejected": [r - p for r, p in zip(rejected, prompt, strict=True)],
                    "prompt + longer answer": [max(c, r) for c, r in zip(chosen, rejected, strict=True)]})


def round_up(n: int, multiple: int = ROUND_TO) -> int:
    return -(-n // multiple) * multiple


def implied_settings(kind: str, stats: dict[str, LengthStats]) -> list[str]:
    """The limits that keep every row whole, as config lines with the reason."""
    if kind == "math":
        full, target, prompt = stats["prompt + target"], stats["target"], stats["prompt"]
        completion = round_up(target.longest)
        return [
            f"SFT: `max_length: {round_up(full.longest)}` (longest prompt + target: {full.longest}); "
            f"`max_seq_length` at least that",
            f"GRPO: `max_completion_length: {completion}` (longest reference target: {target.longest}; the "
            f"policy's own answers may run longer) and `max_seq_length: {round_up(prompt.longest + completion)}` "
            f"(longest prompt {prompt.longest} + {completion})",
            f"evaluation: `max_new_tokens: {completion}` or more",
        ]
    if kind == "preference":
        full = stats["prompt + longer answer"]
        return [f"DPO: `max_length: {round_up(full.longest)}` (longest prompt + answer: {full.longest}); "
                f"`max_seq_length` at least that. A smaller max_length cuts the answers' ends"]
    sentence = stats["sentence"]
    return [f"reward model: `max_length: {round_up(sentence.longest + 2)}` (longest sentence {sentence.longest} "
            f"+ the classifier's special tokens); LM adaptation: `max_length: {round_up(sentence.longest + 1)}` "
            "(+ EOS)"]


def plot_lengths(path: Path, per_part: dict[str, Lengths], title: str) -> None:
    """Histograms of each length column (train and test overlaid), written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(per_part.values())).columns)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for part_name, lengths in per_part.items():
            values = lengths.columns[name]
            ax.hist(values, bins=min(40, max(5, len(set(values)))), alpha=0.6, label=f"{part_name} (n={len(values)})")
        ax.set_title(name)
        ax.set_xlabel("tokens")
        ax.set_ylabel("rows")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------- duplicates
def duplicate_groups(part: Part) -> list[list[int]]:
    """Groups (row positions) of rows whose questions are the same after normalization."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(part.keys):
        groups[normalize_text(key)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def _quote(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return (text[: width - 1] + "…" if len(text) > width else text).replace("|", "\\|")


def contamination(train: Part, test: Part, threshold: float) -> tuple[list[tuple[int, int]], list[tuple[int, int, float]]]:
    """(exact matches, near-duplicates): (test position, train position[, similarity]) pairs."""
    index = {}
    for j, key in enumerate(train.keys):
        index.setdefault(normalize_text(key), j)
    exact = [(i, index[normalize_text(k)]) for i, k in enumerate(test.keys) if normalize_text(k) in index]
    exact_tests = {i for i, _ in exact}
    near = [(i, j, score) for i, (j, score) in enumerate(nearest(test.keys, train.keys))
            if score >= threshold and i not in exact_tests]
    near.sort(key=lambda item: -item[2])
    return exact, near


# ------------------------------------------------------------------------------------- report
def build_report(kind: str, parts: list[Part], tokenizer_name: str | None, tokenizer, threshold: float,
                 out_dir: Path, settings: dict[str, str]) -> str:
    """The Markdown report (and lengths.png beside it when a tokenizer is given)."""
    lines = [f"# Data report: {parts[0].source}", ""]
    lines += [f"- kind: `{kind}`; " + "; ".join(f"{k}: {v}" for k, v in settings.items() if v),
              f"- written {time.strftime('%Y-%m-%d %H:%M')} by `python -m data.report {' '.join(sys.argv[1:])}`", ""]

    lines += ["## Rows", "", "| part | source | rows read | kept | skipped |", "|---|---|---|---|---|"]
    for part in parts:
        lines.append(f"| {part.name} | `{part.source}` | {part.n_read} | {len(part.rows)} | {part.n_read - len(part.rows)} |")
    lines.append("")
    for part in parts:
        if part.skipped:
            lines.append(f"Skipped in {part.name} (first {min(len(part.skipped), SHOWN)} of {len(part.skipped)} "
                         "shown; `--bad_rows_out FILE` saves them all):")
            lines += [f"- {_quote(s, 160)}" for s in part.skipped[:SHOWN]]
            lines.append("")

    if tokenizer is not None:
        per_part = {part.name: measure(kind, part, tokenizer) for part in parts}
        lines += [f"## Lengths in `{tokenizer_name}` tokens", "",
                  "Measured by `data.lengths` as the recipes measure them (chat template applied; the prompt "
                  "includes the generation prompt, a target counts the tokens it adds, end of turn included).", "",
                  "| part | column | median | p90 | p99 | longest | longest at |", "|---|---|---|---|---|---|---|"]
        train_stats: dict[str, LengthStats] = {}
        for part in parts:
            for name, values in per_part[part.name].columns.items():
                stats = summarize(values)
                if part.name == "train":
                    train_stats[name] = stats
                lines.append(f"| {part.name} | {name} | {stats.p50} | {stats.p90} | {stats.p99} | {stats.longest} | "
                             f"{part.rows[stats.longest_row].where} |")
        all_stats = {name: summarize([v for p in per_part.values() for v in p.columns[name]]) for name in train_stats}
        lines += ["", "Settings that keep every row (train and test) whole, rounded up to a multiple of "
                  f"{ROUND_TO}:", ""]
        lines += [f"- {s}" for s in implied_settings(kind, all_stats)]
        plot_lengths(out_dir / "lengths.png", per_part, f"{parts[0].source}: tokens of {tokenizer_name}")
        lines += ["", "![token lengths](lengths.png)", ""]
    else:
        lines += ["## Lengths", "", "Not measured: pass `--model` (make: `MODEL=`) to count the model's tokens.", ""]

    lines += ["## Duplicates", ""]
    for part in parts:
        groups = duplicate_groups(part)
        extra = sum(len(g) - 1 for g in groups)
        lines.append(f"- {part.name}: {extra} repeated row(s) in {len(groups)} group(s) of the same "
                     f"{'sentence' if kind == 'feedback' else 'question'} (NFC, lower case, spaces collapsed)")
        for group in groups[:SHOWN]:
            places = ", ".join(part.rows[i].where for i in group)
            differs = len({part.answers[i] for i in group}) > 1
            note = " - **different answers**" if differs and kind != "preference" else ""
            lines.append(f"  - {places}: \"{_quote(part.keys[group[0]])}\"{note}")
    lines.append("")

    if len(parts) == 2:
        train, test = parts
        exact, near = contamination(train, test, threshold)
        lines += ["## Train/test contamination", "",
                  f"- exact: {len(exact)} of {len(test.rows)} test questions occur in train",
                  f"- near-duplicates: {len(near)} more have a train question with Jaccard similarity >= "
                  f"{threshold:g} (word {SHINGLE}-grams, numbers read as one word, so a copy with other numbers "
                  "counts)", ""]
        if exact or near:
            lines += ["| test | train | similarity | test question | train question |", "|---|---|---|---|---|"]
            for i, j in exact[:SHOWN]:
                lines.append(f"| {test.rows[i].where} | {train.rows[j].where} | exact | {_quote(test.keys[i], 60)} | "
                             f"{_quote(train.keys[j], 60)} |")
            for i, j, score in near[:SHOWN]:
                lines.append(f"| {test.rows[i].where} | {train.rows[j].where} | {score:.2f} | {_quote(test.keys[i], 60)} | "
                             f"{_quote(train.keys[j], 60)} |")
            lines += ["", "A test score on contaminated rows measures memory, not skill: drop them from the test "
                      "file (or from train) before comparing models.", ""]
    return "\n".join(lines) + "\n"


def load_tokenizer(name: str):
    """Only the tokenizer of `name` (a hub id, model or adapter directory)."""
    if name == "embedded":
        raise DataError("--model_name_or_path embedded: give the model directory, `python -m core.embedded | tail -1` prints it "
                        "(`make data-report MODEL=embedded` does this for you)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise DataError(f"could not load the tokenizer of {name!r}: {str(err).strip().splitlines()[0]} "
                        "(offline? give a local model directory, e.g. runs/tiny/qwen2 after make tiny-models)") from None


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m data.report", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="training data: a file, a save_to_disk directory or a hub id")
    parser.add_argument("--test", default=None, help="held-out data to check for contamination (same kind)")
    parser.add_argument("--kind", choices=KINDS, default="math", help="which loader reads the rows (default math)")
    parser.add_argument("--split", default="train", help="split of a hub/DatasetDict training source")
    parser.add_argument("--test_split", default="test", help="split of a hub/DatasetDict test source")
    parser.add_argument("--columns", default=None, help="your column names, e.g. question=cau_hoi,answer=dap_an")
    parser.add_argument("--model_name_or_path", dest="model", default=None, help="tokenizer to count tokens with (hub id or directory)")
    parser.add_argument("--system_prompt", default=None,
                        help="system prompt of the prompts (math default: the recipes' one; preference default: en)")
    parser.add_argument("--near_threshold", type=float, default=NEAR_THRESHOLD,
                        help=f"Jaccard similarity from which a test question counts as a near-duplicate ({NEAR_THRESHOLD})")
    parser.add_argument("--bad_rows_out", default=None, help="write the rejected rows with their reasons here")
    parser.add_argument("--out", default="runs/data-report", help="directory for report.md and lengths.png")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if (out / "report.md").exists():
            raise DataError(f"{out / 'report.md'} already exists; not overwriting it (delete it or pass another --out)")
        if not 0.0 < args.near_threshold <= 1.0:
            raise DataError(f"--near_threshold must be in (0, 1], got {args.near_threshold}")
        system_prompt = args.system_prompt
        if system_prompt is None:
            from data.vi_gsm8k import SYSTEM_PROMPT

            system_prompt = SYSTEM_PROMPT if args.kind == "math" else "en"
        tokenizer = load_tokenizer(args.model) if args.model else None
        parts = [load_part(args.kind, "train", args.source, args.split, args.columns, system_prompt, "skip",
                           args.bad_rows_out)]
        if args.test:
            parts.append(load_part(args.kind, "test", args.test, args.test_split, args.columns, system_prompt, "skip",
                                   args.bad_rows_out))
        settings = {"columns": f"`{args.columns}`" if args.columns else "", "model": f"`{args.model}`" if args.model else "",
                    "system prompt": "none" if not system_prompt else f"\"{_quote(system_prompt, 60)}\""}
        out.mkdir(parents=True, exist_ok=True)
        text = build_report(args.kind, parts, args.model, tokenizer, args.near_threshold, out, settings)
        write_text_atomic(out / "report.md", text)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[report] {out / 'report.md'}" + (f" and {out / 'lengths.png'}" if tokenizer is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
