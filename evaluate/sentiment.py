"""Sentiment steering evaluation: how negative, how diverse and how fluent a policy writes.

For held-out prompts (the first words of feedback sentences, as in training), N responses per
prompt are sampled with the PPO run's generation settings and scored by the reward classifier the
same way PPO scored them. Metrics:

- `<label>_share` for every classifier label (`negative_share` is the headline): share of
  samples the classifier assigns that label (argmax);
- `mean_reward`, `median_reward`: the PPO reward (e.g. the raw "negative" logit);
- `distinct_1`, `distinct_2`: distinct word uni-/bigrams over all responses / their count
  (diversity: reward hacking often collapses onto one phrase);
- `perplexity`: of the responses given their prompts under the reference model (the LM before
  PPO): fluency as the KL penalty sees it.

It reads a PPO config, so one command compares the policy before PPO (`model_name_or_path`) with
the one PPO saved in `output_dir`:

    make eval-sentiment CONFIG=configs/ppo/tiny.yaml
    python -m evaluate.sentiment --config configs/ppo/gpt2-vietnamese.yaml --num_prompts 200
    python -m evaluate.sentiment --config configs/ppo/tiny.yaml --eval_model DIR --eval_run_name mine \
        --compare_before false

Writes `eval_output_dir/<run>/predictions.jsonl` and `metrics.json` per policy, and records each
run under the task "sentiment" in `results_dir` (results.json, comparison.md, comparison.png).
Generation is plain-text continuation, so the chat-template requirement of the loader is off.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.files import write_jsonl_atomic


@dataclass
class SentimentEvalArguments:
    """What to evaluate and where to write (the PPO config supplies model, reward and prompts).

    Fields:
        eval_model (`str`, *optional*): policy to evaluate; defaults to the policy the PPO run
            saved in `output_dir` (`model`, else `merged`, else `adapter`).
        eval_run_name (`str`, *optional*): its row in the comparison; defaults to
            `<output_dir name>-after`.
        compare_before (`bool`, defaults to `True`): also evaluate `model_name_or_path` (the policy
            PPO started from) as `<output_dir name>-before`.
        reference_model (`str`, *optional*): model for the perplexity; defaults to
            `model_name_or_path` (PPO's reference). Empty string: no perplexity.
        num_prompts (`int`, defaults to `50`): held-out prompts (from `dataset_eval_split`).
        samples_per_prompt (`int`, defaults to `4`): sampled responses per prompt.
        eval_batch_size (`int`, defaults to `16`): prompts per generate call.
        eval_seed (`int`, defaults to `1234`): sampling seed (the same for every policy).
        eval_output_dir (`str`, defaults to `"runs/eval/sentiment"`): per-run predictions/metrics.
        results_dir (`str`, defaults to `"runs/eval"`): where the comparison is recorded.
    """

    eval_model: str | None = field(default=None, metadata={"help": "Policy to evaluate (default: PPO's output)."})
    eval_run_name: str | None = field(default=None, metadata={"help": "Name of that run in the comparison."})
    compare_before: bool = field(default=True, metadata={"help": "Also evaluate PPO's starting policy."})
    reference_model: str | None = field(default=None, metadata={"help": "Model for perplexity ('' for none)."})
    num_prompts: int = field(default=50, metadata={"help": "Held-out prompts to sample from."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Responses per prompt."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generate call."})
    eval_seed: int = field(default=1234, metadata={"help": "Sampling seed."})
    eval_output_dir: str = field(default="runs/eval/sentiment", metadata={"help": "Per-run outputs."})
    results_dir: str = field(default="runs/eval", metadata={"help": "Comparison directory."})


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all texts divided by their total count (0.0 when there are none)."""
    total, seen = 0, set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def summarize(rows: list[dict[str, Any]], labels: Sequence[str], perplexity: float | None) -> dict[str, Any]:
    """Metrics from prediction rows (`response`, `reward`, `predicted`)."""
    rewards = [r["reward"] for r in rows]
    responses = [r["response"] for r in rows]
    metrics: dict[str, Any] = {}
    for label in labels:
        metrics[f"{label}_share"] = sum(r["predicted"] == label for r in rows) / len(rows)
    metrics.update(
        mean_reward=statistics.fmean(rewards),
        median_reward=statistics.median(rewards),
        distinct_1=distinct_n(responses, 1),
        distinct_2=distinct_n(responses, 2),
        perplexity=perplexity,
        mean_response_words=statistics.fmean(len(t.split()) for t in responses),
        n_samples=len(rows),
    )
    return metrics


def sample_responses(model, tokenizer, prompts: list[str], samples_per_prompt: int, max_new_tokens: int,
                     temperature: float, stop_token_id: int | None, batch_size: int, seed: int) -> list[list[str]]:
    """`samples_per_prompt` sampled continuations per prompt (left-padded batches, like PPO's rollouts)."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    torch.manual_seed(seed)
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            generated = model.generate(
                **batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, num_return_sequences=samples_per_prompt,
                eos_token_id=stop_token_id, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        out.extend(texts[i:i + samples_per_prompt] for i in range(0, len(texts), samples_per_prompt))
    return out


def response_perplexity(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16) -> float:
    """exp(mean token NLL) of each response given its prompt, over all response tokens."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, response in zip(prompts[start:start + batch_size], responses[start:start + batch_size], strict=True):
            prompt_ids = tokenizer(prompt)["input_ids"]
            full_ids = tokenizer(prompt + response)["input_ids"]
            # Score from the first token where prompt+response stops matching the prompt alone
            # (a BPE merge across the boundary moves it by one token at most).
            keep = 0
            while keep < min(len(prompt_ids), len(full_ids)) and prompt_ids[keep] == full_ids[keep]:
                keep += 1
            rows.append((full_ids, max(keep, 1)))
        width = max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (ids, first) in enumerate(rows):  # right padding: positions start at 0
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention[i, :len(ids)] = 1
            labels[i, first:len(ids)] = torch.tensor(ids[first:], dtype=torch.long)
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((shift_labels != -100).sum())
    return float(torch.exp(torch.tensor(total_nll / total_tokens))) if total_tokens else float("nan")


def final_policy(output_dir: str) -> str | None:
    """The policy a PPO run saved: `model` (full), else `merged`, else `adapter`."""
    for name in ("model", "merged", "adapter"):
        if (Path(output_dir) / name / "config.json").is_file() or (Path(output_dir) / name / "adapter_config.json").is_file():
            return str(Path(output_dir) / name)
    return None


def sample_and_score(model_path: str, margs, sargs, pargs, eargs, prompts: list[str], scorer) -> list[dict[str, Any]]:
    """Sample `samples_per_prompt` responses per prompt from one policy and score them as PPO did."""
    import dataclasses

    import torch

    from core.models import load_model_and_tokenizer

    policy_args = dataclasses.replace(margs, model_name_or_path=model_path, use_peft=False, require_chat_template=False)
    model, tokenizer = load_model_and_tokenizer(policy_args, seed=eargs.eval_seed, for_training=False)
    stop_token_id = tokenizer.eos_token_id if pargs.stop_token == "eos" else pargs.stop_token_id
    samples = sample_responses(model, tokenizer, prompts, eargs.samples_per_prompt, pargs.response_length,
                               pargs.temperature, stop_token_id, eargs.eval_batch_size, eargs.eval_seed)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    flat_prompts = [p for p, group in zip(prompts, samples, strict=True) for _ in group]
    responses = [r for group in samples for r in group]
    scored = [(p + r) if sargs.reward_text == "full" else r for p, r in zip(flat_prompts, responses, strict=True)]
    logits = scorer.logits(scored)
    rewards = scorer.scores_from_logits(logits).tolist()
    probs = logits.softmax(-1)
    return [{"prompt": p, "response": r, "scored_text": s, "reward": w, "predicted": scorer.labels[int(pr.argmax())],
             "probs": {label: round(float(x), 4) for label, x in zip(scorer.labels, pr, strict=True)}}
            for p, r, s, w, pr in zip(flat_prompts, responses, scored, rewards, probs, strict=True)]


def main(argv: list[str] | None = None) -> None:
    from trl.experimental.ppo import PPOConfig

    from core.adapters import is_local_path
    from core.cli import UserError
    from core.config import ModelArguments, RunArguments, parse_args
    from core.files import write_json_atomic as write_json
    from core.models import load_model_and_tokenizer
    from data.students_feedback import load_prompts
    from evaluate.report import record_result
    from rewards.sentiment import PPOScriptArguments, SentimentScorer

    margs, sargs, run, pargs, eargs = parse_args(
        [ModelArguments, PPOScriptArguments, RunArguments, PPOConfig, SentimentEvalArguments], argv)
    if not sargs.reward_model or (is_local_path(sargs.reward_model) and not os.path.isdir(sargs.reward_model)):
        raise UserError(f"reward model not found: {sargs.reward_model!r} (run `make reward-model` first)")
    name = Path(pargs.output_dir).name
    runs: list[tuple[str, str]] = []
    if eargs.compare_before:
        runs.append((f"{name}-before", margs.model_name_or_path))
    after = eargs.eval_model or final_policy(pargs.output_dir)
    if after is None:
        raise UserError(f"no trained policy in {pargs.output_dir} (run `make ppo` first, or pass --eval_model)")
    runs.append((eargs.eval_run_name or f"{name}-after", after))

    prompts = list(load_prompts(sargs.dataset_name, sargs.dataset_eval_split, run.on_bad_rows,
                                min_chars=sargs.prompt_min_chars, min_words=sargs.prompt_min_words,
                                max_words=sargs.prompt_max_words, limit=eargs.num_prompts, seed=sargs.split_seed,
                                validation_size=sargs.validation_size, columns=sargs.columns,
                                bad_rows_out=sargs.bad_rows_out)["prompt"])
    print(f"[data] {len(prompts)} held-out prompts x {eargs.samples_per_prompt} samples, "
          f"{pargs.response_length} tokens at temperature {pargs.temperature}")
    scorer = SentimentScorer(sargs.reward_model, label=sargs.reward_label, score=sargs.reward_score,
                             batch_size=sargs.reward_batch_size, device=sargs.reward_device)

    predictions = {run_name: sample_and_score(path, margs, sargs, pargs, eargs, prompts, scorer)
                   for run_name, path in runs}

    # Fluency: every policy's samples under the one reference model (loaded once).
    perplexities: dict[str, float | None] = {run_name: None for run_name, _ in runs}
    reference = margs.model_name_or_path if eargs.reference_model is None else eargs.reference_model
    if reference:
        import dataclasses

        ref_args = dataclasses.replace(margs, model_name_or_path=reference, use_peft=False, require_chat_template=False)
        ref, ref_tokenizer = load_model_and_tokenizer(ref_args, seed=eargs.eval_seed, for_training=False)
        for run_name, rows in predictions.items():
            perplexities[run_name] = response_perplexity(ref, ref_tokenizer, [r["prompt"] for r in rows],
                                                         [r["response"] for r in rows], eargs.eval_batch_size)
        del ref

    for run_name, path in runs:
        rows = predictions[run_name]
        metrics = summarize(rows, scorer.labels, perplexities[run_name])
        metrics.update(model=path, reward_model=sargs.reward_model, reward=f"{sargs.reward_score} of {scorer.label}",
                       reference_model=reference or None, n_prompts=len(prompts),
                       dataset=f"{sargs.dataset_name} ({sargs.dataset_eval_split} prompts)")
        out = Path(eargs.eval_output_dir) / run_name
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(out / "predictions.jsonl", rows)
        write_json(out / "metrics.json", metrics)
        table = record_result(eargs.results_dir, "sentiment", run_name, metrics)
        ppl = "n/a" if metrics["perplexity"] is None else f"{metrics['perplexity']:.1f}"
        print(f"[eval] {run_name}: negative share {metrics.get('negative_share', float('nan')):.3f}, mean reward "
              f"{metrics['mean_reward']:.3f}, distinct-2 {metrics['distinct_2']:.3f}, perplexity {ppl} -> {table}")

if __name__ == "__main__":
    import core.boot  # noqa: F401  (Unsloth before transformers/TRL, as in every entry point)
    from core.cli import run_cli

    run_cli(main)
