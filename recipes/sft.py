"""Supervised finetuning with chain of thought on Vietnamese GSM8K: the baseline GRPO must beat.

Every training row is a chat prompt (a system prompt asking for step-by-step reasoning and a final
``#### <số>`` line, then the question) and the reference answer: the worked explanation followed
by ``#### <answer>``. TRL's SFTTrainer computes the loss on the answer tokens only (a
prompt-completion dataset gets ``completion_only_loss`` by default); the run prints the share of
tokens that carry loss as a check. The published baseline (Qwen2.5-3B-Instruct, 4-bit QLoRA)
reached exact match 0.47 on 100 sampled test problems.

    make sft                                    # configs/sft/qwen2.5-3b.yaml
    make sft CONFIG=configs/sft/tiny.yaml       # CPU smoke run on a tiny random model
    python -m recipes.sft --config configs/sft/qwen2.5-3b.yaml --num_train_epochs 1

The adapter lands in ``<output_dir>/adapter`` (with ``--save_merged``: a 16-bit merged model in
``<output_dir>/merged``); a GRPO config can start from either. Interrupted runs continue with
``--resume``.
"""

import core.boot  # noqa: F401  (Unsloth before transformers/TRL/PEFT)

# isort: split
from dataclasses import dataclass, field

from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from core.cli import UserError, run_cli
from core.config import ModelArguments, RunArguments, parse_args
from core.console import compact_console
from core.guard import TrainingGuard
from core.models import load_model_and_tokenizer, load_tokenizer
from core.runs import JsonlMetricsCallback, prepare_output_dir, save_final, write_run_info
from data.lengths import check_lengths
from data.vi_gsm8k import DEFAULT_SOURCE, SYSTEM_PROMPT, load_vi_gsm8k
from evaluate.gsm8k import TARGET_METRICS, make_target_stop_callback


