"""Adapt the PPO policy to the students' feedback corpus as a plain causal language model.

The published PPO run starts from `NlpHUST/gpt2-vietnamese` after a language-modeling pass on the
feedback sentences, so that the policy already writes feedback-like Vietnamese; PPO then only has
to move its sentiment. Training is TRL's SFTTrainer on a plain `text` dataset (every token is a
target, EOS appended so the model learns where a sentence ends), through the shared Unsloth
loader (full fine-tune, or LoRA per the config). The result is always a full checkpoint - LoRA is
merged - because PPO loads it three times: policy, separate reference, and value model.

    make lm                                         # configs/lm/gpt2-vietnamese.yaml
    make lm CONFIG=configs/lm/tiny.yaml             # tiny GPT-2, fixture, CPU
    python -m recipes.lm --config configs/lm/gpt2-vietnamese.yaml --num_train_epochs 1

Output: `output_dir/model` (full fine-tune) or `output_dir/adapter` + `output_dir/merged` (LoRA);
`metrics.json` (held-out loss and perplexity before and after, and `policy`: the path to give
PPO), `metrics.jsonl`, `config.yaml`, `run_info.json`.
"""

from __future__ import annotations

import core.boot  # noqa: F401  (Unsloth first: it patches transformers and TRL)

# isort: split
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from core.cli import run_cli
from core.config import ModelArguments, RunArguments, parse_args
from core.console import compact_console
from core.files import write_json_atomic as write_json
from core.guard import TrainingGuard
from core.models import load_model_and_tokenizer, load_tokenizer
from core.runs import JsonlMetricsCallback, prepare_output_dir, save_final, write_run_info
from data.lengths import check_lengths
from data.students_feedback import HUB_ID, load_texts


@dataclass
class LMDataArguments:
    """Which sentences to model.

    Fields:
        dataset_name (`str`, defaults to the hub id): hub id or local JSON/JSONL/Parquet file.
        dataset_train_split (`str`, defaults to `"train"`) / dataset_eval_split (`str`, defaults to
            `"validation"`): splits to train on and to measure perplexity on.
        validation_size (`float`, defaults to `0.2`) / split_seed (`int`, defaults to `42`): held-out
            fraction and seed when the source is a single local file.
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{sentence: cau, label: nhan}` in YAML or
            `sentence=cau,label=nhan` on the command line.
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
    """

    dataset_name: str = field(default=HUB_ID, metadata={"help": "Hub id or local file of feedback sentences."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_eval_split: str = field(default="validation", metadata={"help": "Split for held-out perplexity."})
    validation_size: float = field(default=0.2, metadata={"help": "Held-out fraction of a single local file."})
    split_seed: int = field(default=42, metadata={"help": "Seed of that split."})
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. sentence=cau,label=nhan."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )


# The dataclasses a config of this recipe fills (tests parse every shipped YAML with them).
ARGUMENT_TYPES = [ModelArguments, LMDataArguments, RunArguments, SFTConfig]


def main(argv: list[str] | None = None) -> None:
    margs, dargs, run, targs = parse_args(ARGUMENT_TYPES, argv)
    checkpoint = prepare_output_dir(targs.output_dir, run.resume)
    set_seed(targs.seed)
    write_run_info(targs.output_dir, margs, dargs, run, targs)

    # ---- data: plain text, so SFTTrainer trains on every token and appends EOS
    def load(split: str):
        return load_texts(dargs.dataset_name, split, run.on_bad_rows, validation_size=dargs.validation_size,
                          seed=dargs.split_seed, columns=dargs.columns, bad_rows_out=dargs.bad_rows_out)

    train_ds, eval_ds = load(dargs.dataset_train_split), load(dargs.dataset_eval_split)
    print(f"[data] {len(train_ds)} train / {len(eval_ds)} held-out sentences, e.g. {train_ds[0]['text']!r}")
    window = min(targs.max_length or margs.max_seq_length, margs.max_seq_length)
    tokenizer = load_tokenizer(margs)
    # Reserve 1: the EOS SFTTrainer appends. A cut sentence would lose its end and that EOS, which
    # is what teaches the policy to stop (PPO's stop_token).
    budget = dict(limit=window, reserve=1, on_long_rows=run.on_long_rows, fix="Raise max_length and max_seq_length.")
    train_ds = check_lengths(train_ds, tokenizer, ["text"], what="training sentences", **budget)
    eval_ds = check_lengths(eval_ds, tokenizer, ["text"], what="held-out sentences", **budget)

    # ---- model (the shared loader; GPT-2 has no chat template: require_chat_template false)
    model, tokenizer = load_model_and_tokenizer(margs, seed=targs.seed)
    targs.dataset_text_field = "text"
    trainer = SFTTrainer(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[JsonlMetricsCallback(targs.output_dir), TrainingGuard()],
    )
    compact_console(trainer)  # one short console line per step; the full dict goes to metrics.jsonl

    # ---- train, with held-out perplexity before and after
    before = trainer.evaluate()["eval_loss"]
    t0 = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.time() - t0
    after = trainer.evaluate()["eval_loss"]

    # ---- save a full checkpoint PPO can load as policy, reference and value model
    final = save_final(trainer, tokenizer, targs.output_dir, margs, save_merged=True)
    policy = Path(targs.output_dir) / "merged" if margs.use_peft else final
    if trainer.is_world_process_zero():
        metrics = {
            "eval_loss_before": before, "eval_loss": after,
            "perplexity_before": math.exp(min(before, 50)), "perplexity": math.exp(min(after, 50)),
            "n_train": len(train_ds), "n_eval": len(eval_ds), "train_seconds": round(train_seconds, 1),
            "policy": str(policy),
        }
        write_json(Path(targs.output_dir) / "metrics.json", metrics)
        print(f"[eval] held-out perplexity {metrics['perplexity_before']:.1f} -> {metrics['perplexity']:.1f}")
        print(f"[run] PPO policy checkpoint: {policy}")


if __name__ == "__main__":
    run_cli(main)
