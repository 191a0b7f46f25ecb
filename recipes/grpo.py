"""GRPO on Vietnamese GSM8K: sample several solutions per problem, reward the right ones.

For every prompt the policy samples `num_generations` completions; each is scored by the reward
functions named in the YAML (`reward_funcs`, weighted by TRL's `reward_weights`), and a
completion's advantage is its reward minus the mean of its group. No value model, no reward
model: the answer checker in `rewards/math.py` is the reward. The published run (Qwen2.5-3B-
Instruct, 4-bit) reached exact match 0.67 on 100 sampled vi_gsm8k test problems, against 0.47 for
the SFT + chain-of-thought baseline (`recipes/sft.py`).

    make grpo                                   # configs/grpo/qwen2.5-3b.yaml (a 24 GB GPU)
    make grpo CONFIG=configs/grpo/qwen2.5-1.5b.yaml
    make grpo CONFIG=configs/grpo/tiny.yaml     # CPU smoke run on a tiny random model
    python -m recipes.grpo --config configs/grpo/qwen2.5-3b.yaml --model_name_or_path runs/sft-qwen2.5-3b/adapter

Generation: with `fast_inference: true`, a GPU and vLLM installed, Unsloth builds a vLLM engine
that shares the LoRA weights with the trainer and TRL generates through it (`use_vllm`,
colocate mode); otherwise Hugging Face `generate` (slower; the loader says which). The policy may
start from a hub model, a merged model directory or an SFT adapter directory.

Metrics in `<output_dir>/metrics.jsonl` (one row per logging step): `reward` (weighted sum),
`rewards/<name>/mean` and `/std` per reward function, `frac_reward_zero_std` (groups that teach
nothing), `completions/mean_length`, `completions/clipped_ratio`, `entropy`, `kl` when `beta > 0`, and
where the step's time went (`time/generation`, `time/reward`, ...: `core/timing.py`).

Shared prompts (`shared_prefix: true`, the default): the G completions of a prompt share one pass
over it, in the loss and in `generate` (`recipes/grpo_prefix.py`); `make bench-grpo` measures it.
"""

import core.boot  # noqa: F401  (Unsloth before transformers/TRL/PEFT)

# isort: split
from dataclasses import dataclass, field, fields

from transformers import set_seed
from trl import GRPOConfig, GRPOTrainer

from core.cli import UserError, run_cli
from core.config import LAST_PARSE, ModelArguments, RunArguments, parse_args
from core.console import compact_console
from core.guard import TrainingGuard
from core.models import load_model_and_tokenizer, load_tokenizer
from core.precision import has_cuda
from core.runs import JsonlMetricsCallback, prepare_output_dir, save_final, write_run_info
from core.timing import attach_grpo_step_timer
from data.common import is_local
from data.lengths import check_lengths
from data.vi_gsm8k import DEFAULT_SOURCE, SYSTEM_PROMPT, load_vi_gsm8k
from evaluate.gsm8k import make_training_eval_callback
from recipes.grpo_guards import ZeroVarianceGuard
from recipes.grpo_prefix import attach as attach_shared_prefix
from rewards import get_reward_funcs


