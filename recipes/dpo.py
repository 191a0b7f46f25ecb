"""DPO: teach a chat model to prefer the chosen answer over the rejected one, without a reward model.

Direct Preference Optimization (Rafailov et al., 2023) treats beta * log(pi / pi_ref) as an implicit
reward and fits it to the preference pairs with a logistic loss: the policy raises the chosen
answer's log-probability relative to the reference model and lowers the rejected one's. With a
LoRA model no second copy of the model is needed: TRL 1.12, given a PEFT model and
`ref_model=None`, keeps a frozen copy of the starting adapter named "ref" and scores the reference
with it - a fresh adapter (B = 0) is exactly the base model, an adapter after an SFT pass (or one
given as `model_name_or_path`) is the SFT model, as the published recipe wants.

The published run: Qwen2.5-3B-Instruct in 4 bits, LoRA r=16, a short SFT pass on the chosen
answers, then DPO on `thainq107/Vi-Alpaca-Preference` (lr 3e-5, batch 3 x 8, 500 steps, max length
512, system prompt "You are a helpful assistant.").

    make dpo                                              # configs/dpo/qwen2.5-3b.yaml, 24 GB GPU
    make dpo CONFIG=configs/dpo/tiny.yaml                 # CPU smoke run on a tiny random model
    make dpo CONFIG=configs/dpo/demo.yaml                 # CPU, embedded SmolLM2-135M + fixture
    python -m recipes.dpo --config configs/dpo/qwen2.5-3b.yaml --loss_type ipo --beta 0.5

Writes to output_dir: config.yaml, run_info.json, metrics.jsonl, checkpoint-*/, adapter/ (the
trained LoRA), sft/ (the optional SFT pass), and - when eval_held_out is on - preference_eval.json
and preference_generations.md, with the rows recorded in results_dir/comparison.md.
"""

from __future__ import annotations

import core.boot  # noqa: F401  (Unsloth before transformers/TRL/PEFT)

# isort: split
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel
from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from core.adapters import adapter_base
from core.cli import UserError, run_cli
from core.config import ModelArguments, RunArguments, parse_args
from core.console import compact_console
from core.guard import TrainingGuard
from core.models import load_model_and_tokenizer, load_tokenizer
from core.runs import JsonlMetricsCallback, prepare_output_dir, save_final, write_run_info
from data.preference import DEFAULT_SOURCE, load_preference, resolve_system_prompt, sft_on_chosen
from evaluate import preference as pref_eval

