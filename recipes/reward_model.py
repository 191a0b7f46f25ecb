"""Reward model for PPO: fine-tune a sentiment classifier (PhoBERT) on the students' feedback corpus.

The published PPO run rewards the policy with a `vinai/phobert-base` classifier fine-tuned (10
epochs, lr 2e-5) on `uitnlp/vietnamese_students_feedback` (negative / neutral / positive). PhoBERT
was pre-trained on word-segmented text ("sinh_viên"), so sentences are segmented with pyvi first;
that choice is saved with the model (`text_preprocessing.json`) and `rewards.sentiment` reads it
back, so the reward segments exactly as training did. Accuracy and weighted F1 on the validation
split go to `metrics.json`.

    make reward-model                                          # configs/reward_model/phobert.yaml
    make reward-model CONFIG=configs/reward_model/tiny.yaml    # tiny classifier, fixture, CPU
    python -m recipes.reward_model --config configs/reward_model/phobert.yaml --num_train_epochs 3

Output: `output_dir/model` (classifier + tokenizer + text_preprocessing.json), `metrics.json`,
`metrics.jsonl`, `config.yaml`, `run_info.json`.
"""

from __future__ import annotations

import core.boot  # noqa: F401  (Unsloth first: it patches transformers)

# isort: split
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from core.adapters import is_local_path
from core.cli import UserError, run_cli
from core.config import RunArguments, parse_args
from core.console import compact_console
from core.files import write_json_atomic as write_json
from core.guard import TrainingGuard
from core.runs import JsonlMetricsCallback, prepare_output_dir, write_run_info
from data.students_feedback import FIXTURE, HUB_ID, LABELS, load_feedback
from rewards.sentiment import preprocess, save_preprocessing


