"""Does the model prefer what the user prefers? Held-out preference pairs, scored by log-probability.

For each held-out pair (prompt x, chosen y_c, rejected y_r) the model scores each answer by the sum of
its token log-probabilities given the prompt, log pi(y|x), tokenized exactly as TRL's DPOTrainer does
(chat template; the answer's tokens after the prompt's generation prompt). Metrics:

    preference_accuracy   share of pairs with log pi(y_c|x) > log pi(y_r|x)   (no reference needed)
    mean_margin           mean of log pi(y_c|x) - log pi(y_r|x)
    preference_accuracy_per_token   the same comparison with log-probs divided by answer length
                          (sums favour short answers; this does not)
    mean_logp_chosen / mean_logp_rejected   mean summed log-prob of each side
    reward_accuracy, reward_margin   with a reference model pi_ref, DPO's implicit reward
                          r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)): share of pairs with
                          r(x, y_c) > r(x, y_r), and the mean of r(x, y_c) - r(x, y_r). This is what
                          DPO optimises (TRL logs it as rewards/accuracies and rewards/margins).

A LoRA model is scored in each of its states: the base (adapter off), the reference adapter when
there is one (TRL's copy of the starting adapter, e.g. after an SFT pass), and the trained policy;
so "before" and "after" come from one loaded model. A few greedy generations for fixed Vietnamese
instructions are written side by side to a Markdown file, and the metrics go to the comparison
table (`evaluate.report`, task "preference").

    python -m evaluate.preference --model_name_or_path runs/dpo/adapter \\
        --dataset_name data/fixtures/preference_sample.jsonl --test_size 0.25 --results_dir runs/eval
"""

from __future__ import annotations

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)

# isort: split
import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.adapters import adapter_base
from core.cli import run_cli
from core.config import ModelArguments, parse_args
from core.files import write_json_atomic as write_json
from core.files import write_text_atomic
from core.models import load_model_and_tokenizer
from data.preference import DEFAULT_SOURCE, load_preference, resolve_system_prompt
from evaluate.generation import drop_cut_character
from evaluate.report import record_result

TASK = "preference"
# Fixed instructions for the side-by-side generations: varied, short, and in Vietnamese, so that a
# model answering in English or refusing is visible at a glance.
VI_INSTRUCTIONS = [
    "Giải thích ngắn gọn vì sao bầu trời có màu xanh.",
    "Hãy cho tôi ba lời khuyên để học tiếng Anh hiệu quả.",
    "Viết một lời chúc mừng sinh nhật ngắn gửi đến mẹ.",
    "Thủ đô của Nhật Bản là thành phố nào? Kể tên một địa điểm nổi tiếng ở đó.",
    "Tóm tắt lợi ích của việc tập thể dục mỗi ngày trong hai câu.",
    "Làm thế nào để tiết kiệm điện trong gia đình?",
]


# ------------------------------------------------------------------------------------ scoring
def _chat_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt)["input_ids"]
    return list(ids)


def tokenize_pair(tokenizer, row: dict[str, Any], max_length: int | None = None) -> dict[str, Any]:
    """Token ids of prompt+chosen and prompt+rejected, and where each answer starts.

    The same split as TRL's DPOTrainer: the prompt is the chat template with the generation prompt,
    the answer is what the full conversation adds after it; sequences longer than `max_length`
    lose their end (TRL's `keep_start`).
    """
    prompt = _chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    out = {"prompt_len": len(prompt)}
    for side in ("chosen", "rejected"):
        full = _chat_ids(tokenizer, row["prompt"] + row[side], add_generation_prompt=False)
        if full[: len(prompt)] != prompt:  # templates that rewrite the prompt when an answer follows
            full = prompt + full[len(prompt):]
        out[side] = full[:max_length] if max_length else full
    return out


def fits(tokenizer, row: dict[str, Any], max_length: int | None) -> bool:
    """True when at least one answer token fits after the prompt (TRL's own filter)."""
    return not max_length or len(_chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)) < max_length