@dataclass
class GRPOScriptArguments:
    """What to train on and how to score it.

    Fields:
        dataset_name (`str`, defaults to `"hllj/vi_gsm8k"`): hub id or a local .json/.jsonl/.parquet
            file with the fields question, explanation, answer.
        dataset_train_split (`str`, defaults to `"train"`): split of a hub dataset.
        system_prompt (`str`, defaults to `data.vi_gsm8k.SYSTEM_PROMPT`): system message of every
            prompt; "" for none (the chat template may then insert its own default one). Use the
            prompt the policy was finetuned with.
        limit (`int`, *optional*): train on a seeded random subset of this many problems.
        reward_funcs (`list[str]`, defaults to `["correctness", "format"]`): reward functions by
            registry name (`rewards.REWARDS`), parameterised name (`length_penalty:800`) or dotted
            path (`my_pkg.rewards:brevity`). Weights go in `reward_weights`, in the same order.
        eval_every_save (`bool`, defaults to `False`): at every checkpoint (and at the end), answer
            `eval_limit` held-out problems greedily and log `eval_accuracy`, `eval_accuracy_strict`,
            `eval_format_rate` to metrics.jsonl (and `train_eval.jsonl`).
        eval_limit (`int`, defaults to `50`): held-out problems per evaluation (a seeded sample).
        eval_dataset_name (`str`, *optional*): where held-out problems come from; defaults to
            `dataset_name` (split `eval_split`). Set it when training on a local file, which has
            no separate test split.
        eval_split (`str`, defaults to `"test"`): split of a hub eval dataset.
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{question: cau_hoi, explanation: loi_giai, answer: dap_an}` in YAML or
            `question=cau_hoi,explanation=loi_giai,answer=dap_an` on the command line (the held-out data too).
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
        zero_std_guard_steps (`int`, defaults to `5`): stop the run with the reason when
            `frac_reward_zero_std` is at least `zero_std_guard_threshold` at every logged step of
            the first this-many steps (`recipes.grpo_guards`); 0 turns the check off.
        zero_std_guard_threshold (`float`, defaults to `0.95`): share of groups with identical
            rewards that counts as "nothing to learn from".
        shared_prefix (`bool`, defaults to `True`): put each prompt through the model once per group
            of `num_generations`, in the loss passes and in Hugging Face `generate`, instead of once
            per completion (`recipes/grpo_prefix.py`; same log-probabilities and gradients up to float
            rounding). Where it cannot apply (vLLM, several processes, ...) the run says so in one
            line and runs stock TRL; on Unsloth's GPU trainer its own PrefixGrouper does the loss.
    """

    dataset_name: str = field(default=DEFAULT_SOURCE, metadata={"help": "Hub id or local data file."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    system_prompt: str = field(
        default=SYSTEM_PROMPT, metadata={"help": "System prompt; '' for none. Keep the one the policy learned."}
    )
    limit: int | None = field(default=None, metadata={"help": "Seeded random subset of this many problems."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["correctness", "format"],
        metadata={"help": "Reward functions: registry names, 'name:args' or dotted paths; weights in reward_weights."},
    )
    eval_every_save: bool = field(default=False, metadata={"help": "Evaluate held-out problems at every checkpoint."})
    eval_limit: int = field(default=50, metadata={"help": "Held-out problems per training-time evaluation."})
    eval_dataset_name: str | None = field(default=None, metadata={"help": "Held-out data (default: dataset_name)."})
    eval_split: str = field(default="test", metadata={"help": "Split of a hub eval dataset."})
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. question=cau_hoi,explanation=loi_giai,answer=dap_an."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )
    zero_std_guard_steps: int = field(
        default=5, metadata={"help": "Stop when frac_reward_zero_std stays >= the threshold for the first N steps (0: off)."}
    )
    zero_std_guard_threshold: float = field(
        default=0.95, metadata={"help": "Share of identical-reward groups that counts as no signal."}
    )
    shared_prefix: bool = field(
        default=True, metadata={"help": "Encode each prompt once per group in the loss passes and in generate."}
    )


# The dataclasses a config of this recipe fills (tests parse every shipped YAML with them).
ARGUMENT_TYPES = [GRPOScriptArguments, GRPOConfig, ModelArguments, RunArguments]

# The keys that define GRPO's objective. Left unset, Unsloth's GRPOConfig (the GPU path) fills some
# differently from TRL's: after an explicit `loss_type: dapo` it sets `epsilon_high: 0.28` and, when
# the value arrives unset, `mask_truncated_completions: true` (unsloth/models/rl.py). Every shipped
# config states all of them (tests/test_grpo_objective.py), so one YAML is one objective on both
# backends, and a run names any value its config did not state that differs from TRL's default.
LOSS_KEYS = ("loss_type", "beta", "epsilon", "epsilon_high", "delta", "scale_rewards", "mask_truncated_completions",
             "importance_sampling_level", "num_iterations", "top_entropy_quantile", "entropy_coef",
             "vllm_importance_sampling_correction")


def report_objective(training_args, explicit: set[str]) -> dict:
    """Print the objective the trainer got; name values nobody stated that differ from TRL's defaults."""
    defaults = {f.name: f.default for f in fields(type(training_args))}
    objective = {k: getattr(training_args, k) for k in LOSS_KEYS}
    print("[grpo] objective: " + ", ".join(f"{k}={v}" for k, v in objective.items()))
    changed = [f"{k}={objective[k]} (TRL: {defaults[k]})" for k in LOSS_KEYS
               if k not in explicit and objective[k] != defaults[k]]
    if changed:
        print(f"[grpo] not in your config but set by {type(training_args).__name__}: {', '.join(changed)}; "
              "state these keys in the YAML to choose them yourself")
    return objective


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args, run_args = parse_args(ARGUMENT_TYPES, argv)
    # Rewards first: a misspelt name should fail before minutes of model loading.
    try:
        reward_funcs = get_reward_funcs(script_args.reward_funcs)
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(reward_funcs):
        raise UserError(f"reward_weights has {len(weights)} values for {len(reward_funcs)} reward_funcs "
                        f"{script_args.reward_funcs}; give one weight per reward")
    try:
        guard = ZeroVarianceGuard(script_args.zero_std_guard_steps, script_args.zero_std_guard_threshold,
                                  temperature=training_args.temperature)
    except ValueError as err:
        raise UserError(str(err)) from None
    if training_args.use_vllm and not has_cuda():
        raise UserError("use_vllm needs a CUDA GPU with vLLM; set use_vllm: false (HF generate) on this machine")
    checkpoint = prepare_output_dir(training_args.output_dir, run_args.resume)
    set_seed(training_args.seed)
    objective = report_objective(training_args, LAST_PARSE["explicit"])

    # Data: chat prompts plus the gold `answer` column, which reaches the rewards as a keyword.
    train_dataset = load_vi_gsm8k(
        script_args.dataset_name,
        split=script_args.dataset_train_split,
        on_bad_rows=run_args.on_bad_rows,
        limit=script_args.limit,
        seed=training_args.seed,
        system_prompt=script_args.system_prompt,
        columns=script_args.columns,
        bad_rows_out=script_args.bad_rows_out,
    ).remove_columns("completion")  # the reference solution is SFT's target, not GRPO's
    print(f"[data] {len(train_dataset)} training problems from {script_args.dataset_name}")
    # Prompt + completion must fit the model's window: vLLM stops at max_seq_length and Unsloth's
    # forward cuts longer rows with only a warning, which misaligns the log-probabilities.
    tokenizer = load_tokenizer(model_args)
    budget = dict(limit=model_args.max_seq_length, reserve=training_args.max_completion_length,
                  on_long_rows=run_args.on_long_rows, fix="Raise max_seq_length, or lower max_completion_length.")
    train_dataset = check_lengths(train_dataset, tokenizer, ["prompt"], what="GRPO prompts", **budget)
    eval_dataset = None
    if script_args.eval_every_save:
        # Accuracy on problems the policy never trains on, at every checkpoint: a rising reward
        # can also mean the policy learned to game the format.
        eval_source = script_args.eval_dataset_name or script_args.dataset_name
        if is_local(eval_source) and eval_source == script_args.dataset_name:
            print(f"[eval] note: held-out problems come from the training file {eval_source}; "
                  "set eval_dataset_name to a separate file for a real held-out score")
        eval_dataset = load_vi_gsm8k(eval_source, split=script_args.eval_split, on_bad_rows=run_args.on_bad_rows,
                                     limit=script_args.eval_limit, seed=training_args.seed,
                                     system_prompt=script_args.system_prompt, columns=script_args.columns,
                                     bad_rows_out=script_args.bad_rows_out)
        eval_dataset = check_lengths(eval_dataset, tokenizer, ["prompt"], what="held-out prompts", **budget)

    # Model: the policy with LoRA (or an SFT adapter to continue). With beta > 0 the reference
    # model is the same network with the adapter switched off (no second copy in memory) - so
    # when continuing an SFT adapter the KL is measured against the base, not the SFT policy.
    model, tokenizer = load_model_and_tokenizer(model_args, seed=training_args.seed)
    if getattr(model, "vllm_engine", None) is not None:
        # Unsloth attached a vLLM engine sharing the LoRA weights: TRL must generate through it,
        # in the same process (Unsloth's patched trainer reads `model.vllm_engine`).
        training_args.use_vllm, training_args.vllm_mode = True, "colocate"

    names = [f.__name__ for f in reward_funcs]
    shown = ", ".join(f"{n} x {w:g}" for n, w in zip(names, weights or [1.0] * len(names), strict=True))
    print(f"[rewards] {shown}; "
          f"{training_args.num_generations} generations per prompt, beta={training_args.beta:g}")

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        # JsonlMetricsCallback first: the zero-variance guard may end the run at a log, after it is written.
        callbacks=[JsonlMetricsCallback(training_args.output_dir), TrainingGuard(what="the policy"), guard],
    )
    # Each prompt through the model once per group, not G times (prints what it shares, or why not).
    sharing = attach_shared_prefix(trainer, enabled=script_args.shared_prefix)
    attach_grpo_step_timer(trainer)  # time/generation, time/reward, ... per step in metrics.jsonl
    compact_console(trainer)  # one short console line per step; the full dict goes to metrics.jsonl
    if eval_dataset is not None:
        trainer.add_callback(make_training_eval_callback(
            eval_dataset, tokenizer, training_args.output_dir, limit=script_args.eval_limit,
            max_new_tokens=training_args.max_completion_length, trainer=trainer))
    write_run_info(training_args.output_dir, script_args, training_args, model_args, run_args,
                   extra={"recipe": "grpo", "train_rows": len(train_dataset), "reward_names": names,
                          "generation": "vLLM" if training_args.use_vllm else "HF generate",
                          "objective": objective, "shared_prefix": sharing.summary()})
    trainer.train(resume_from_checkpoint=checkpoint)
    guard.raise_if_tripped()  # stopped early with nothing to learn from: say why, save nothing
    save_final(trainer, tokenizer, training_args.output_dir, model_args, run_args.save_merged)


if __name__ == "__main__":
    run_cli(main)
