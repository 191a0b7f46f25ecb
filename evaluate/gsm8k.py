"""Vietnamese GSM8K evaluation: accuracy, answer format and reasoning overlap, one row per run.

Evaluates a hub/local model, a LoRA adapter directory or a merged model on the ``hllj/vi_gsm8k``
test split (or any file with its schema) and adds the run as one row of the comparison table
(`evaluate.report`), the layout of the published work's Table I::

    make eval MODEL=runs/grpo/adapter ARGS="--limit 100 --run_name grpo"
    python -m evaluate.gsm8k --model_name_or_path unsloth/Qwen2.5-3B-Instruct --run_name base \
        --limit 100 --seed 0                    # the published 100-problem style sample
    python -m evaluate.gsm8k --model_name_or_path M --num_samples 4 --temperature 0.7   # pass@4, maj@4
    python -m evaluate.gsm8k --model_name_or_path M --num_samples 8 --also_greedy true \
        --extra_datasets ood=runs/demo/data/test_ood.jsonl   # greedy, pass@8, maj@8 on two test sets
    python -m evaluate.gsm8k --score-only runs/eval/base/predictions.jsonl   # re-score, no model

Metrics (a problem with k samples counts each sample 1/k):
- ``accuracy``: the answer is right, read flexibly (`rewards.math.is_correct`, the same checker
  as the GRPO correctness reward: "####", "Đáp số:", \\boxed{}, last number...).
- ``accuracy_strict``: right AND given on the requested last ``#### <number>`` line.
- ``format_rate``: a ``#### <number>`` line is there (right or wrong).
- ``pass@k`` / ``maj@k`` (k > 1): any sample right / the most frequent answer right.
- ``greedy_accuracy`` (+ ``_strict``, ``greedy_format_rate``, ``greedy_mean_completion_tokens``):
  with ``also_greedy``, the same problems answered once more greedily, so one run shows how far
  sampling (pass@k, maj@k) reaches beyond the greedy answer. Per problem: ``greedy_correct`` etc.
- ``mean_completion_tokens``: completion length, stop token included.
- ``vi_word_share`` / ``drift_rate`` / ``cjk_rate``: Vietnamese drift (`rewards.language`, the
  same analysis as the ``vietnamese`` reward): the mean share of a completion's words that are
  Vietnamese, the share of completions that contain CJK characters or are mostly not Vietnamese,
  and the share with CJK characters. Numbers, formulas and the question's own names do not count.
- ``rouge1`` / ``rouge2`` / ``rougeL`` (F1, 0-1) and ``sacrebleu`` (0-100) of the reasoning (the
  completion minus its final answer line) against the reference explanation. ROUGE uses a
  tokenizer that keeps Vietnamese letters: rouge-score's default one deletes every non-ASCII
  letter, which would score "táo" and "tạo" as the same word "t o".

Writes ``predictions.jsonl``, ``metrics.json``, ``config.yaml`` and ``run_info.json`` into
``output_dir`` (default ``results_dir/run_name``; never overwritten), each of ``extra_datasets``
(``NAME=FILE``: the same model and decoding on another test set, loaded once) into
``output_dir/NAME/`` (predictions and metrics; not a row of the comparison table, which compares
runs on one dataset), and updates
``results_dir/comparison.md`` + ``comparison.png``, whose paired differences are taken against
``--baseline RUN`` (remembered; default: the first run recorded).

`make_training_eval_callback` runs the same evaluation on a held-out subset at every checkpoint
during SFT/GRPO training; `make_target_stop_callback` runs it every few steps and stops training
once a metric (the format rate, say) reaches a target.

The ``--score-only`` path imports neither torch nor Unsloth: only a model run needs them, so
`core.boot` is imported inside `main`, after that branch.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.files import write_jsonl_atomic
from evaluate.stats import majority_vote
from rewards.language import analyze, drift_metrics
from rewards.math import (
    ANSWER_PREFIX,
    answers_match,
    completion_text,
    extract_answer,
    format_number,
    is_correct,
    parse_number,
)

TASK = "gsm8k"
TRAIN_EVAL_FILE = "train_eval.jsonl"


@dataclass
class EvalArguments:
    """Evaluation options (model loading options come from `core.config.ModelArguments`).

    Fields:
        dataset (`str`, defaults to `"hllj/vi_gsm8k"`): hub id or local .json/.jsonl/.parquet file
            with question / explanation / answer (e.g. data/fixtures/vi_gsm8k_sample.jsonl).
        split (`str`, defaults to `"test"`): hub split; ignored for a local file.
        limit (`int` or `None`, defaults to `None`): evaluate a seeded random subset of this many
            problems (None: the whole split).
        seed (`int`, defaults to `0`): seed of the subset and of sampling.
        run_name (`str` or `None`): the row name in the comparison table; default derived from the
            model path ("grpo-adapter" for runs/grpo/adapter).
        output_dir (`str` or `None`): where this run's files go; default `results_dir/run_name`.
            An existing, non-empty directory is never overwritten.
        results_dir (`str`, defaults to `"runs/eval"`): shared directory of the comparison table.
        baseline (`str` or `None`): the run the comparison's paired differences are taken against
            (a run already recorded in results_dir, or this run); remembered for later runs.
            None: the one named before, else the first run recorded.
        batch_size (`int`, defaults to `8`): prompts per HF `generate` call.
        max_new_tokens (`int`, defaults to `512`): completion budget.
        num_samples (`int`, defaults to `1`): completions per problem; > 1 samples and reports
            pass@k and maj@k.
        do_sample (`bool`, defaults to `False`): sample even with one completion per problem (the
            published evaluation sampled at temperature 0.7).
        temperature (`float`, defaults to `0.7`), top_p (`float`, defaults to `0.95`): sampling.
        system_prompt (`str` or `None`): system message; None: `data.vi_gsm8k.SYSTEM_PROMPT` (asks
            for the "#### <số>" line); "": no system message.
        on_bad_rows (`str`, defaults to `"skip"`): `skip` or `fail` on malformed dataset rows.
        score_only (`str` or `None`): re-score a predictions JSONL file without a model.
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{question: cau_hoi, explanation: loi_giai, answer: dap_an}` in YAML or
            `question=cau_hoi,explanation=loi_giai,answer=dap_an` on the command line.
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
        also_greedy (`bool`, defaults to `False`): with sampling, also answer every problem greedily
            (`greedy_*` metrics and per-problem fields); with greedy decoding they equal the main ones.
        extra_datasets (`list[str]`, *optional*): `NAME=FILE` pairs: evaluate the same model on each
            FILE too (same decoding, `limit`, `seed`), written to `output_dir/NAME/`.
    """

    dataset_name: str = field(default="hllj/vi_gsm8k", metadata={"help": "Hub id or local .json/.jsonl/.parquet file."})
    dataset_split: str = field(default="test", metadata={"help": "Hub split (ignored for a local file)."})
    limit: int | None = field(default=None, metadata={"help": "Seeded random subset of this many problems."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset and of sampling."})
    run_name: str | None = field(default=None, metadata={"help": "Row name in the comparison table."})
    output_dir: str | None = field(default=None, metadata={"help": "This run's directory (default results_dir/run_name)."})
    results_dir: str = field(default="runs/eval", metadata={"help": "Directory of the shared comparison table."})
    baseline: str | None = field(
        default=None, metadata={"help": "Run the comparison's paired differences are against (remembered)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (HF path)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Completion budget in tokens."})
    num_samples: int = field(default=1, metadata={"help": "Completions per problem (>1: sampled, pass@k, maj@k)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample even with one completion per problem."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message (default: the dataset's; '' for none)."}
    )
    on_bad_rows: str = field(default="skip", metadata={"help": "'skip' or 'fail' on malformed dataset rows."})
    score_only: str | None = field(
        default=None, metadata={"help": "Re-score this predictions JSONL (no model); writes FILE.scored.jsonl."}
    )
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. question=cau_hoi,explanation=loi_giai,answer=dap_an."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )
    also_greedy: bool = field(
        default=False, metadata={"help": "With sampling, also answer greedily (greedy_accuracy beside pass@k, maj@k)."}
    )
    extra_datasets: list[str] | None = field(
        default=None, metadata={"help": "NAME=FILE pairs: more test sets for the same model, written to output_dir/NAME/."}
    )


# ------------------------------------------------------------------------------------- scoring
def score_completion(completion: str, gold: str) -> dict[str, Any]:
    """Flags of one completion against the gold answer.

    Returns ``pred`` (canonical number text or None), ``correct`` (flexible reading, the training
    reward's checker), ``correct_strict`` (right on the final ``####`` line) and ``formatted``
    (a ``#### <number>`` line is present). Raises ValueError when ``gold`` is not a number.
    """
    pred = extract_answer(completion)
    return {
        "pred": None if pred is None else format_number(pred),
        "correct": is_correct(completion, gold),
        "correct_strict": is_correct(completion, gold, strict=True),
        "formatted": extract_answer(completion, strict=True) is not None,
    }


def language_flags(completion: str, question: str | None = None) -> dict[str, Any]:
    """``vi_share`` (share of the completion's words that are Vietnamese, None without words; the
    question's own names do not count) and ``drift`` (CJK characters, or mostly not Vietnamese)."""
    language = analyze(completion, question)
    share = language.vietnamese_share
    return {"vi_share": None if share is None else round(share, 4), "drift": language.drifts()}


def score_problem(row: dict[str, Any], completions: Sequence[str], tokens: Sequence[int] | None = None,
                  greedy: tuple[str, int | None] | None = None) -> dict[str, Any]:
    """``row`` plus the scores of its completions (sample 0 at the top level; all of them under
    ``samples`` with the majority answer when there are several) and, given ``greedy`` (the
    greedy completion and its token count), its scores as ``greedy_<field>``."""
    gold = row["answer"]
    scored = [{**score_completion(c, gold), **language_flags(c, row.get("question"))} for c in completions]
    out = dict(row)
    out.update(completion=completions[0], **scored[0])
    if tokens is not None:
        out["tokens"] = tokens[0]
    if len(completions) > 1:
        out["samples"] = [
            {"completion": c, **s, **({"tokens": tokens[j]} if tokens is not None else {})}
            for j, (c, s) in enumerate(zip(completions, scored, strict=True))
        ]
        vote = majority_vote([s["pred"] for s in scored])
        out["maj_pred"] = vote
        out["maj_correct"] = vote is not None and answers_match(parse_number(vote), gold)
    else:
        out.pop("samples", None)
        out.pop("maj_pred", None)
        out.pop("maj_correct", None)
    if greedy is not None:
        text, count = greedy
        scored_greedy = {"completion": text, **score_completion(text, gold)}
        if count is not None:
            scored_greedy["tokens"] = count
        out.update({f"greedy_{key}": value for key, value in scored_greedy.items()})
    return out


def _samples_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    return row["samples"] if "samples" in row else [row]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over scored rows (see the module docstring); text metrics when every row has an
    ``explanation``."""
    if not rows:
        raise ValueError("no scored rows to aggregate")
    metrics: dict[str, Any] = {"n": len(rows)}
    for key, name in (("correct", "accuracy"), ("correct_strict", "accuracy_strict"), ("formatted", "format_rate")):
        metrics[name] = _mean([_mean([float(s[key]) for s in _samples_of(r)]) for r in rows])
    ks = {len(_samples_of(r)) for r in rows}
    if ks != {1}:
        k = min(ks)
        metrics[f"pass@{k}"] = _mean([float(any(s["correct"] for s in _samples_of(r)[:k])) for r in rows])
        if ks == {k}:
            metrics[f"maj@{k}"] = _mean([float(r["maj_correct"]) for r in rows])
    tokens = [s["tokens"] for r in rows for s in _samples_of(r) if "tokens" in s]
    if tokens:
        metrics["mean_completion_tokens"] = _mean(tokens)
    if all("greedy_correct" in r for r in rows):
        for key, name in (("correct", "accuracy"), ("correct_strict", "accuracy_strict"), ("formatted", "format_rate")):
            metrics[f"greedy_{name}"] = _mean([float(r[f"greedy_{key}"]) for r in rows])
        greedy_tokens = [r["greedy_tokens"] for r in rows if "greedy_tokens" in r]
        if greedy_tokens:
            metrics["greedy_mean_completion_tokens"] = _mean(greedy_tokens)
    metrics.update(drift_metrics([s["completion"] for r in rows for s in _samples_of(r)],
                                 [r.get("question") for r in rows for _ in _samples_of(r)]))
    if all(isinstance(r.get("explanation"), str) for r in rows):
        hyps = [reasoning_text(s["completion"]) for r in rows for s in _samples_of(r)]
        refs = [reasoning_text(r["explanation"]) for r in rows for _ in _samples_of(r)]
        metrics.update(text_metrics(hyps, refs))
    return metrics


# -------------------------------------------------------------------------- reasoning overlap
_WORD_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")


class VietnameseTokenizer:
    """rouge-score tokenizer keeping Vietnamese letters: NFC, lowercase, words and numbers.

    rouge-score's default tokenizer replaces everything outside [a-z0-9] with spaces, so
    "Số táo" becomes "s t o"; here it is ["số", "táo"]. Numbers keep their separators
    ("125.000" is one token); operators and punctuation are dropped, as the default does.
    """

    def tokenize(self, text: str) -> list[str]:
        return _WORD_RE.findall(unicodedata.normalize("NFC", text).lower())


def reasoning_text(completion: str) -> str:
    """The reasoning of a completion: everything before its final answer line.

    The final answer line is the last line starting with ``####`` (anything after it goes too);
    without one, a last line ``### <number>`` is dropped; otherwise the whole text is reasoning.
    """
    lines = completion.rstrip().split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith(ANSWER_PREFIX):
            return "\n".join(lines[:i]).strip()
    if re.match(r"^\s*###\s+[-\d]", lines[-1]):
        lines = lines[:-1]
    return "\n".join(lines).strip()


def text_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (mean over pairs, 0-1) and corpus SacreBLEU (0-100)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=VietnameseTokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)  # (target, prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    n = max(1, len(hypotheses))
    out = {key: value / n for key, value in totals.items()}
    out["sacrebleu"] = float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
    return out


# ------------------------------------------------------------------------------- score-only
def scored_path(path: str | Path) -> Path:
    """``preds.jsonl`` -> ``preds.scored.jsonl``."""
    path = Path(path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(f"{stem}.scored.jsonl")


def _check_prediction(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if "answer" not in obj or obj["answer"] is None:
        return "missing field 'answer'"
    if not isinstance(obj["answer"], (str, int, float)) or isinstance(obj["answer"], bool):
        return f"field 'answer' is a {type(obj['answer']).__name__}"
    if "samples" in obj:
        samples = obj["samples"]
        if not isinstance(samples, list) or not samples:
            return "field 'samples' must be a non-empty list"
        for j, s in enumerate(samples):
            text = s.get("completion") if isinstance(s, dict) else s
            if not isinstance(text, str):
                return f"sample {j} has no text 'completion'"
        return None
    if "completion" not in obj:
        return "missing field 'completion'"
    if not isinstance(obj["completion"], (str, list)):
        return f"field 'completion' is a {type(obj['completion']).__name__}"
    return None


def score_file(path: str | Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Score every line of a predictions file; returns (scored rows, [(line number, problem)])."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                bad.append((lineno, f"malformed JSON ({err.msg})"))
                continue
            problem = _check_prediction(obj)
            if problem is None:
                if "samples" in obj:
                    completions = [s["completion"] if isinstance(s, dict) else s for s in obj["samples"]]
                    tokens = [s.get("tokens") if isinstance(s, dict) else None for s in obj["samples"]]
                else:
                    completions = [completion_text(obj["completion"])]
                    tokens = [obj.get("tokens")]
                obj["answer"] = str(obj["answer"])
                greedy = None
                if isinstance(obj.get("greedy_completion"), str):
                    greedy = (obj["greedy_completion"], obj.get("greedy_tokens"))
                try:
                    rows.append(score_problem(obj, completions, tokens if None not in tokens else None, greedy))
                except ValueError as err:  # the gold answer is not a number: a data problem, not a 0
                    problem = str(err)
            if problem is not None:
                bad.append((lineno, problem))
    return rows, bad


def score_only(path: str, out: Path | None = None) -> int:
    """`--score-only FILE`: score, write FILE.scored.jsonl, print metrics JSON; exit status."""
    if not Path(path).is_file():
        print(f"error: predictions file not found: {path}", file=sys.stderr)
        return 2
    rows, bad = score_file(path)
    for lineno, problem in bad:
        print(f"{path}:{lineno}: {problem}", file=sys.stderr)
    if not rows:
        print(f"error: no line of {path} could be scored (each needs 'completion' and 'answer')", file=sys.stderr)
        return 2
    out = out or scored_path(path)
    write_jsonl_atomic(out, rows)
    metrics = aggregate(rows)
    metrics["malformed_lines"] = len(bad)
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    print(f"[eval] scored {len(rows)} lines ({len(bad)} malformed) -> {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------- model run
def default_run_name(model: str) -> str:
    """Row name from a model path: runs/grpo/adapter -> grpo-adapter, org/Model -> Model."""
    path = Path(model.rstrip("/"))
    if path.name in ("adapter", "merged", "model") or path.name.startswith("checkpoint-"):
        return f"{path.parent.name}-{path.name}" if path.parent.name else path.name
    return path.name


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when possible (results.json stays valid if moved)."""
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


def parse_extra_datasets(pairs: Sequence[str] | None) -> dict[str, str]:
    """`["ood=test_ood.jsonl", ...]` -> `{"ood": "test_ood.jsonl"}`; ValueError naming a bad pair."""
    extra: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not path or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"extra_datasets takes NAME=FILE pairs with NAME made of letters, digits, _ or -, "
                             f"got {pair!r}")
        if name in extra:
            raise ValueError(f"extra_datasets names {name!r} twice")
        extra[name] = path
    return extra


def argument_types() -> list[type]:
    """The dataclasses an eval config fills (imported lazily: --score-only needs no torch)."""
    from core.config import ModelArguments

    return [ModelArguments, EvalArguments]


def evaluate_model(argv: list[str] | None = None) -> None:
    """Load the model, generate, score, write the run directory and update the comparison."""
    from core.adapters import adapter_base
    from core.cli import UserError
    from core.config import parse_args
    from core.files import write_json_atomic as write_json
    from core.models import load_model_and_tokenizer
    from core.runs import write_run_info
    from data.common import is_local
    from data.vi_gsm8k import SYSTEM_PROMPT, load_vi_gsm8k
    from evaluate.generation import DecodingSettings, generate
    from evaluate.report import load_results, record_result

    started = time.perf_counter()
    margs, eargs = parse_args(argument_types(), argv)
    if not margs.model_name_or_path:
        raise UserError("no model to evaluate: pass --model_name_or_path (make eval MODEL=...)")
    if eargs.on_bad_rows not in ("skip", "fail"):
        raise UserError(f"on_bad_rows must be 'skip' or 'fail', got {eargs.on_bad_rows!r}")
    try:
        settings = DecodingSettings(
            max_new_tokens=eargs.max_new_tokens, batch_size=eargs.batch_size, num_samples=eargs.num_samples,
            do_sample=eargs.do_sample, temperature=eargs.temperature, top_p=eargs.top_p, seed=eargs.seed,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    if eargs.num_samples > 1 and not eargs.do_sample:
        print(f"[eval] num_samples={eargs.num_samples}: sampling at temperature {eargs.temperature}, top_p {eargs.top_p}")
    run_name = eargs.run_name or default_run_name(margs.model_name_or_path)
    results_dir = Path(eargs.results_dir)
    out = Path(eargs.output_dir) if eargs.output_dir else results_dir / run_name
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already holds an evaluation; pass --run_name NEW_NAME or --output_dir NEW_DIR "
                        "(nothing is overwritten)")
    recorded = list(load_results(results_dir).get(TASK, {}))
    if eargs.baseline is not None and eargs.baseline not in recorded + [run_name]:
        raise UserError(f"--baseline {eargs.baseline}: no such run in {results_dir / 'results.json'} "
                        f"(recorded: {', '.join(recorded) or 'none yet'}); evaluate it first, or name this run")

    try:
        extra = parse_extra_datasets(eargs.extra_datasets)
    except ValueError as err:
        raise UserError(str(err)) from None

    system_prompt = SYSTEM_PROMPT if eargs.system_prompt is None else eargs.system_prompt

    def load(name: str) -> Any:
        return load_vi_gsm8k(name, eargs.dataset_split, eargs.on_bad_rows, eargs.limit, eargs.seed, system_prompt,
                             columns=eargs.columns, bad_rows_out=eargs.bad_rows_out)

    # Every test set before the model: a missing file fails at once.
    datasets_by_name = {"": load(eargs.dataset_name), **{name: load(path) for name, path in extra.items()}}
    sources = {"": eargs.dataset_name, **extra}
    for name, dataset in datasets_by_name.items():
        print(f"[eval] {len(dataset)} problems from {sources[name]}"
              f"{'' if name else f' ({eargs.dataset_split})'}{f' as {name!r}' if name else ''}, {settings.describe()}"
              + (" and greedy" if eargs.also_greedy and settings.do_sample else ""))

    model_path = os.path.expanduser(margs.model_name_or_path)
    adapter = model_path if os.path.isdir(model_path) and adapter_base(model_path) else None
    if adapter and margs.fast_inference:
        # vLLM sizes its LoRA slots by max_lora_rank (the loader passes lora_r), which must cover
        # the adapter's rank and be one of vLLM's sizes (8, 16, 32, 64, ...).
        rank = max(8, margs.lora_r, json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])
        margs.lora_r = 1 << (rank - 1).bit_length()
    model, tokenizer = load_model_and_tokenizer(margs, seed=eargs.seed, for_training=False)
    if margs.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)  # eval mode + Unsloth's inference kernels; we never train after

    def answer(dataset, desc: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One test set's scored rows and its throughput."""
        prompts = list(dataset["prompt"])
        gens = generate(model, tokenizer, prompts, settings, lora_path=adapter, desc=desc)
        greedy = None
        if eargs.also_greedy:
            greedy = gens if not settings.do_sample else generate(
                model, tokenizer, prompts, DecodingSettings(max_new_tokens=settings.max_new_tokens,
                                                            batch_size=settings.batch_size),
                lora_path=adapter, desc=f"{desc} (greedy)")
        rows = [
            score_problem({"question": r["question"], "answer": r["answer"], "explanation": r["explanation"]},
                          texts, tokens, None if greedy is None else (greedy.texts[i][0], greedy.tokens[i][0]))
            for i, (r, texts, tokens) in enumerate(zip(dataset, gens.texts, gens.tokens, strict=True))
        ]
        n = len(rows)
        throughput = {
            "problems_per_s": n / gens.elapsed if gens.elapsed > 0 else None,
            "tokens_per_s": gens.total_tokens / gens.elapsed if gens.elapsed > 0 else None,
            "generation_s": gens.elapsed,
        }
        if greedy is not None and greedy is not gens:
            throughput["greedy_generation_s"] = greedy.elapsed
        return rows, throughput

    def settings_record(dataset_name: str, n: int, generation: str) -> dict[str, Any]:
        return {
            "model": margs.model_name_or_path,
            "backend": margs.backend,
            "generation": generation,
            "load_in_4bit": bool(margs.load_in_4bit),
            "dataset": dataset_name,
            "split": eargs.dataset_split,
            "n": n,
            "limit": eargs.limit,
            "seed": eargs.seed,
            "decoding": settings.describe(),
            "also_greedy": eargs.also_greedy,
            "max_new_tokens": settings.max_new_tokens,
            "num_samples": settings.num_samples,
            "temperature": settings.temperature if settings.do_sample else None,
            "top_p": settings.top_p if settings.do_sample else None,
            "batch_size": settings.batch_size,
            "system_prompt": system_prompt,
        }

    generation = "vllm" if getattr(model, "vllm_engine", None) is not None else "hf"
    results = {}
    for name, dataset in datasets_by_name.items():
        rows, throughput = answer(dataset, f"vi_gsm8k {name}".strip())
        results[name] = (rows, aggregate(rows), throughput)
    rows, metrics, throughput = results[""]
    throughput["elapsed_s"] = time.perf_counter() - started  # model and data loading included
    n = len(rows)

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "predictions.jsonl", rows)
    write_json(out / "metrics.json", {"run_name": run_name, **metrics, **throughput,
                                      "settings": settings_record(eargs.dataset_name, n, generation)})
    write_run_info(str(out), margs, eargs)
    for name in extra:
        extra_rows, extra_metrics, extra_throughput = results[name]
        (out / name).mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(out / name / "predictions.jsonl", extra_rows)
        write_json(out / name / "metrics.json", {"run_name": f"{run_name} on {name}", **extra_metrics,
                                                 **extra_throughput,
                                                 "settings": settings_record(extra[name], len(extra_rows), generation)})
    dataset_name = eargs.dataset_name if is_local(eargs.dataset_name) else f"{eargs.dataset_name} ({eargs.dataset_split})"
    row = {**metrics, "problems_per_s": throughput["problems_per_s"], "decoding": settings.describe(),
           "dataset": dataset_name, "limit": eargs.limit, "seed": eargs.seed,
           "predictions": _relative(out / "predictions.jsonl", results_dir)}
    table = record_result(results_dir, TASK, run_name, row, baseline=eargs.baseline)

    headline = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"[eval] {run_name}: n={n}, {headline}")
    for name in extra:
        extra_metrics = results[name][1]
        shown = ", ".join(f"{k} {v:.3f}" for k, v in extra_metrics.items() if isinstance(v, float))
        print(f"[eval] {run_name} on {name}: n={extra_metrics['n']}, {shown} -> {out / name}")
    print(f"[eval] Vietnamese: {metrics['vi_word_share']:.1%} of the words; {metrics['drift_rate']:.1%} of the "
          f"completions drift to another language ({metrics['cjk_rate']:.1%} with CJK characters)")
    print(f"[eval] {throughput['problems_per_s']:.2f} problems/s, {throughput['tokens_per_s']:.1f} tokens/s "
          f"({generation})")
    print(f"[eval] wrote {out}/predictions.jsonl, metrics.json; comparison: {table}")


def _score_only_arg(argv: list[str]) -> str | None | bool:
    """The file after --score-only / --score_only (False when the flag is absent)."""
    for i, arg in enumerate(argv):
        for flag in ("--score-only", "--score_only"):
            if arg == flag:
                return argv[i + 1] if i + 1 < len(argv) else None
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return False


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    target = _score_only_arg(argv)
    if target is not False:
        if target is None:
            print("error: --score-only needs a predictions .jsonl file", file=sys.stderr)
            sys.exit(2)
        if len(argv) > 2:
            print("error: --score-only takes only the predictions file (no model options)", file=sys.stderr)
            sys.exit(2)
        sys.exit(score_only(target))
    import core.boot  # noqa: F401  (Unsloth before transformers, as in every entry point)
    from core.cli import run_cli

    run_cli(evaluate_model, argv)


# ------------------------------------------------------------------------ training-time eval
def make_training_eval_callback(
    dataset,
    tokenizer,
    output_dir: str | Path,
    limit: int | None = 50,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    trainer=None,
    prefix: str = "eval_",
):
    """A `transformers.TrainerCallback` that evaluates held-out problems at every checkpoint.

    On each save (``on_save``, also at the final step) it greedily answers the first ``limit``
    rows of ``dataset`` with the trainer's current model, then:

    - appends ``{"step", "epoch", "<prefix>accuracy", "<prefix>accuracy_strict",
      "<prefix>format_rate", "<prefix>mean_completion_tokens", "<prefix>vi_word_share",
      "<prefix>drift_rate", "<prefix>seconds", "n"}`` to
      ``output_dir/train_eval.jsonl``;
    - adds the same metrics to ``trainer.state.log_history`` and, when ``trainer`` is given, hands
      them to every callback's ``on_log`` (so `core.runs.JsonlMetricsCallback` writes them to
      ``metrics.jsonl``, and wandb/tensorboard see them). The trainer's own ``log`` is not used:
      GRPOTrainer's would fold its pending training metrics into this row.

    The model may be PEFT-wrapped and in train mode: generation runs in eval mode under
    ``torch.no_grad`` with left padding, then the train mode and the tokenizer's padding side are
    restored (Unsloth's GPU ``generate`` handles modes and gradient checkpointing itself). It
    uses HF ``generate`` even with a vLLM engine, since the engine does not hold the live LoRA
    weights. Rank 0 only.

    Args:
        dataset: a held-out split from `data.vi_gsm8k.load_vi_gsm8k` (columns ``prompt``,
            ``answer``), e.g. ``load_vi_gsm8k(split="test", limit=50, seed=0)``.
        tokenizer: the training tokenizer (its chat template renders the prompts).
        output_dir: the run directory.
        limit: evaluate the first ``limit`` rows (None: all).
        max_new_tokens, batch_size: generation budget and batch.
        trainer: the Trainer, so the metrics reach ``metrics.jsonl`` (see above).
        prefix: metric name prefix.

    Wiring, in a recipe (the trainer must exist first)::

        trainer.add_callback(make_training_eval_callback(
            eval_ds, tokenizer, training_args.output_dir, limit=script_args.eval_limit, trainer=trainer))
    """
    from transformers import TrainerCallback

    from core.console import console

    prompts, golds, questions, settings, path = _check_problems(
        dataset, "the training eval dataset", output_dir, limit, max_new_tokens, batch_size)

    class TrainingEvalCallback(TrainerCallback):
        """Greedy vi_gsm8k accuracy of the current model at every checkpoint."""

        def __init__(self):
            self.trainer = trainer

        def on_save(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero or model is None:
                return
            metrics, seconds = _score_now(model, tokenizer, prompts, golds, questions, settings)
            logs = _record(path, state, metrics, seconds, prefix)
            # Above the progress bar, not into it; the console logger leaves these rows to this line.
            console(f"[eval] step {state.global_step}: accuracy {metrics['accuracy']:.3f}, "
                    f"format {metrics['format_rate']:.3f} on {metrics['n']} held-out problems ({seconds:.1f}s)")
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
            if self.trainer is not None:
                self.trainer.callback_handler.on_log(args, state, control, logs)

    return TrainingEvalCallback()


def _check_problems(dataset, what: str, output_dir, limit, max_new_tokens: int, batch_size: int):
    """What a training-time check answers: (prompts, golds, questions, decoding settings, the
    train_eval.jsonl path), from the first `limit` rows of `dataset`."""
    from evaluate.generation import DecodingSettings

    missing = {"prompt", "answer"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{what} lacks column(s) {sorted(missing)}; use data.vi_gsm8k.load_vi_gsm8k")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    prompts, golds = list(dataset["prompt"]), list(dataset["answer"])
    questions = list(dataset["question"]) if "question" in dataset.column_names else [None] * len(golds)
    settings = DecodingSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    return prompts, golds, questions, settings, Path(output_dir) / TRAIN_EVAL_FILE


def _score_now(model, tokenizer, prompts, golds, questions, settings) -> tuple[dict[str, Any], float]:
    """Greedy answers of the current model to `prompts`, scored against `golds` (with `questions`
    for the language-drift metrics): (metrics, seconds)."""
    from evaluate.generation import generate

    gens = generate(model, tokenizer, prompts, settings, progress=False, backend="hf")
    rows = [score_problem({"answer": g, "question": q}, texts, tokens)
            for g, q, texts, tokens in zip(golds, questions, gens.texts, gens.tokens, strict=True)]
    return aggregate(rows), gens.elapsed


def _record(path: Path, state, metrics: dict[str, Any], seconds: float, prefix: str) -> dict[str, Any]:
    """Append one training-time evaluation to `path` (train_eval.jsonl); return its log entries."""
    keys = ("accuracy", "accuracy_strict", "format_rate", "mean_completion_tokens", "vi_word_share", "drift_rate")
    logs = {f"{prefix}{key}": metrics[key] for key in keys if key in metrics}  # drift: only with questions
    logs[f"{prefix}seconds"] = round(seconds, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        record = {"step": state.global_step, "epoch": state.epoch, "n": metrics["n"], **logs}
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return logs


TARGET_METRICS = ("format_rate", "accuracy", "accuracy_strict")


class Plateau:
    """Whether a metric checked at intervals has stopped rising.

    `update(value, step)` returns True once `patience` checks in a row have not beaten the best
    value so far by more than `min_delta`; `best` and `best_step` say where the best was. A dev
    score moves by 1/n per problem, so on n dev problems a `min_delta` below 1/n only counts
    strict rises, and a `patience` of 1 would stop at the first noisy dip.
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        if patience < 1 or min_delta < 0:
            raise ValueError(f"a plateau needs patience >= 1 and min_delta >= 0, got {patience} and {min_delta}")
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0

    def update(self, value: float, step: int) -> bool:
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_step, self.since_best = value, step, 0
            return False
        self.since_best += 1
        return self.since_best >= self.patience


RESTORE_BEST_MAX = 500_000_000  # trainable values a plateau stop copies to RAM (2 GB in float32)


def make_target_stop_callback(
    dataset,
    tokenizer,
    output_dir: str | Path,
    metric: str,
    target: float | None = None,
    every: int = 2,
    limit: int | None = 32,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    patience: int = 0,
    min_delta: float = 0.0,
    restore_best: bool = True,
):
    """A `transformers.TrainerCallback` that stops training once a held-out metric reaches a target,
    or once it stops rising.

    Every ``every`` optimizer steps it answers the first ``limit`` rows of ``dataset`` greedily
    (the same scoring as `make_training_eval_callback`), appends the result to
    ``output_dir/train_eval.jsonl`` and ends training at that step (the trainer then saves as at
    a normal end) when ``metric`` (one of `TARGET_METRICS`) is at least ``target``, or - with
    ``patience`` > 0 - when ``patience`` checks in a row did not beat the best value so far by more
    than ``min_delta`` (`Plateau`). Give a target, a patience or both. When the plateau stops
    training, the trainable weights go back to those of the best check (``restore_best``, kept as
    a copy in RAM at each new best: a LoRA adapter's few MB; skipped, and said, for more than
    `RESTORE_BEST_MAX` trainable values or weights sharded across processes), so the model saved
    is the best one seen, not one up to ``patience * every`` steps past it. A resumed run keeps the
    best since its resume.

    What they are for: an SFT priming whose job is the answer format stops as soon as the format is
    there, and an SFT baseline stops when more steps stop helping - instead of after a step count
    that over-trains on one CPU and under-trains on another (bf16 rounding slows SFT down). Without
    either happening, training runs to ``max_steps``.

    ``dataset`` must be held out from training and from the final test (a dev split), or the
    stopping point is tuned on the problems it is judged on. Every rank runs the check on the same
    rows with the same weights, so all ranks stop at the same step.
    """
    from transformers import TrainerCallback

    from core.console import console

    if metric not in TARGET_METRICS:
        raise ValueError(f"target metric must be one of {', '.join(TARGET_METRICS)}, got {metric!r}")
    if target is None and patience <= 0:
        raise ValueError("give a target value, a plateau patience, or both")
    if target is not None and not 0.0 < target <= 1.0:
        raise ValueError(f"the target {metric} must lie in (0, 1], got {target}")
    if every < 1:
        raise ValueError(f"the target check runs every N >= 1 steps, got {every}")
    plateau = Plateau(patience, min_delta) if patience > 0 else None
    prompts, golds, questions, settings, path = _check_problems(
        dataset, "the target dataset", output_dir, limit, max_new_tokens, batch_size)

    class TargetStopCallback(TrainerCallback):
        """Stop training when the held-out `metric` reaches `target` or stops rising (checked every `every` steps)."""

        def __init__(self):
            self.reached_at: int | None = None
            self.plateau_at: int | None = None
            self.plateau = plateau
            self.best_weights: dict | None = None  # trainable weights at the plateau's best check
            self.restored_step: int | None = None
            self.restore = restore_best

        def _keep_best(self, model) -> None:
            trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
            size = sum(p.numel() for _, p in trainable)
            why = ("they are sharded across processes" if any(p.numel() == 0 for _, p in trainable)
                   else f"{size:,} trainable values" if size > RESTORE_BEST_MAX else None)
            if why:
                self.restore = False
                console(f"[target] the best check's weights are not kept ({why}): the model saved is the one "
                        "at the stopping step")
                return
            self.best_weights = {name: p.detach().to("cpu", copy=True) for name, p in trainable}

        def _restore_best(self, model) -> None:
            import torch

            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in self.best_weights:
                        p.copy_(self.best_weights[name].to(p.device))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is None or state.global_step % every:
                return
            metrics, seconds = _score_now(model, tokenizer, prompts, golds, questions, settings)
            logs = _record(path, state, metrics, seconds, "target_")
            value = metrics[metric]
            reached = target is not None and value >= target
            flat = plateau is not None and plateau.update(value, state.global_step)
            if plateau is not None and self.restore and plateau.best_step == state.global_step:
                self._keep_best(model)
            goal = f"target {target:g}" if target is not None else "until it stops rising"
            line = (f"[target] step {state.global_step}: {metric} {value:.3f} ({goal}); format "
                    f"{metrics['format_rate']:.3f}, accuracy {metrics['accuracy']:.3f} on {metrics['n']} dev problems "
                    f"({seconds:.1f}s)")
            if reached:
                line += "; reached, training stops here"
            elif flat:
                line += (f"; no rise above {plateau.best:.3f} (step {plateau.best_step}) for {plateau.patience} "
                         "checks, training stops here")
            console(line)
            state.log_history.append({**logs, "step": state.global_step})
            if reached:
                self.reached_at = state.global_step
                control.should_training_stop = True
            elif flat:
                self.plateau_at = state.global_step
                control.should_training_stop = True
                if self.restore and self.best_weights is not None and plateau.best_step != state.global_step:
                    self._restore_best(model)
                    self.restored_step = plateau.best_step
                    console(f"[target] the weights of step {plateau.best_step} (the best check) are restored")

    return TargetStopCallback()


if __name__ == "__main__":
    main()