@torch.no_grad()
def score_pairs(model, tokenizer, pairs, batch_size: int = 4, max_length: int | None = 1024) -> list[dict[str, float]]:
    """Summed log-probability of the chosen and rejected answer of every pair under `model` as it is now.

    Returns one dict per pair: chosen_logp, rejected_logp, chosen_tokens, rejected_tokens.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenize_pair(tokenizer, row, max_length) for row in pairs]
    results = []
    try:
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start:start + batch_size]
            seqs = [e["chosen"] for e in batch] + [e["rejected"] for e in batch]
            starts = [e["prompt_len"] for e in batch] * 2
            width = max(len(s) for s in seqs)
            input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                input_ids[i, : len(s)] = torch.tensor(s)
                attention[i, : len(s)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
            sums, counts = [], []
            for i, s in enumerate(seqs):
                # Token t is predicted by position t-1; the answer is tokens [start, len(s)).
                answer = torch.tensor(s[starts[i]:], device=device)
                if len(answer) == 0:
                    raise ValueError(f"pair {start + i % len(batch)}: the prompt fills max_length {max_length}; "
                                     "filter pairs with fits() first")
                logprobs = torch.log_softmax(logits[i, starts[i] - 1: len(s) - 1].float(), dim=-1)
                sums.append(logprobs.gather(-1, answer[:, None]).sum().item())
                counts.append(len(answer))
            n = len(batch)
            for j in range(n):
                results.append({"chosen_logp": sums[j], "rejected_logp": sums[n + j],
                                "chosen_tokens": counts[j], "rejected_tokens": counts[n + j]})
    finally:
        model.train(was_training)
    return results


def preference_metrics(scores: list[dict[str, float]], reference: list[dict[str, float]] | None = None,
                       beta: float = 0.1) -> dict[str, float]:
    """Aggregate per-pair scores (see the module docstring for each metric's definition)."""
    n = len(scores)
    if n == 0:
        raise ValueError("no pairs to score")
    margins = [s["chosen_logp"] - s["rejected_logp"] for s in scores]

    def per_token(s, side):
        return s[f"{side}_logp"] / max(1, s[f"{side}_tokens"])

    metrics = {
        "pairs": n,
        "preference_accuracy": sum(m > 0 for m in margins) / n,
        "mean_margin": sum(margins) / n,
        "preference_accuracy_per_token": sum(per_token(s, "chosen") > per_token(s, "rejected") for s in scores) / n,
        "mean_logp_chosen": sum(s["chosen_logp"] for s in scores) / n,
        "mean_logp_rejected": sum(s["rejected_logp"] for s in scores) / n,
    }
    if reference is not None:
        rewards = [
            (beta * (s["chosen_logp"] - r["chosen_logp"]), beta * (s["rejected_logp"] - r["rejected_logp"]))
            for s, r in zip(scores, reference, strict=True)
        ]
        metrics["reward_accuracy"] = sum(c > r for c, r in rewards) / n
        metrics["reward_margin"] = sum(c - r for c, r in rewards) / n
        metrics["reward_chosen"] = sum(c for c, _ in rewards) / n
        metrics["reward_rejected"] = sum(r for _, r in rewards) / n
    return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}


# --------------------------------------------------------------------------------- model states
@contextlib.contextmanager
def model_state(model, state: str):
    """Run the block with a LoRA model as `base` (adapter off), `reference` (TRL's "ref" adapter) or `policy`."""
    if state == "policy":
        yield model
    elif state == "base":
        with model.disable_adapter():
            yield model
    elif state == "reference":
        active = model.active_adapter
        model.set_adapter("ref")
        try:
            yield model
        finally:
            model.set_adapter(active)
    else:
        raise ValueError(f"unknown model state {state!r}")


def evaluate_states(model, tokenizer, pairs, states: dict[str, str], beta: float = 0.1,
                    reference_state: str | None = None, batch_size: int = 4,
                    max_length: int | None = 1024) -> dict[str, dict[str, float]]:
    """Metrics for each `{run_name: state}`; the last state's reward metrics are relative to `reference_state`."""
    kept = [row for row in pairs if fits(tokenizer, row, max_length)]
    if len(kept) < len(pairs):  # TRL's DPOTrainer drops these pairs too: no answer token is left
        print(f"[eval] {len(pairs) - len(kept)} pair(s) skipped: the prompt alone fills max_length {max_length}")
    if not kept:
        raise ValueError(f"every pair's prompt fills max_length {max_length}; raise max_length")
    pairs = kept
    scores = {}
    for name, state in states.items():
        with model_state(model, state):
            scores[name] = score_pairs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    ref_name = next((n for n, s in states.items() if s == reference_state), None)
    last = list(states)[-1]
    out = {}
    for name in states:
        reference = scores[ref_name] if (name == last and ref_name is not None and ref_name != last) else None
        out[name] = preference_metrics(scores[name], reference, beta)
    return out