@dataclass
class RewardModelArguments:
    """What to fine-tune on which data.

    Fields:
        model_name_or_path (`str`, defaults to `"vinai/phobert-base"`): encoder checkpoint (hub id or
            directory); a fresh 3-label classification head is put on it.
        dataset_name (`str`, defaults to the hub id): hub id or local JSON/JSONL/Parquet file (a
            single local file is split into train/validation with `split_seed`).
        dataset_train_split (`str`, defaults to `"train"`) / dataset_eval_split (`str`, defaults to
            `"validation"`): splits to train on and to report metrics on.
        word_segmentation (`bool`, defaults to `True`): segment Vietnamese words with pyvi, as
            PhoBERT expects; saved with the model for the reward.
        max_length (`int`, defaults to `256`): classifier tokens per sentence (PhoBERT's limit).
        validation_size (`float`, defaults to `0.2`) / split_seed (`int`, defaults to `42`): held-out
            fraction and seed for a single local file.
        trust_remote_code (`bool`, defaults to `False`): allow model code from the hub.
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{sentence: cau, label: nhan}` in YAML or
            `sentence=cau,label=nhan` on the command line.
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
    """

    model_name_or_path: str = field(default="vinai/phobert-base", metadata={"help": "Encoder to fine-tune."})
    dataset_name: str = field(default=HUB_ID, metadata={"help": f"Hub id or local file (e.g. {FIXTURE.name})."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_eval_split: str = field(default="validation", metadata={"help": "Split to report metrics on."})
    word_segmentation: bool = field(default=True, metadata={"help": "Segment words with pyvi (PhoBERT needs it)."})
    max_length: int = field(default=256, metadata={"help": "Maximum classifier tokens per sentence."})
    validation_size: float = field(default=0.2, metadata={"help": "Held-out fraction of a single local file."})
    split_seed: int = field(default=42, metadata={"help": "Seed of that split."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub."})
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. sentence=cau,label=nhan."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, weighted and macro F1 (scikit-learn), and the majority-class accuracy to beat."""
    from sklearn.metrics import accuracy_score, f1_score

    majority = Counter(labels.tolist()).most_common(1)[0][1] / len(labels) if len(labels) else 0.0
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_weighted": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(labels, predictions, average="macro", labels=list(range(len(LABELS))),
                                   zero_division=0)),
        "majority_accuracy": float(majority),
    }


def compute_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return classification_metrics(np.asarray(labels), np.asarray(logits).argmax(-1))


# The dataclasses a config of this recipe fills (tests parse every shipped YAML with them).
ARGUMENT_TYPES = [RewardModelArguments, RunArguments, TrainingArguments]


def main(argv: list[str] | None = None) -> None:
    rargs, run, targs = parse_args(ARGUMENT_TYPES, argv)
    checkpoint = prepare_output_dir(targs.output_dir, run.resume)
    set_seed(targs.seed)
    write_run_info(targs.output_dir, rargs, run, targs)

    # ---- data: cleaned sentences, word-segmented the way the reward will see generated text
    def load(split: str):
        rows = load_feedback(rargs.dataset_name, split, run.on_bad_rows, validation_size=rargs.validation_size,
                             seed=rargs.split_seed, columns=rargs.columns, bad_rows_out=rargs.bad_rows_out)
        return rows.map(lambda r: {"text": preprocess(r["sentence"], rargs.word_segmentation)})

    train_rows = load(rargs.dataset_train_split)
    eval_rows = load(rargs.dataset_eval_split)
    print(f"[data] {len(train_rows)} train / {len(eval_rows)} eval sentences; labels "
          f"{dict(sorted(Counter(train_rows['label']).items()))}; e.g. {eval_rows[0]['text']!r}")

    # ---- model: a classifier is not a causal LM, so it is loaded with plain transformers rather
    # than the Unsloth loader (which serves the policies); Unsloth has no speed-up for encoders.
    name = os.path.expanduser(rargs.model_name_or_path)
    if is_local_path(name) and not os.path.exists(name):
        raise UserError(f"model path not found: {name} (run `make tiny-models` for the tiny config)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=rargs.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
            ignore_mismatched_sizes=True,  # a checkpoint with another head gets a fresh 3-label one
            dtype=torch.float32,  # master weights in fp32; `bf16: true` trains under autocast
            trust_remote_code=rargs.trust_remote_code,
        )
    except OSError as err:
        raise UserError(f"could not load {name!r}: {str(err).splitlines()[0]} (offline? use a local directory)") from None
    if tokenizer.pad_token is None:
        raise UserError(f"{name}'s tokenizer has no pad token; a classifier batch needs one")
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"  # BERT-style heads read position 0 (decoder heads find the last token)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=rargs.max_length)

    keep = ["input_ids", "attention_mask", "label"]
    train_ds = train_rows.map(tokenize, batched=True)
    eval_ds = eval_rows.map(tokenize, batched=True)
    train_ds = train_ds.remove_columns([c for c in train_ds.column_names if c not in keep])
    eval_ds = eval_ds.remove_columns([c for c in eval_ds.column_names if c not in keep])

    # ---- train
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[JsonlMetricsCallback(targs.output_dir), TrainingGuard(what="the classifier")],
    )
    compact_console(trainer)  # one short console line per step; the full dict goes to metrics.jsonl
    t0 = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.time() - t0

    # ---- evaluate and save
    scores = trainer.evaluate()
    metrics = {k.removeprefix("eval_"): v for k, v in scores.items()
               if k.removeprefix("eval_") in ("accuracy", "f1_weighted", "f1_macro", "majority_accuracy", "loss")}
    metrics.update(n_train=len(train_ds), n_eval=len(eval_ds), eval_split=rargs.dataset_eval_split,
                   word_segmentation=rargs.word_segmentation, train_seconds=round(train_seconds, 1))
    final = Path(targs.output_dir) / "model"
    if trainer.is_world_process_zero():
        trainer.save_model(str(final))
        tokenizer.save_pretrained(str(final))
        save_preprocessing(final, rargs.word_segmentation, rargs.max_length)
        metrics["model"] = str(final)
        write_json(Path(targs.output_dir) / "metrics.json", metrics)
        print(f"[eval] {rargs.dataset_eval_split}: accuracy {metrics['accuracy']:.3f} "
              f"(majority class {metrics['majority_accuracy']:.3f}), weighted F1 {metrics['f1_weighted']:.3f}")
        print(f"[run] saved the reward model to {final}")


if __name__ == "__main__":
    run_cli(main)
