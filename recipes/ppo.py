"""PPO: steer a language model to write feedback of one sentiment, rewarded by a classifier.

The published setting: `NlpHUST/gpt2-vietnamese`, first adapted to the students' feedback corpus
(`make lm`), continues prompts made of the first 2-8 words of feedback sentences; the reward is
the raw "negative" logit of a PhoBERT classifier fine-tuned on the same corpus (`make
reward-model`); PPO (TRL's `trl.experimental.ppo`, lr 5e-5, KL coefficient 0.4 against the
adapted LM) makes the continuations negative while staying fluent.

    make ppo                                        # configs/ppo/gpt2-vietnamese.yaml (GPU)
    make ppo CONFIG=configs/ppo/tiny.yaml           # tiny GPT-2 + tiny classifier, CPU, seconds
    python -m recipes.ppo --config configs/ppo/gpt2-vietnamese.yaml --total_episodes 2000

How the pieces fit TRL's PPOTrainer:
- policy: the shared Unsloth loader. Full fine-tune (the published GPT-2 path) gets a separate,
  frozen reference model loaded the same way. A LoRA policy gets `ref_model=None`: TRL then
  computes reference log-probs with the adapter disabled, which is exactly the starting model,
  without a second copy. (TRL's own `peft_config` would wrap the model again; the loader has
  already attached the adapter, so none is passed.) Start from a full checkpoint (`make lm`
  writes one): with a LoRA adapter directory the reference would be its base model.
- value model: `AutoModelForSequenceClassification(num_labels=1)` from the policy checkpoint.
- reward: `rewards.sentiment.TextRewardAdapter` around a `SentimentScorer`: PPO hands the
  reward model policy token ids; the adapter decodes them and scores the text with the
  classifier's own tokenizer (PhoBERT's differs from GPT-2's). Prompts are left-padded to ONE
  fixed width so that `reward_text: response` knows where each response starts.
- data: pre-tokenized prompts, `input_ids` only; the run length is `total_episodes`.

Output: `output_dir/model` (or `adapter` [+ `merged`]), `samples.jsonl` (prompt, response and
reward on fixed held-out prompts every `sample_every` updates), `metrics.jsonl` (TRL's PPO
statistics per update, and the rollout/update split of its time: `core/timing.py`), `metrics.json` (summary), `config.yaml`, `run_info.json`.
"""

from __future__ import annotations

import core.boot  # noqa: F401  (Unsloth first: it patches transformers and TRL)

# isort: split
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    GenerationConfig,
    TrainerCallback,
    set_seed,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo.ppo_trainer import batch_generation, truncate_response
from trl.experimental.utils import get_reward

from core.adapters import adapter_base, is_local_path
from core.cli import UserError, run_cli
from core.config import ModelArguments, RunArguments, parse_args
from core.console import compact_console
from core.files import write_json_atomic as write_json
from core.guard import TrainingGuard
from core.launch import current_launch
from core.models import load_model_and_tokenizer
from core.runs import JsonlMetricsCallback, prepare_output_dir, save_final, write_run_info
from core.timing import attach_ppo_step_timer
from data.students_feedback import load_prompts
from rewards.sentiment import SCORES, PPOScriptArguments, SentimentScorer, TextRewardAdapter


def tokenize_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, tokenized as the LM saw its training text (tokenizer defaults)."""
    ids = tokenizer(prompts)["input_ids"]
    empty = [p for p, i in zip(prompts, ids, strict=True) if not i]
    if empty:
        raise UserError(f"{len(empty)} prompt(s) tokenize to nothing, e.g. {empty[0]!r}")
    return ids


def check_prompts_fill_an_update(n_prompts: int, args: PPOConfig, world_size: int, source: str) -> None:
    """Fail when the training prompts cannot fill one PPO update.

    TRL's rollout loop draws each update from a DataLoader with `drop_last=True` and repeats it
    forever; with fewer prompts than one update takes, the loader yields nothing and the run spins
    at 0 % without a word. An update takes per_device_train_batch_size x gradient_accumulation_steps
    distinct prompts on each of the `world_size` processes.
    """
    need = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    if n_prompts < need:
        raise UserError(
            f"one PPO update takes per_device_train_batch_size x gradient_accumulation_steps x processes = "
            f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x {world_size} = {need} "
            f"distinct prompts, but {source} gives {n_prompts} training prompts; lower "
            "gradient_accumulation_steps or per_device_train_batch_size, or use more data")


def left_pad(ids: list[list[int]], width: int, pad_token_id: int) -> torch.Tensor:
    """Rows of ids left-padded to `width`: the layout PPO's queries have."""
    return torch.tensor([[pad_token_id] * (width - len(row)) + row for row in ids], dtype=torch.long)