# What DPOConfig.loss_type accepts in TRL 1.12 (checked against DPOTrainer._compute_loss).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class PreferenceArguments:
    """Data, the optional SFT pass, and the held-out evaluation. Trainer options are TRL's DPOConfig.

    Fields:
        dataset_name (`str`, defaults to `"thainq107/Vi-Alpaca-Preference"`): hub id or local
            .json/.jsonl/.parquet of pairs (`question`/`chosen`/`rejected` strings, or TRL's
            standard or conversational preference format).
        dataset_split (`str`, defaults to `"train"`): hub split to read.
        system_prompt (`str`, defaults to `"en"`): system message for text prompts: `en` ("You are
            a helpful assistant.", as published), `vi` (a Vietnamese one), `none`, or the text.
        test_size (`float`, defaults to `0.1`): held-out pairs, a fraction (< 1) or a count (>= 1);
            0 trains on every pair and skips the held-out evaluation.
        split_seed (`int`, defaults to `0`): seed of the held-out split.
        max_pairs (`int`, *optional*): use only the first N valid pairs (quick runs).
        sft_first_steps (`int`, defaults to `0`): optimizer steps of supervised training on the
            chosen answers, with the same LoRA, before DPO; the result becomes DPO's reference.
        sft_learning_rate (`float`, defaults to `1e-4`): learning rate of that SFT pass.
        eval_held_out (`bool`, defaults to `True`): after training, score the held-out pairs before
            and after, write preference_eval.json and side-by-side generations.
        eval_max_pairs (`int`, *optional*): score at most this many held-out pairs.
        eval_generations (`int`, defaults to `4`): fixed Vietnamese instructions answered by each
            model state (0: none).
        eval_max_new_tokens (`int`, defaults to `128`): length of those answers.
        results_dir (`str`, *optional*): comparison table to record into (default output_dir/eval).
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{question: cau_hoi, chosen: tot, rejected: kem}` in YAML or
            `question=cau_hoi,chosen=tot,rejected=kem` on the command line.
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
    """

    dataset_name: str = field(default=DEFAULT_SOURCE, metadata={"help": "Hub id or local file of preference pairs."})
    dataset_split: str = field(default="train", metadata={"help": "Hub split to read."})
    system_prompt: str = field(default="en", metadata={"help": "'en', 'vi', 'none' or the system prompt text."})
    test_size: float = field(default=0.1, metadata={"help": "Held-out fraction (<1) or count (>=1); 0 = none."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the held-out split."})
    max_pairs: int | None = field(default=None, metadata={"help": "Use only the first N valid pairs."})
    sft_first_steps: int = field(default=0, metadata={"help": "SFT steps on the chosen answers before DPO (0: off)."})
    sft_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the SFT pass."})
    eval_held_out: bool = field(default=True, metadata={"help": "Score held-out pairs before/after training."})
    eval_max_pairs: int | None = field(default=None, metadata={"help": "Score at most this many held-out pairs."})
    eval_generations: int = field(default=4, metadata={"help": "Vietnamese instructions answered side by side."})
    eval_max_new_tokens: int = field(default=128, metadata={"help": "Tokens per side-by-side answer."})
    results_dir: str | None = field(default=None, metadata={"help": "Comparison table directory (default output_dir/eval)."})
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. question=cau_hoi,chosen=tot,rejected=kem."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )


def check_loss(targs: DPOConfig) -> None:
    """Unknown loss names fail before the model is loaded, listing the valid ones."""
    unknown = [name for name in targs.loss_type if name not in LOSS_TYPES]
    if unknown:
        raise UserError(f"unknown loss_type {unknown}; TRL 1.12 offers: {', '.join(LOSS_TYPES)}")


def run_sft_pass(model, tokenizer, train, pargs: PreferenceArguments, targs: DPOConfig, out: Path) -> Path:
    """Supervised training on the chosen answers with the model's own LoRA; returns the saved adapter.

    Done here rather than with `make sft` so one command reproduces the published pipeline, and so
    the adapter DPO starts from is, without a save/reload, the one TRL copies as the reference.
    """
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(out / "sft"),
        max_steps=pargs.sft_first_steps,
        learning_rate=pargs.sft_learning_rate,
        per_device_train_batch_size=targs.per_device_train_batch_size,
        gradient_accumulation_steps=targs.gradient_accumulation_steps,
        max_length=targs.max_length,
        lr_scheduler_type=targs.lr_scheduler_type,
        warmup_steps=targs.warmup_steps,
        optim=targs.optim,
        weight_decay=targs.weight_decay,
        max_grad_norm=targs.max_grad_norm,
        bf16=targs.bf16,
        fp16=targs.fp16,
        gradient_checkpointing=targs.gradient_checkpointing,
        gradient_checkpointing_kwargs=targs.gradient_checkpointing_kwargs,
        logging_steps=targs.logging_steps,
        report_to=targs.report_to,
        seed=targs.seed,
        save_strategy="no",
        dataset_num_proc=targs.dataset_num_proc,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=sft_on_chosen(train), processing_class=tokenizer,
                         callbacks=[JsonlMetricsCallback(str(out / "sft")), TrainingGuard()])
    compact_console(trainer, str(out / "sft"))
    print(f"[sft] {pargs.sft_first_steps} steps on the chosen answers before DPO")
    trainer.train()
    adapter = out / "sft" / "adapter"
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    return adapter


def pair_budget(pairs, tokenizer, window: int, what: str, on_long_rows: str):
    """The length budget of preference pairs: prompt + the longer answer must fit `window` whole.

    With `on_long_rows: cut` longer pairs stay, and TRL trains on their first `window` tokens
    (`truncation_mode: keep_start`). A cut pair still teaches while its two cut answers differ, so
    what must fit is the prompt plus both answers up to the first token where they differ: a pair
    cut before that point has identical answers and no gradient, and one whose prompt alone fills
    the window is dropped by TRL without a word.
    """
    from data.lengths import enforce_budget, first_difference, sequence_ids

    chosen = sequence_ids(pairs, tokenizer, ["prompt", "chosen"])
    rejected = sequence_ids(pairs, tokenizer, ["prompt", "rejected"])
    longer = [max(len(a), len(b)) for a, b in zip(chosen, rejected, strict=True)]
    # Up to and including the first differing token; answers that never differ need every token.
    contrast = [longest if (i := first_difference(a, b)) is None else i + 1
                for a, b, longest in zip(chosen, rejected, longer, strict=True)]
    return enforce_budget(pairs, longer, limit=window, what=f"{what} (prompt + longer answer)",
                          on_overflow=on_long_rows, fix="Raise max_length and max_seq_length.",
                          needed=contrast, needed_what="the first token where the two answers differ")


def settle_reference(model, starting_adapter: str | None, checkpoint: str | None) -> None:
    """Tidy TRL's "ref" adapter (a frozen copy of the starting adapter) after DPOTrainer made it.

    - Fresh LoRA: the copy is the base model (B = 0), so it is dropped and the reference is the
      adapter switched off - TRL's other path, one adapter less in memory and in every checkpoint.
    - A starting adapter (SFT pass, or an adapter given as model_name_or_path) stays the reference.
      On resume, transformers 5.17 reloads only the sub-directory adapters of a checkpoint that has
      several (`ref/`), not the trained one at its root, so that one is restored here.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if "ref" not in model.peft_config:
        return
    if starting_adapter is None:
        model.delete_adapter("ref")
    elif checkpoint:
        weights = Path(checkpoint) / "adapter_model.safetensors"
        if not weights.is_file():
            raise UserError(f"--resume: {weights} is missing; cannot restore the trained adapter")
        set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
        print(f"[run] restored the trained adapter from {checkpoint}")


def eval_states(out: Path, base_name: str, starting_adapter: str | None, sft_adapter: Path,
                is_lora: bool) -> dict[str, str]:
    """Comparison-table row name -> model state: the base, the reference when it differs, the result."""
    if not is_lora:  # a fully finetuned model has no adapter to switch off
        print("[eval] full finetuning: only the trained model is scored; run python -m evaluate.preference "
              "on the base model for the 'before' row")
        return {out.name: "policy"}
    states = {Path(base_name).name: "base"}
    if starting_adapter == str(sft_adapter):
        states[f"{out.name}-sft"] = "reference"
    elif starting_adapter:  # a given adapter, e.g. runs/sft-x/adapter -> "sft-x"
        path = Path(starting_adapter)
        states[path.parent.name if path.name == "adapter" else path.name] = "reference"
    states[out.name] = "policy"
    return states


# The dataclasses a config of this recipe fills (tests parse every shipped YAML with them).
ARGUMENT_TYPES = [PreferenceArguments, DPOConfig, ModelArguments, RunArguments]


def main(argv: list[str] | None = None) -> None:
    pargs, targs, margs, rargs = parse_args(ARGUMENT_TYPES, argv)
    check_loss(targs)
    if not margs.use_peft and pargs.sft_first_steps:
        raise UserError("sft_first_steps needs use_peft: true (full finetuning would need a second model copy "
                        "as the reference); run the SFT recipe first and pass its model instead")
    set_seed(targs.seed)
    out = Path(targs.output_dir)
    checkpoint = prepare_output_dir(str(out), rargs.resume)

    # ---- data: conversational pairs, a seeded held-out split for the before/after comparison
    test_size = int(pargs.test_size) if pargs.test_size >= 1 else float(pargs.test_size)
    train, held_out = load_preference(pargs.dataset_name, pargs.dataset_split, pargs.system_prompt,
                                      on_bad_rows=rargs.on_bad_rows, test_size=test_size, seed=pargs.split_seed,
                                      max_pairs=pargs.max_pairs, columns=pargs.columns,
                                      bad_rows_out=pargs.bad_rows_out)

    # ---- model: LoRA on the base model (or continuing a given adapter; on resume, the finished SFT pass)
    sft_adapter = out / "sft" / "adapter"
    starting_adapter = margs.model_name_or_path if adapter_base(margs.model_name_or_path or "") else None
    base_name = adapter_base(starting_adapter) if starting_adapter else margs.model_name_or_path
    if checkpoint and pargs.sft_first_steps and (sft_adapter / "adapter_config.json").is_file():
        margs.model_name_or_path = starting_adapter = str(sft_adapter)
    # Both answers of a pair must fit after the prompt (TRL cuts longer pairs at max_length), unless
    # the user chose that cut: on_long_rows cut.
    if rargs.on_long_rows == "cut" and targs.truncation_mode != "keep_start":
        raise UserError("--on_long_rows cut assumes truncation_mode keep_start (the pair's first max_length tokens "
                        f"train), got {targs.truncation_mode!r}")
    window = min(targs.max_length or margs.max_seq_length, margs.max_seq_length)
    length_tokenizer = load_tokenizer(margs)
    train = pair_budget(train, length_tokenizer, window, "training pairs", rargs.on_long_rows)
    if held_out is not None:
        held_out = pair_budget(held_out, length_tokenizer, window, "held-out pairs", rargs.on_long_rows)
    model, tokenizer = load_model_and_tokenizer(margs, seed=targs.seed)
    write_run_info(str(out), pargs, targs, margs, rargs, extra={"train_pairs": len(train),
                   "held_out_pairs": len(held_out) if held_out is not None else 0})

    # ---- optional SFT on the chosen answers (skipped on resume: its adapter is loaded above)
    if pargs.sft_first_steps and starting_adapter != str(sft_adapter):
        starting_adapter = str(run_sft_pass(model, tokenizer, train, pargs, targs, out))

    # ---- DPO: ref_model=None -> TRL scores the reference with a frozen copy of the starting adapter
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=targs,
        train_dataset=train,
        eval_dataset=held_out if targs.eval_strategy != "no" else None,
        processing_class=tokenizer,
        callbacks=[JsonlMetricsCallback(str(out)), TrainingGuard(what="the policy")],
    )
    compact_console(trainer, str(out))  # one short console line per step; the full dict goes to metrics.jsonl
    is_lora = isinstance(trainer.model, PeftModel)
    if is_lora:
        settle_reference(trainer.model, starting_adapter, checkpoint)
    print(f"[dpo] loss {'+'.join(targs.loss_type)}, beta {targs.beta}, {len(train)} pairs, "
          f"reference: {'copy of ' + starting_adapter if starting_adapter else 'the base model (adapter off)'}")
    trainer.train(resume_from_checkpoint=checkpoint)
    save_final(trainer, tokenizer, str(out), margs, rargs.save_merged)

    # ---- held-out pairs before vs after, and side-by-side generations
    if not pargs.eval_held_out or held_out is None:
        print("[eval] held-out evaluation skipped (eval_held_out false or test_size 0)")
        return
    if not trainer.is_world_process_zero():
        return
    pairs = list(held_out)[: pargs.eval_max_pairs or None]
    states = eval_states(out, base_name, starting_adapter, sft_adapter, is_lora)
    pref_eval.report(
        trainer.model, tokenizer, pairs, states, out, pargs.results_dir or out / "eval", beta=targs.beta,
        reference_state="reference" if starting_adapter else "base",
        batch_size=targs.per_device_eval_batch_size, max_length=targs.max_length,
        generations=pargs.eval_generations, system_prompt=resolve_system_prompt(pargs.system_prompt),
        max_new_tokens=pargs.eval_max_new_tokens,
        dataset=pref_eval.held_out_description(pargs.dataset_name, pargs.test_size, pargs.split_seed),
    )


if __name__ == "__main__":
    run_cli(main)
