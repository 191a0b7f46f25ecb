"""Pass-rate filtering for GRPO: keep the training problems the starting policy solves only sometimes.

GRPO learns from a group of samples only where their rewards differ: a completion's advantage is
its reward minus its group's mean. A problem the policy always solves, or never does, gives a group
of identical rewards - every advantage 0 - at the full price of generating and back-propagating it.
A trained SFT policy is nearly deterministic, so most of its groups are like that (the demo measured
3 to 6 of every 8). So before training: sample `k` completions of every training problem with the
policy GRPO starts from, count the right ones with the correctness reward's own checker
(`rewards.math.is_correct`, through `evaluate.gsm8k.score_completion`), and keep a band of pass
rates p = right / k:

    frontier      0 < p < 1 (the default): some samples right, some wrong; every group can teach
    greedy_wrong  the greedy answer is wrong and at least one sample is right: what RL with a
                  verifiable reward can turn into greedy accuracy (pass@k into pass@1)
    range         min_pass_rate <= p <= max_pass_rate

    make pass-rate MODEL=runs/sft/merged SOURCE=runs/data/train.jsonl [OUT=runs/pass-rate ARGS="--k 8"]
    python -m evaluate.pass_rate --config configs/eval/demo.yaml --model_name_or_path runs/demo/sft/merged \
        --dataset_name runs/demo/data/train.jsonl --k 8 --temperature 1.0 --output_dir runs/demo/pass_rate

Sample as GRPO will (the same `temperature` and `top_p`, and `max_new_tokens` = its
`max_completion_length`): a pass rate measured colder or hotter is another policy's. Any model
`make eval` takes works (a hub id, a directory, a LoRA adapter); any data `load_vi_gsm8k` reads.

Writes into `output_dir` (never into one that holds files):
- `pass_rates.jsonl`: every problem (question, explanation, answer) with its `k` outcomes
  (`correct`, `preds`), `passes`, `pass_rate`, the greedy answer's `greedy_correct` / `greedy_pred`
  and whether it was `kept`;
- `kept.jsonl`: the kept problems in the vi_gsm8k schema (question, explanation, answer), so GRPO
  trains on it as it is: `--dataset_name <output_dir>/kept.jsonl`;
- `report.json`: problems per band and per count of right samples, kept / total, pass@k and the
  greedy accuracy, the tokens generated (prompt tokens are processed once per sample) and the
  seconds, so a compute budget can charge the filtering to the run it serves.

An empty band ends the run with one `error:` line (after writing the files, which say why).

Why before training, and not DAPO's dynamic sampling (drop the groups whose rewards all agree and
sample more prompts until the batch is full) inside the trainer: TRL 1.12's GRPOTrainer has no
hook for it. Its `_prepare_inputs` generates one batch of fixed size from the `RepeatSampler`
and cuts it into `steps_per_generation` equal slices; refilling a batch means drawing prompts the
sampler did not hand out and generating again from inside the private, ~600-line
`_generate_and_score_completions` (vLLM, multi-process gathers and the slice bookkeeping
included) - an override that would break with the next TRL release. Dropping groups without
refilling only changes the `dapo` loss's normaliser (TRL counts the agreeing groups' tokens in
`num_items_in_batch`, so they dilute each step), which is a learning-rate rescaling, not dynamic
sampling. Filtering once, offline, removes most agreeing groups at a cost that is measured and
reported; `frac_reward_zero_std` in GRPO's metrics.jsonl shows how many remain during training.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.vi_gsm8k import DEFAULT_SOURCE, FIELDS

KEEP_RULES = ("frontier", "greedy_wrong", "range")
BANDS = ("never", "sometimes", "always")  # p = 0, 0 < p < 1, p = 1


@dataclass
class PassRateArguments:
    """What to sample and what to keep (model loading options come from `core.config.ModelArguments`).

    Fields:
        dataset_name (`str`, defaults to `"hllj/vi_gsm8k"`): hub id or local .json/.jsonl/.parquet
            file with question / explanation / answer: the problems GRPO would train on.
        dataset_split (`str`, defaults to `"train"`): hub split; ignored for a local file.
        limit (`int`, *optional*): sample a seeded random subset of this many problems.
        seed (`int`, defaults to `0`): seed of the subset and of sampling.
        system_prompt (`str`, *optional*): system message; None: `data.vi_gsm8k.SYSTEM_PROMPT`;
            "": none. Use the one GRPO trains with.
        columns (`dict[str, str]` or `str`, *optional*): your column names, as for the recipes.
        on_bad_rows (`str`, defaults to `"skip"`): `skip` or `fail` on malformed rows.
        k (`int`, defaults to `8`): samples per problem (GRPO's `num_generations` is a good choice).
        temperature (`float`, defaults to `1.0`), top_p (`float`, defaults to `1.0`): sampling, as
            GRPO samples (TRL's defaults are 1.0 and 1.0).
        max_new_tokens (`int`, defaults to `512`): completion budget (GRPO's `max_completion_length`).
        batch_size (`int`, defaults to `8`): problems per `generate` call (each expands to `k` rows).
        greedy (`bool`, defaults to `True`): also answer every problem greedily (needed by
            `keep: greedy_wrong`; reported in any case).
        keep (`str`, defaults to `"frontier"`): `frontier` (0 < p < 1), `greedy_wrong` (greedy
            wrong, p > 0) or `range` (min_pass_rate <= p <= max_pass_rate).
        min_pass_rate (`float`, defaults to `0.0`), max_pass_rate (`float`, defaults to `1.0`):
            the band of `keep: range`, both ends included.
        output_dir (`str`, defaults to `"runs/pass-rate"`): where the files go (must be empty or new).
    """

    dataset_name: str = field(default=DEFAULT_SOURCE, metadata={"help": "Hub id or local data file."})
    dataset_split: str = field(default="train", metadata={"help": "Hub split (ignored for a local file)."})
    limit: int | None = field(default=None, metadata={"help": "Seeded random subset of this many problems."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset and of sampling."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message (default: the dataset's; '' for none). Use GRPO's."}
    )
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. question=cau_hoi,explanation=loi_giai,answer=dap_an."}
    )
    on_bad_rows: str = field(default="skip", metadata={"help": "'skip' or 'fail' on malformed dataset rows."})
    k: int = field(default=8, metadata={"help": "Samples per problem (GRPO's num_generations is a good choice)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (use GRPO's)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (use GRPO's)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Completion budget (GRPO's max_completion_length)."})
    batch_size: int = field(default=8, metadata={"help": "Problems per generate call (each expands to k rows)."})
    greedy: bool = field(default=True, metadata={"help": "Also answer greedily (needed by keep: greedy_wrong)."})
    keep: str = field(default="frontier", metadata={"help": "frontier (0 < p < 1), greedy_wrong or range."})
    min_pass_rate: float = field(default=0.0, metadata={"help": "keep: range - lowest pass rate kept (included)."})
    max_pass_rate: float = field(default=1.0, metadata={"help": "keep: range - highest pass rate kept (included)."})
    output_dir: str = field(default="runs/pass-rate", metadata={"help": "Output directory (new or empty)."})


# ------------------------------------------------------------------------------ pure functions
def band(passes: int, k: int) -> str:
    """`never` (no sample right), `always` (all right) or `sometimes`."""
    return "never" if passes == 0 else "always" if passes == k else "sometimes"


def check_rule(keep: str, min_pass_rate: float, max_pass_rate: float, greedy: bool) -> None:
    """ValueError, saying what to change, for a keep rule that cannot work."""
    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}")
    if keep == "greedy_wrong" and not greedy:
        raise ValueError("keep: greedy_wrong needs the greedy answers; set greedy: true")
    if keep == "range" and not 0.0 <= min_pass_rate <= max_pass_rate <= 1.0:
        raise ValueError(f"keep: range needs 0 <= min_pass_rate <= max_pass_rate <= 1, got {min_pass_rate} and "
                         f"{max_pass_rate}")


def rule_text(keep: str, min_pass_rate: float = 0.0, max_pass_rate: float = 1.0) -> str:
    """The keep rule in words, for reports."""
    if keep == "frontier":
        return "0 < p < 1"
    if keep == "greedy_wrong":
        return "greedy answer wrong, p > 0"
    return f"{min_pass_rate:g} <= p <= {max_pass_rate:g}"


def keeps(row: dict[str, Any], keep: str, min_pass_rate: float = 0.0, max_pass_rate: float = 1.0) -> bool:
    """Whether a scored problem (`passes`, `k`, `pass_rate`, `greedy_correct`) falls in the band."""
    if keep == "frontier":
        return 0 < row["passes"] < row["k"]
    if keep == "greedy_wrong":
        return row["passes"] > 0 and row["greedy_correct"] is False
    return min_pass_rate <= row["pass_rate"] <= max_pass_rate


def outcome_row(problem: dict[str, Any], completions: Sequence[str], greedy: str | None) -> dict[str, Any]:
    """One problem with the outcomes of its samples (and of its greedy answer when given)."""
    from evaluate.gsm8k import score_completion

    scored = [score_completion(text, problem["answer"]) for text in completions]
    passes = sum(s["correct"] for s in scored)
    row = {name: problem[name] for name in FIELDS}
    row.update(k=len(scored), passes=passes, pass_rate=passes / len(scored), band=band(passes, len(scored)),
               correct=[s["correct"] for s in scored], preds=[s["pred"] for s in scored])
    if greedy is not None:
        greedy_scored = score_completion(greedy, problem["answer"])
        row.update(greedy_correct=greedy_scored["correct"], greedy_pred=greedy_scored["pred"])
    return row


def summarize(rows: Sequence[dict[str, Any]], keep: str, min_pass_rate: float = 0.0,
              max_pass_rate: float = 1.0) -> dict[str, Any]:
    """The report's counts: problems per band and per number of right samples, how many were
    kept, pass@k, the mean pass rate and (with greedy answers) the greedy accuracy and the
    problems where greedy and sampling disagree."""
    if not rows:
        raise ValueError("no problems to summarize")
    k = rows[0]["k"]
    report: dict[str, Any] = {
        "n": len(rows),
        "k": k,
        "keep": keep,
        "rule": rule_text(keep, min_pass_rate, max_pass_rate),
        "kept": sum(bool(r["kept"]) for r in rows),
        "bands": {name: sum(r["band"] == name for r in rows) for name in BANDS},
        "right_samples": [sum(r["passes"] == c for r in rows) for c in range(k + 1)],  # problems with c of k right
        "mean_pass_rate": sum(r["pass_rate"] for r in rows) / len(rows),
        f"pass@{k}": sum(r["passes"] > 0 for r in rows) / len(rows),
    }
    if all("greedy_correct" in r for r in rows):
        report["greedy_accuracy"] = sum(r["greedy_correct"] for r in rows) / len(rows)
        report["greedy_wrong_some_right"] = sum(not r["greedy_correct"] and r["passes"] > 0 for r in rows)
        report["greedy_right_some_wrong"] = sum(r["greedy_correct"] and r["passes"] < k for r in rows)
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report in a few printed lines."""
    n, k, bands = report["n"], report["k"], report["bands"]
    lines = [f"{n} problems, {k} samples each: never right (p = 0) {bands['never']}, sometimes (0 < p < 1) "
             f"{bands['sometimes']}, always (p = 1) {bands['always']}; mean pass rate "
             f"{report['mean_pass_rate']:.3f}, pass@{k} {report[f'pass@{k}']:.3f}",
             f"right samples per problem (0..{k}): {' '.join(str(c) for c in report['right_samples'])}"]
    if "greedy_accuracy" in report:
        lines.append(f"greedy accuracy {report['greedy_accuracy']:.3f}; greedy wrong but some sample right: "
                     f"{report['greedy_wrong_some_right']}; greedy right but some sample wrong: "
                     f"{report['greedy_right_some_wrong']}")
    lines.append(f"kept {report['kept']} of {n} ({report['keep']}: {report['rule']})")
    return lines


# ---------------------------------------------------------------------------------- model run
def filter_problems(argv: list[str] | None = None) -> dict[str, Any]:
    """Load the policy, sample, score, write the files; returns the report."""
    from core.adapters import adapter_base
    from core.cli import UserError
    from core.config import ModelArguments, parse_args
    from core.files import write_json_atomic, write_jsonl_atomic
    from core.models import load_model_and_tokenizer
    from core.runs import write_run_info
    from data.vi_gsm8k import SYSTEM_PROMPT, load_vi_gsm8k
    from evaluate.generation import DecodingSettings, generate, render_prompts

    margs, args = parse_args([ModelArguments, PassRateArguments], argv)
    if not margs.model_name_or_path:
        raise UserError("no policy to sample: pass --model_name_or_path (make pass-rate MODEL=...)")
    if args.on_bad_rows not in ("skip", "fail"):
        raise UserError(f"on_bad_rows must be 'skip' or 'fail', got {args.on_bad_rows!r}")
    if args.k < 2:
        raise UserError(f"k must be at least 2: one sample cannot tell sometimes from always, got {args.k}")
    try:
        check_rule(args.keep, args.min_pass_rate, args.max_pass_rate, args.greedy)
        sampling = DecodingSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, num_samples=args.k,
                                    do_sample=True, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    except ValueError as err:
        raise UserError(str(err)) from None
    out = Path(args.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already holds files; pass --output_dir NEW_DIR (nothing is overwritten)")

    system_prompt = SYSTEM_PROMPT if args.system_prompt is None else args.system_prompt
    dataset = load_vi_gsm8k(args.dataset_name, args.dataset_split, args.on_bad_rows, args.limit, args.seed,
                            system_prompt, columns=args.columns)
    print(f"[pass-rate] {len(dataset)} problems from {args.dataset_name}; {sampling.describe()}"
          + (" and greedy" if args.greedy else "") + f", {args.max_new_tokens} new tokens at most", flush=True)

    model_path = str(Path(margs.model_name_or_path).expanduser())
    adapter = model_path if Path(model_path).is_dir() and adapter_base(model_path) else None
    model, tokenizer = load_model_and_tokenizer(margs, seed=args.seed, for_training=False)
    if margs.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    prompts = list(dataset["prompt"])
    sampled = generate(model, tokenizer, prompts, sampling, lora_path=adapter, desc="pass rate")
    greedy = None
    if args.greedy:
        greedy = generate(model, tokenizer, prompts, DecodingSettings(max_new_tokens=args.max_new_tokens,
                                                                      batch_size=args.batch_size),
                          lora_path=adapter, desc="greedy")

    rows = []
    for i, problem in enumerate(dataset):
        row = outcome_row(problem, sampled.texts[i], None if greedy is None else greedy.texts[i][0])
        row["kept"] = keeps(row, args.keep, args.min_pass_rate, args.max_pass_rate)
        rows.append(row)
    report = summarize(rows, args.keep, args.min_pass_rate, args.max_pass_rate)
    # What the filtering cost, for a compute budget: every sample (and the greedy answer) runs its
    # prompt through the model once and then its own completion tokens.
    texts, templated = render_prompts(tokenizer, prompts)
    prompt_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=not templated)["input_ids"])
    answers_per_prompt = args.k + (1 if greedy is not None else 0)
    report["tokens"] = {"prompt": prompt_tokens * answers_per_prompt,
                        "completion": sampled.total_tokens + (greedy.total_tokens if greedy is not None else 0),
                        "sequences": len(rows) * answers_per_prompt}
    report["seconds"] = round(sampled.elapsed + (greedy.elapsed if greedy is not None else 0.0), 2)
    report["settings"] = {"model": margs.model_name_or_path, "dataset": args.dataset_name, "limit": args.limit,
                          "seed": args.seed, "decoding": sampling.describe(), "max_new_tokens": args.max_new_tokens,
                          "greedy": args.greedy, "system_prompt": system_prompt}

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "pass_rates.jsonl", rows)
    write_jsonl_atomic(out / "kept.jsonl", [{name: r[name] for name in FIELDS} for r in rows if r["kept"]])
    write_json_atomic(out / "report.json", report)
    write_run_info(str(out), margs, args, extra={"step": "pass_rate"})
    for line in report_lines(report):
        print(f"[pass-rate] {line}")
    print(f"[pass-rate] wrote {out}/kept.jsonl, pass_rates.jsonl, report.json")
    if report["kept"] == 0:
        raise UserError(f"no problem fell in the band {report['rule']} (problems per band: {report['bands']}); "
                        "widen it (--keep range --min_pass_rate ... --max_pass_rate ...), sample more (--k) or "
                        f"sample hotter (--temperature); {out}/pass_rates.jsonl has every outcome")
    return report


def main(argv: list[str] | None = None) -> None:
    import core.boot  # noqa: F401  (Unsloth before transformers, as in every entry point)
    from core.cli import run_cli

    run_cli(filter_problems, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