class SampleLogger(TrainerCallback):
    """Append prompt/response/reward rows for fixed held-out prompts to `samples.jsonl`.

    Sampling uses PPO's own generation settings and scores through TRL's `get_reward` on the same
    reward model, so a logged reward is what PPO would have been given. The generator runs in a
    forked RNG with a fixed seed: logging does not change training, and every log samples alike.
    """

    def __init__(self, path: str | Path, queries: torch.Tensor, prompts: list[str], tokenizer, reward_model,
                 args: PPOConfig, stop_token_id: int | None, every: int):
        self.path = Path(path)
        self.queries, self.prompts = queries, prompts
        self.tokenizer, self.reward_model = tokenizer, reward_model
        self.every, self.stop_token_id = every, stop_token_id
        self.seed = args.seed
        self.generation_config = GenerationConfig(max_new_tokens=args.response_length, temperature=args.temperature + 1e-7,
                                                  top_k=0, top_p=1.0, do_sample=True)
        self.means: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if not state.is_world_process_zero or not (step == 1 or step % self.every == 0 or step == state.max_steps):
            return
        policy = model.policy
        device = next(policy.parameters()).device
        pad = self.tokenizer.pad_token_id
        width = self.queries.shape[1]
        queries = self.queries.to(device)
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            query_responses, _ = batch_generation(policy, queries, len(queries), pad, self.generation_config)
            responses = query_responses[:, width:]
            if self.stop_token_id is not None:
                responses = truncate_response(self.stop_token_id, pad, responses)
            _, scores, _ = get_reward(self.reward_model, torch.cat((queries, responses), 1), pad, width)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = scores.float().cpu().tolist()
        with open(self.path, "a", encoding="utf-8") as fh:
            for prompt, text, score in zip(self.prompts, texts, scores, strict=True):
                fh.write(json.dumps({"step": step, "episode": state.episode, "prompt": prompt,
                                     "response": text, "reward": score}, ensure_ascii=False) + "\n")
        mean = sum(scores) / len(scores)
        self.means.append((step, mean))
        print(f"[samples] update {step}: mean reward {mean:.3f}; {self.prompts[0]!r} -> {texts[0]!r}")


# The dataclasses a config of this recipe fills (tests parse every shipped YAML with them).
ARGUMENT_TYPES = [ModelArguments, PPOScriptArguments, RunArguments, PPOConfig]