# --------------------------------------------------------------------------------- generations
@torch.no_grad()
def generate(model, tokenizer, instructions: list[str], system_prompt: str | None, max_new_tokens: int = 128) -> list[str]:
    """Greedy answers to `instructions` (one left-padded batch)."""
    messages = [([{"role": "system", "content": system_prompt}] if system_prompt else [])
                + [{"role": "user", "content": text}] for text in instructions]
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model.generate(**batch.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    finally:
        model.train(was_training)
    answers = []
    for row in out.tolist():
        new = row[batch["input_ids"].shape[1]:]
        text = tokenizer.decode(new, skip_special_tokens=True)
        # Stopped by max_new_tokens rather than eos: the last character may be cut in half.
        answers.append((text if tokenizer.eos_token_id in new else drop_cut_character(text)).strip())
    return answers


def side_by_side(model, tokenizer, states: dict[str, str], instructions: list[str], system_prompt: str | None,
                 max_new_tokens: int = 128) -> str:
    """Markdown: each instruction, then every state's answer under its run name."""
    answers = {}
    for name, state in states.items():
        with model_state(model, state):
            answers[name] = generate(model, tokenizer, instructions, system_prompt, max_new_tokens)
    lines = ["# Generations, side by side", "",
             f"Greedy decoding, at most {max_new_tokens} new tokens. System prompt: {system_prompt or '(none)'}", ""]
    for i, text in enumerate(instructions):
        lines += [f"## {i + 1}. {text}", ""]
        for name in states:
            quoted = "\n".join("> " + line for line in (answers[name][i] or "(empty)").splitlines())
            lines += [f"**{name}**", "", quoted, ""]
    return "\n".join(lines)


def held_out_description(dataset_name: str, test_size: float, split_seed: int) -> str:
    """What a preference evaluation scored, for the comparison table: the pairs' source and split."""
    return f"{dataset_name} held-out (test_size {test_size:g}, seed {split_seed})"


def report(model, tokenizer, pairs, states: dict[str, str], out_dir: str | Path, results_dir: str | Path,
           beta: float = 0.1, reference_state: str | None = None, batch_size: int = 4,
           max_length: int | None = 1024, generations: int = 4, system_prompt: str | None = None,
           max_new_tokens: int = 128, dataset: str | None = None) -> dict[str, dict[str, float]]:
    """Score `pairs` in each state, write `preference_eval.json` (+ generations) to `out_dir`, record in
    `results_dir` (``dataset`` names the pairs there: `held_out_description`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_states(model, tokenizer, pairs, states, beta=beta, reference_state=reference_state,
                              batch_size=batch_size, max_length=max_length)
    for name, m in metrics.items():
        shown = ", ".join(f"{k}={v}" for k, v in m.items() if k != "pairs")
        print(f"[eval] {name} ({m['pairs']} held-out pairs): {shown}")
        record_result(results_dir, TASK, name, {**m, **({"dataset": dataset} if dataset else {})})
    write_json(out_dir / "preference_eval.json", {"beta": beta, "states": states, "metrics": metrics})
    if generations > 0:
        md = side_by_side(model, tokenizer, states, VI_INSTRUCTIONS[:generations], system_prompt, max_new_tokens)
        write_text_atomic(out_dir / "preference_generations.md", md)
        print(f"[eval] generations: {out_dir / 'preference_generations.md'}")
    print(f"[eval] comparison: {Path(results_dir) / 'comparison.md'}")
    return metrics


# ----------------------------------------------------------------------------------------- CLI
@dataclass
class PreferenceEvalArguments:
    """Options of `python -m evaluate.preference` (model options come from ModelArguments).

    Fields:
        dataset_name (`str`): hub id or local file of preference pairs; use the DPO run's own
            dataset_name/test_size/split_seed so that the same pairs are held out.
        dataset_split (`str`, defaults to `"train"`): hub split.
        test_size (`float`, defaults to `0.1`): held-out fraction (< 1) or count (>= 1); 0 scores every pair.
        split_seed (`int`, defaults to `0`): seed of the held-out split.
        system_prompt (`str`, defaults to `"en"`): `en`, `vi`, `none` or the text.
        max_pairs (`int`, *optional*): score at most this many held-out pairs.
        beta (`float`, defaults to `0.1`): DPO's beta, scaling the implicit reward.
        batch_size (`int`, defaults to `4`): pairs per forward pass.
        max_length (`int`, defaults to `1024`): longest prompt + answer, as in DPOConfig.
        run_name (`str`, *optional*): row name in the comparison (default: the adapter's run directory).
        base_run_name (`str`, *optional*): row name for the base model when scoring an adapter
            (default: the base model's directory name; `none` to skip).
        results_dir (`str`, defaults to `"runs/eval"`): where results.json / comparison.md live.
        output_dir (`str`, *optional*): where preference_eval.json and the generations go
            (default: results_dir/preference-<run_name>).
        generations (`int`, defaults to `4`): fixed Vietnamese instructions to answer side by side (0: none).
        max_new_tokens (`int`, defaults to `128`): generation length.
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{question: cau_hoi, chosen: tot, rejected: kem}` in YAML or
            `question=cau_hoi,chosen=tot,rejected=kem` on the command line.
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
    """

    dataset_name: str = field(default=DEFAULT_SOURCE, metadata={"help": "Hub id or local file of preference pairs."})
    dataset_split: str = field(default="train", metadata={"help": "Hub split."})
    test_size: float = field(default=0.1, metadata={"help": "Held-out fraction (<1) or count (>=1); 0 = all pairs."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the held-out split."})
    system_prompt: str = field(default="en", metadata={"help": "'en', 'vi', 'none' or the system prompt text."})
    max_pairs: int | None = field(default=None, metadata={"help": "Score at most this many held-out pairs."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta scaling the implicit reward."})
    batch_size: int = field(default=4, metadata={"help": "Pairs per forward pass."})
    max_length: int = field(default=1024, metadata={"help": "Longest prompt + answer in tokens."})
    run_name: str | None = field(default=None, metadata={"help": "Row name in the comparison table."})
    base_run_name: str | None = field(default=None, metadata={"help": "Row name for the base model ('none' skips)."})
    results_dir: str = field(default="runs/eval", metadata={"help": "Directory of results.json / comparison.md."})
    output_dir: str | None = field(default=None, metadata={"help": "Where preference_eval.json and generations go."})
    generations: int = field(default=4, metadata={"help": "Fixed Vietnamese instructions answered side by side."})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens per generated answer."})
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. question=cau_hoi,chosen=tot,rejected=kem."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )


def split_size(test_size: float) -> float | int:
    """YAML/CLI test_size: a fraction below 1, a count of pairs from 1 up."""
    return int(test_size) if test_size >= 1 else float(test_size)


def main(argv: list[str] | None = None) -> None:
    """`python -m evaluate.preference`: score one model (an adapter also as its base) and record it."""
    args, margs = parse_args([PreferenceEvalArguments, ModelArguments], argv)
    train, held = load_preference(args.dataset_name, args.dataset_split, args.system_prompt,
                                  test_size=split_size(args.test_size), seed=args.split_seed, columns=args.columns,
                                  bad_rows_out=args.bad_rows_out)
    pairs = held if held is not None else train
    if args.max_pairs:
        pairs = pairs.select(range(min(args.max_pairs, len(pairs))))
    name = margs.model_name_or_path or ""
    base = adapter_base(name) if Path(name).is_dir() else None
    model, tokenizer = load_model_and_tokenizer(margs, for_training=False)  # scoring: no new adapter
    path = Path(name)
    run_name = args.run_name or (path.parent.name if path.name == "adapter" else path.name)
    states = {}
    if base is not None and (args.base_run_name or "").lower() != "none":
        states[args.base_run_name or Path(base).name] = "base"
    states[run_name] = "policy"
    out_dir = args.output_dir or str(Path(args.results_dir) / f"preference-{run_name}")
    report(model, tokenizer, list(pairs), states, out_dir, args.results_dir, beta=args.beta,
           reference_state="base" if base is not None else None, batch_size=args.batch_size,
           max_length=args.max_length, generations=args.generations,
           system_prompt=resolve_system_prompt(args.system_prompt), max_new_tokens=args.max_new_tokens,
           dataset=held_out_description(args.dataset_name, args.test_size, args.split_seed))
    print(json.dumps({"run": run_name, "output_dir": out_dir}, ensure_ascii=False))


if __name__ == "__main__":
    run_cli(main)