@dataclass
class SFTScriptArguments:
    """What to train on.

    Fields:
        dataset_name (`str`, defaults to `"hllj/vi_gsm8k"`): hub id or a local .json/.jsonl/.parquet
            file with the fields question, explanation, answer.
        dataset_train_split (`str`, defaults to `"train"`): split of a hub dataset.
        system_prompt (`str`, defaults to `data.vi_gsm8k.SYSTEM_PROMPT`): system message of every
            prompt; "" for none (the chat template may then insert its own default one). Use the
            same prompt for GRPO and evaluation.
        limit (`int`, *optional*): train on a seeded random subset of this many problems.
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{question: cau_hoi, explanation: loi_giai, answer: dap_an}` in YAML or
            `question=cau_hoi,explanation=loi_giai,answer=dap_an` on the command line.
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
        target_metric (`str`, defaults to `"format_rate"`): what `target_value` is about:
            `format_rate` (a "#### <số>" line is there), `accuracy` or `accuracy_strict`.
        target_value (`float`, *optional*): stop training once `target_metric` on
            `target_dataset_name` reaches this (checked every `target_every` steps; `max_steps`
            is then a cap). None or 0: train for the step count.
        target_dataset_name (`str`, *optional*): problems the target is checked on (a dev file,
            apart from training and test). Required with `target_value`.
        target_limit (`int`, defaults to `32`): how many of them (the first ones).
        target_every (`int`, defaults to `2`): steps between checks.
        target_max_new_tokens (`int`, defaults to `64`): generation budget of a check.
        target_patience (`int`, defaults to `0`): stop once `target_metric` on `target_dataset_name`
            has not beaten its best by more than `target_min_delta` for this many checks in a row:
            SFT trained until the dev score stops rising (`max_steps` is then a cap). 0: off. With
            `target_value` too, whichever comes first.
        target_min_delta (`float`, defaults to `0.0`): the rise that counts for `target_patience`.
    """

    dataset_name: str = field(default=DEFAULT_SOURCE, metadata={"help": "Hub id or local data file."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    system_prompt: str = field(
        default=SYSTEM_PROMPT, metadata={"help": "System prompt; '' for none. Keep it the same for GRPO and eval."}
    )
    limit: int | None = field(default=None, metadata={"help": "Seeded random subset of this many problems."})
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. question=cau_hoi,explanation=loi_giai,answer=dap_an."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )
    target_metric: str = field(
        default="format_rate", metadata={"help": "Stop-by-target metric: format_rate, accuracy or accuracy_strict."}
    )
    target_value: float | None = field(
        default=None, metadata={"help": "Stop once target_metric on target_dataset_name reaches this (None/0: no target)."}
    )
    target_dataset_name: str | None = field(default=None, metadata={"help": "Dev problems the target is checked on."})
    target_limit: int = field(default=32, metadata={"help": "Dev problems per target check."})
    target_every: int = field(default=2, metadata={"help": "Steps between target checks."})
    target_max_new_tokens: int = field(default=64, metadata={"help": "Generation budget of a target check."})
    target_patience: int = field(
        default=0, metadata={"help": "Stop when target_metric has not risen for this many checks in a row (0: off)."}
    )
    target_min_delta: float = field(default=0.0, metadata={"help": "The rise that counts for target_patience."})


def completion_token_share(dataset, rows: int = 200) -> float:
    """Share of tokens with a training label in the first `rows` prepared rows (prompts are -100)."""
    sample = dataset.select(range(min(rows, len(dataset))))
    labelled = total = 0
    for labels in sample["labels"]:
        labelled += sum(1 for label in labels if label != -100)
        total += len(labels)
    return labelled / max(total, 1)


# The dataclasses a config of this recipe fills (tests parse every shipped YAML with them).
ARGUMENT_TYPES = [SFTScriptArguments, SFTConfig, ModelArguments, RunArguments]


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args, run_args = parse_args(ARGUMENT_TYPES, argv)
    if script_args.target_value == 0:
        script_args.target_value = None  # 0: no target (a command line cannot pass None)
    checks = script_args.target_value is not None or script_args.target_patience > 0
    if script_args.target_patience < 0 or script_args.target_min_delta < 0:
        raise UserError("target_patience and target_min_delta must be at least 0")
    if checks:
        if not script_args.target_dataset_name:
            rule = "target_value" if script_args.target_value is not None else "target_patience"
            raise UserError(f"{rule} needs target_dataset_name: the dev problems the checks answer")
        if script_args.target_metric not in TARGET_METRICS:
            raise UserError(f"target_metric must be one of {', '.join(TARGET_METRICS)}, "
                            f"got {script_args.target_metric!r}")
        if script_args.target_value is not None and not 0.0 < script_args.target_value <= 1.0:
            raise UserError("target_value must lie in (0, 1]")
        if script_args.target_every < 1:
            raise UserError("target_every must be at least 1")
    checkpoint = prepare_output_dir(training_args.output_dir, run_args.resume)
    set_seed(training_args.seed)

    # Data: prompt (chat messages) + completion (the worked answer ending in "#### n").
    train_dataset = load_vi_gsm8k(
        script_args.dataset_name,
        split=script_args.dataset_train_split,
        on_bad_rows=run_args.on_bad_rows,
        limit=script_args.limit,
        seed=training_args.seed,
        system_prompt=script_args.system_prompt,
        columns=script_args.columns,
        bad_rows_out=script_args.bad_rows_out,
    )
    print(f"[data] {len(train_dataset)} training problems from {script_args.dataset_name}")
    # TRL cuts rows at max_length from the end, which is where the "#### n" answer line is.
    window = min(training_args.max_length or model_args.max_seq_length, model_args.max_seq_length)
    train_dataset = check_lengths(train_dataset, load_tokenizer(model_args), ["prompt", "completion"], limit=window,
                                  reserve=0, what="SFT rows (prompt + answer)", on_long_rows=run_args.on_long_rows,
                                  fix="Raise max_length and max_seq_length.")

    # Model: base (4-bit for QLoRA) + LoRA, or an adapter directory to continue.
    model, tokenizer = load_model_and_tokenizer(model_args, seed=training_args.seed)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=[JsonlMetricsCallback(training_args.output_dir), TrainingGuard()],
    )
    compact_console(trainer)  # one short console line per step; the full dict goes to metrics.jsonl
    target = None
    if checks:
        # Stop by a target, not a step count: the step where the format is learned moves with the
        # precision (bf16 rounding slows SFT down) and the data, and every step after it makes the
        # policy more certain - less for GRPO to compare afterwards.
        dev = load_vi_gsm8k(script_args.target_dataset_name, split="test", on_bad_rows=run_args.on_bad_rows,
                            system_prompt=script_args.system_prompt, columns=script_args.columns)
        target = make_target_stop_callback(
            dev, tokenizer, training_args.output_dir, metric=script_args.target_metric,
            target=script_args.target_value, every=script_args.target_every, limit=script_args.target_limit,
            max_new_tokens=script_args.target_max_new_tokens, patience=script_args.target_patience,
            min_delta=script_args.target_min_delta)
        trainer.add_callback(target)
        rules = ([f"{script_args.target_metric} >= {script_args.target_value:g}"]
                 if script_args.target_value is not None else [])
        if script_args.target_patience:
            rules.append(f"{script_args.target_metric} has not risen for {script_args.target_patience} checks")
        print(f"[target] stop once {' or '.join(rules)} on {min(script_args.target_limit, len(dev))} problems of "
              f"{script_args.target_dataset_name} (checked every {script_args.target_every} steps, at most "
              f"{training_args.max_steps} steps)")
    # The baseline is only the published one if the prompt tokens carry no loss.
    share = completion_token_share(trainer.train_dataset)
    print(f"[data] loss on {share:.0%} of tokens (the answers; prompt tokens are masked)")
    if share >= 0.999 and training_args.completion_only_loss is not False:
        raise RuntimeError("every token carries loss: completion-only masking did not happen")

    write_run_info(training_args.output_dir, script_args, training_args, model_args, run_args,
                   extra={"recipe": "sft", "train_rows": len(train_dataset), "loss_token_share": share})
    trainer.train(resume_from_checkpoint=checkpoint)
    if target is not None:
        if target.reached_at is not None:
            print(f"[target] {script_args.target_metric} >= {script_args.target_value:g} reached at step "
                  f"{target.reached_at}")
        elif target.plateau_at is not None:
            kept = (f"; the model saved is step {target.restored_step}'s" if target.restored_step is not None
                    else f"; the model saved is step {target.plateau_at}'s")
            print(f"[target] {script_args.target_metric} stopped rising: best {target.plateau.best:.3f} at step "
                  f"{target.plateau.best_step}, stopped at step {target.plateau_at}{kept}")
        else:
            print(f"[target] neither stop happened: trained all {trainer.state.global_step} steps")
    save_final(trainer, tokenizer, training_args.output_dir, model_args, run_args.save_merged)


if __name__ == "__main__":
    run_cli(main)