def main(argv: list[str] | None = None) -> None:
    margs, sargs, run, pargs = parse_args(ARGUMENT_TYPES, argv)
    if run.resume:
        raise UserError("TRL's PPOTrainer (trl 1.12) cannot resume a run; start a new output_dir")
    if not sargs.reward_model:
        raise UserError("reward_model is not set: give the classifier directory from `make reward-model`")
    if is_local_path(sargs.reward_model) and not os.path.isdir(sargs.reward_model):
        raise UserError(f"reward model not found: {sargs.reward_model} (run `make reward-model` first)")
    if sargs.reward_score not in SCORES or sargs.reward_text not in ("full", "response"):
        raise UserError(f"reward_score must be one of {', '.join(SCORES)} and reward_text 'full' or 'response'")
    if is_local_path(margs.model_name_or_path or "") and not os.path.exists(margs.model_name_or_path):
        raise UserError(f"policy not found: {margs.model_name_or_path} (run `make lm` with the matching config first)")
    if pargs.total_episodes is None:
        raise UserError("set total_episodes: PPO's run length (prompts x epochs); there is no max_steps")
    prepare_output_dir(pargs.output_dir, resume=False)
    set_seed(pargs.seed)
    write_run_info(pargs.output_dir, margs, sargs, run, pargs)

    # ---- prompts: first words of feedback sentences, tokenized by the policy's tokenizer
    def prompts(split: str, limit: int | None) -> list[str]:
        rows = load_prompts(sargs.dataset_name, split, run.on_bad_rows, min_chars=sargs.prompt_min_chars,
                            min_words=sargs.prompt_min_words, max_words=sargs.prompt_max_words, limit=limit,
                            seed=sargs.split_seed, validation_size=sargs.validation_size, columns=sargs.columns,
                            bad_rows_out=sargs.bad_rows_out)
        return list(rows["prompt"])

    train_prompts = prompts(sargs.dataset_train_split, sargs.max_prompts)
    eval_prompts = prompts(sargs.dataset_eval_split, None)
    print(f"[data] {len(train_prompts)} training prompts, {len(eval_prompts)} held-out; e.g. {train_prompts[0]!r}")
    check_prompts_fill_an_update(len(train_prompts), pargs, current_launch().world_size, sargs.dataset_name)

    # ---- models: policy (shared loader), reference, value model
    model, tokenizer = load_model_and_tokenizer(margs, seed=pargs.seed)
    is_lora = adapter_base(margs.model_name_or_path) is not None or margs.use_peft
    ref_model = None
    if not is_lora:
        ref_args = dataclasses.replace(margs, use_peft=False)
        ref_model, _ = load_model_and_tokenizer(ref_args, seed=pargs.seed, for_training=False)
        ref_model.eval().requires_grad_(False)
    value_path = sargs.value_model or adapter_base(margs.model_name_or_path) or margs.model_name_or_path
    if adapter_base(value_path) is not None:
        raise UserError(f"the value model needs a full checkpoint, {value_path} is a LoRA adapter: "
                        "pass --value_model (e.g. the merged LM from `make lm`)")
    value_model = AutoModelForSequenceClassification.from_pretrained(
        # Every value-model weight trains: float32 masters under the trainer's autocast.
        value_path, num_labels=1, dtype=torch.float32,
        trust_remote_code=margs.trust_remote_code)
    if value_model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        value_model.resize_token_embeddings(len(tokenizer))
    value_model.config.pad_token_id = tokenizer.pad_token_id

    # ---- data for PPO: input_ids only, every prompt left-padded to one width (see module doc)
    train_ids = tokenize_prompts(tokenizer, train_prompts)
    eval_ids = tokenize_prompts(tokenizer, eval_prompts)
    width = max(len(i) for i in train_ids + eval_ids)
    train_ds = Dataset.from_dict({"input_ids": train_ids})
    eval_ds = Dataset.from_dict({"input_ids": eval_ids})
    collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=width)

    # ---- reward: the classifier behind the cross-tokenizer adapter
    scorer = SentimentScorer(sargs.reward_model, label=sargs.reward_label, score=sargs.reward_score,
                             batch_size=sargs.reward_batch_size, device=sargs.reward_device)
    reward_model = TextRewardAdapter(scorer, tokenizer, text=sargs.reward_text, context_length=width)
    print(f"[reward] {sargs.reward_model}: {sargs.reward_score} of {scorer.label!r} on the {sargs.reward_text} "
          f"text, word segmentation {'on' if scorer.word_segmentation else 'off'}, prompts padded to {width} tokens")

    # ---- trainer
    # The guard watches the policy: the value head trains whatever happens to the policy's weights.
    callbacks = [JsonlMetricsCallback(pargs.output_dir), TrainingGuard(part=lambda m: m.policy, what="the PPO policy")]
    sampler = None
    if sargs.sample_every > 0:
        n = min(sargs.sample_prompts, len(eval_ids))
        stop_id = tokenizer.eos_token_id if pargs.stop_token == "eos" else pargs.stop_token_id
        sampler = SampleLogger(Path(pargs.output_dir) / "samples.jsonl",
                               left_pad(eval_ids[:n], width, tokenizer.pad_token_id), eval_prompts[:n],
                               tokenizer, reward_model, pargs, stop_id, sargs.sample_every)
        callbacks.append(sampler)
    trainer = PPOTrainer(
        args=pargs,
        processing_class=tokenizer,
        model=model,
        ref_model=ref_model,
        reward_model=reward_model,
        train_dataset=train_ds,
        value_model=value_model,
        data_collator=collator,
        eval_dataset=eval_ds,
        callbacks=callbacks,
    )
    attach_ppo_step_timer(trainer)  # time/rollout, time/update, ... per update in metrics.jsonl
    compact_console(trainer)  # one short console line per update; the full dict goes to metrics.jsonl
    print(f"[ppo] {pargs.num_total_batches} updates of {pargs.batch_size} episodes, response length "
          f"{pargs.response_length}, kl_coef {pargs.kl_coef}, reference: "
          f"{'the policy with its LoRA adapter disabled' if ref_model is None else 'separate frozen copy'}")

    # ---- train and save
    t0 = time.time()
    trainer.train()
    train_seconds = time.time() - t0
    final = save_final(trainer, tokenizer, pargs.output_dir, margs, run.save_merged)
    if trainer.is_world_process_zero():
        history = [h for h in trainer.state.log_history if "objective/scores" in h]
        summary = {
            "updates": pargs.num_total_batches, "episodes": trainer.state.episode,
            "train_seconds": round(train_seconds, 1), "policy": str(final),
            "reward_model": sargs.reward_model, "reward_label": scorer.label, "reward_score": sargs.reward_score,
        }
        if history:
            summary.update(scores_first=history[0]["objective/scores"], scores_last=history[-1]["objective/scores"],
                           kl_last=history[-1]["objective/kl"])
        if sampler is not None and sampler.means:
            summary.update(sample_reward_first=sampler.means[0][1], sample_reward_last=sampler.means[-1][1])
        write_json(Path(pargs.output_dir) / "metrics.json", summary)
        print(f"[run] PPO policy saved to {final}")


if __name__ == "__main__":
    run_cli(main)
