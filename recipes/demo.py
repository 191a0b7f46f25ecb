"""RL against the best SFT the same compute buys, offline on a CPU - the toolkit's demo (design (a)
of issue 26): SFT until its dev accuracy stops rising, then GRPO on the problems that SFT policy
solves only sometimes, against SFT continued for the same model FLOPs.

    make demo                                   # = python -m recipes.demo  -> runs/demo/report.md, summary.json
    python -m recipes.demo --output_dir runs/demo2          # a second demo next to the first
    python -m recipes.demo --resume                         # continue an interrupted demo
    python -m recipes.demo --quick --model_name_or_path runs/tiny/qwen2 --output_dir runs/demo-quick  # plumbing only

Why this design: a GRPO run started from a deliberately under-trained SFT model and compared with
SFT that is allowed to finish loses (the README keeps those numbers: more SFT won by 21-28
points). RL's published gains come from elsewhere: from a converged policy that can reach the
right answer by sampling where its greedy answer misses (the plateaued SFT model here: greedy
0.840, pass@8 0.950), RL with a verifiable reward turns pass@k into greedy accuracy, which more
SFT on the same examples does not aim at. GRPO learns only from problems whose samples disagree,
so it trains on those (pass-rate filtering). The settings are NOT yet calibrated: the README says
what was measured.

The model is the embedded SmolLM2-135M-Instruct (`core.embedded`: converted once from a PyPI
wheel, no hub access needed); the task is seeded synthetic Vietnamese arithmetic problems
(`data.synthetic`) in the vi_gsm8k schema. Every stage is the project's own entry point, run as a
subprocess with the demo's YAML configs plus the overrides in `DESIGN` - what a user runs on a GPU
with a bigger model:

    1. data       python -m data.synthetic -> data/{train,dev,test,test_ood}.jsonl (disjoint; test_ood
                  from number ranges no other split uses)
    (eval_base)   python -m evaluate.gsm8k on the untrained model, only with --eval_base true
    2. sft        python -m recipes.sft    --config configs/sft/demo.yaml: trained until its greedy
                  accuracy on the dev problems stops rising (target_patience), max_steps a cap
    3. eval_sft   python -m evaluate.gsm8k --config configs/eval/demo.yaml ... sft/merged: greedy,
                  pass@8 and maj@8 on test.jsonl and (extra_datasets) test_ood.jsonl
    4. pass_rate  python -m evaluate.pass_rate: 8 samples of each of `--filter_limit` training problems
                  from the SFT model at GRPO's temperature; keeps those with 0 < pass rate < 1
    5. grpo       python -m recipes.grpo   --config configs/grpo/demo.yaml from sft/merged on
                  pass_rate/kept.jsonl (held-out accuracy on a subset at every checkpoint)
    6. eval_grpo
    7. sft_more   python -m recipes.sft    ... sft/adapter continued for as many steps as cost the
                  model FLOPs GRPO used, filtering included (core/compute.py: 2N per generated
                  token, 6N per trained token; the tokens each run logged)
    8. eval_sft_more
    9. report     report.md: per test set, greedy accuracy, maj@8 and pass@8 of every row; GRPO minus
                  the best SFT row (and minus the SFT it started from) with a paired bootstrap 95 %
                  interval on the same problems; the compute of both arms in FLOPs with their wall
                  time beside; the SFT stop and the filter's counts; grpo_curve.png; five examples;
                  the machine. summary.json: the same numbers for machines to read.

The previous flow (a 30-step SFT priming, GRPO on every problem; the README keeps its numbers) is
roughly ``--filter false --sft_args "--target_patience 0 --max_steps 30 --lr_scheduler_type cosine"
--grpo_args "--learning_rate 1e-4 --temperature 1.1 --per_device_train_batch_size 16 --max_steps 60
--save_steps 15"``, with SFT continued now sized by FLOPs instead of GRPO's wall time.

Precision: every stage's config says `dtype: auto`, so each stage takes core/precision.py's
decision - bf16 where torch's kernels have it natively, else float32. The demo prints the decision
first; `VIRL_BF16=0 make demo` runs the float32 arm on any CPU. Threads: `--threads auto`
(core/threads.py) gives each stage the cores other jobs leave free, decided again before each.

Each finished stage is recorded in ``demo_state.json``; a demo directory that already holds a
run is never overwritten: ``--resume`` skips the finished stages (an unfinished training stage
continues from its last checkpoint; an unfinished evaluation is redone), ``--output_dir`` starts
a new one. ``--reuse DIR`` starts a new one from another demo's first stages, copied, as far as
their commands are the ones this demo would run (calibrating GRPO from one SFT model and one
filter: ``--reuse runs/demo --output_dir runs/demo-lr5e-6 --grpo_args "--learning_rate 5e-6"``).
Each stage's output is shown live and kept in ``logs/<stage>.log``.

This orchestrator imports neither torch nor Unsloth (the stages do, in their own processes), so
it starts at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from core.cli import ArgumentParser
from core.files import write_json_atomic, write_text_atomic
from core.threads import choose_threads

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "sft": "configs/sft/demo.yaml",
    "grpo": "configs/grpo/demo.yaml",
    "eval": "configs/eval/demo.yaml",
    "filter": "configs/eval/demo.yaml",  # pass-rate filtering loads and decodes as the evaluation does
}
STATE = "demo_state.json"
REPORT = "report.md"
SUMMARY = "summary.json"
CURVE = "grpo_curve.png"
ROWS_PLOT = "accuracy.png"
RUNS = ("base", "sft", "grpo", "sft_more")
SFT_ROWS = ("sft", "sft_more")  # the candidates for "the best SFT"
LABELS = {"base": "base (untrained)", "sft": "SFT (until dev accuracy stops rising)",
          "grpo": "GRPO (from SFT, frontier problems)", "sft_more": "SFT continued (GRPO's FLOPs)"}
SETS = {"test": "in distribution", "ood": "out of distribution"}  # eval/<run>/ and eval/<run>/ood/
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides a CPU run's speed

# The synthetic problems: one-step word problems (+ - x :), 500 held out so that a 5-point
# difference is outside the paired bootstrap's noise (a 2-3 point half-width when 10-15 % of the
# problems change their outcome), and as many out of distribution.
DATA_DEFAULTS = {"n_train": 1000, "n_test": 500, "n_test_ood": 500, "n_dev": 128, "seed": 0,
                 "data_args": "--max_steps 1", "filter_limit": 400, "eval_samples": 8}

# Design (a), on top of the configs (later flags win: the configs, then these, then --quick's, then
# the user's --<stage>_args). NOT YET CALIBRATED - starting points from the measurements in the
# README (issue 26): the plateaued SFT model had pass@8 0.950 against greedy 0.840 at T=1.0;
# GRPO from it on all problems lost accuracy at lr 1e-4 and held it at 2e-5 with 3-6 of 8 groups
# agreeing. A run with these defaults needs about 2 hours on 2 cores (the stages measured: README).
DESIGN = {
    # constant rate: the continued arm then continues the same SFT, not a fresh cosine restart
    "sft_args": ("--max_steps 400 --lr_scheduler_type constant_with_warmup --target_metric accuracy "
                 "--target_patience 3 --target_every 20 --target_limit 128"),
    "filter_args": "",  # k, temperature, top_p and the token budget come from the GRPO stage's settings
    "grpo_args": ("--learning_rate 2e-5 --temperature 1.0 --per_device_train_batch_size 32 --max_steps 30 "
                  "--save_steps 10"),
    "eval_args": "--temperature 1.0 --top_p 1.0 --also_greedy true",
}

# --quick: a minutes-sized plumbing run (use it with a tiny model, hence float32: tiny matrices
# are faster in it): every stage, every file of the report, no learning to speak of. A random model
# is never right, so the filter keeps every problem (a band of [0, 1]) to give GRPO something.
QUICK = {
    "n_train": 24,
    "n_test": 8,
    "n_test_ood": 8,
    "n_dev": 4,
    "filter_limit": 12,
    "sft_args": ("--dtype float32 --max_steps 3 --per_device_train_batch_size 4 --logging_steps 1 "
                 "--target_every 1 --target_patience 1 --target_limit 4 --target_max_new_tokens 16"),
    "filter_args": "--dtype float32 --batch_size 8 --keep range --min_pass_rate 0 --max_pass_rate 1",
    "grpo_args": ("--dtype float32 --max_steps 2 --num_generations 4 --per_device_train_batch_size 4 "
                  "--max_completion_length 16 --save_steps 1 --eval_limit 4 --warmup_steps 0"),
    "eval_args": "--dtype float32 --max_new_tokens 16 --batch_size 8",
}
STAGE_ARGS = ("sft", "filter", "grpo", "eval")


class DemoError(Exception):
    """A mistake the user can fix (printed as one line, exit code 2)."""


# ------------------------------------------------------------------------------------ helpers
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (blank lines skipped); [] when the file is absent."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_state(out: Path) -> dict[str, Any]:
    return read_json(out / STATE)


def save_state(out: Path, state: dict[str, Any]) -> None:
    write_json_atomic(out / STATE, state)


def fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def fmt_flops(flops: float) -> str:
    """1.23e15 -> '1.23 PFLOP' (the unit that keeps 1-3 digits before the point)."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def banner(text: str) -> None:
    print(f"\n{'=' * 8} [demo] {text} {'=' * max(4, 70 - len(text))}", flush=True)


def config_value(path: str, key: str) -> Any:
    """One key of a YAML config (None when absent)."""
    with open(ROOT / path, encoding="utf-8") as fh:
        return (yaml.safe_load(fh) or {}).get(key)


def setting(stage: str, key: str, overrides: list[str]) -> Any:
    """A stage's value for `key`: the last `--key value` of its overrides, else its config's (text as
    given on a command line, a YAML value otherwise)."""
    flag = f"--{key}"
    found = [i for i, arg in enumerate(overrides) if arg == flag and i + 1 < len(overrides)]
    return overrides[found[-1] + 1] if found else config_value(CONFIGS[stage], key)


def check_system_prompts(overrides: dict[str, list[str]]) -> None:
    """SFT, filtering, GRPO and evaluation must show the model the same system prompt, or the
    scores compare different prompts; fail before minutes of work when the configs disagree."""
    prompts = {name: setting(name, "system_prompt", overrides.get(name, [])) for name in CONFIGS}
    if len(set(prompts.values())) != 1:
        raise DemoError(f"the demo configs use different system prompts {prompts}; make them the same")


def run_stage(name: str, cmd: list[str], out: Path, threads: str | None = None) -> None:
    """Run one stage's entry point, streaming its output live and into logs/<name>.log."""
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    shown = " ".join(shlex.quote(c) for c in [Path(cmd[0]).name if c == sys.executable else c for c in cmd])
    print(f"$ {shown}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    with open(log_dir / f"{name}.log", "ab") as log:
        log.write(f"$ {shown}\n".encode())
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        code = proc.wait()
    if code != 0:
        raise DemoError(f"stage {name!r} failed (exit {code}); its output is in {log_dir / (name + '.log')}. "
                        f"Fix the cause, then rerun with --resume to continue from this stage")


def clear_unfinished(path: Path, out: Path) -> None:
    """Remove what an interrupted stage left behind (only ever inside the demo directory)."""
    if path.exists():
        path.resolve().relative_to(out.resolve())  # raises if path is outside the demo directory
        print(f"[demo] removing the unfinished {path}")
        shutil.rmtree(path)


def plan(args: argparse.Namespace, out: Path, model: str) -> list[tuple[str, list[str], Path | None]]:
    """The stages as (name, command, output path that an interrupted run must clear or resume).

    The sft_more command lacks its step count, which depends on the compute GRPO used: `main` adds
    it (`sft_more_budget`) when the stage starts."""
    py = sys.executable
    data, evals = out / "data", out / "eval"
    sft_model, grpo_adapter = out / "sft" / "merged", out / "grpo" / "adapter"
    ood = ["--extra_datasets", f"ood={data / 'test_ood.jsonl'}"] if args.n_test_ood else []

    def evaluation(run: str, model_path: str) -> list[str]:
        return [py, "-m", "evaluate.gsm8k", "--config", CONFIGS["eval"], "--model_name_or_path", model_path,
                "--dataset_name", str(data / "test.jsonl"), "--run_name", run, "--results_dir", str(evals),
                *ood, *args.eval_overrides]

    stages = [
        ("data", [py, "-m", "data.synthetic", "--n_train", str(args.n_train), "--n_test", str(args.n_test),
                  "--n_test_ood", str(args.n_test_ood), "--n_dev", str(args.n_dev), "--seed", str(args.seed),
                  "--out", str(data), *shlex.split(args.data_args)], data),
    ]
    if args.eval_base:
        stages.append(("eval_base", evaluation("base", model), evals / "base"))
    stages += [
        ("sft", [py, "-m", "recipes.sft", "--config", CONFIGS["sft"], "--model_name_or_path", model,
                 "--dataset_name", str(data / "train.jsonl"), "--target_dataset_name", str(data / "dev.jsonl"),
                 "--output_dir", str(out / "sft"), "--save_merged", "true", *args.sft_overrides], out / "sft"),
        ("eval_sft", evaluation("sft", str(sft_model)), evals / "sft"),
    ]
    grpo_data = data / "train.jsonl"
    if args.filter:
        # Sample as GRPO will: its temperature, top_p and completion budget; as many samples as its groups.
        grpo = args.grpo_overrides
        sampling = ["--temperature", str(setting("grpo", "temperature", grpo)),
                    "--top_p", str(setting("grpo", "top_p", grpo) or 1.0),
                    "--max_new_tokens", str(setting("grpo", "max_completion_length", grpo)),
                    "--k", str(setting("grpo", "num_generations", grpo))]
        stages.append(("pass_rate", [py, "-m", "evaluate.pass_rate", "--config", CONFIGS["filter"],
                                     "--model_name_or_path", str(sft_model), "--dataset_name", str(grpo_data),
                                     "--limit", str(args.filter_limit), "--output_dir", str(out / "pass_rate"),
                                     *sampling, *args.filter_overrides], out / "pass_rate"))
        grpo_data = out / "pass_rate" / "kept.jsonl"
    stages += [
        ("grpo", [py, "-m", "recipes.grpo", "--config", CONFIGS["grpo"], "--model_name_or_path", str(sft_model),
                  "--dataset_name", str(grpo_data), "--eval_dataset_name", str(data / "test.jsonl"),
                  "--eval_every_save", "true", "--output_dir", str(out / "grpo"), *args.grpo_overrides],
         out / "grpo"),
        ("eval_grpo", evaluation("grpo", str(grpo_adapter)), evals / "grpo"),
    ]
    if args.sft_more:
        # The same SFT, continued from its adapter on the same training file (another data order,
        # so it does not start with the rows it just saw), with no stopping rule: the budget decides.
        stages += [
            ("sft_more", [py, "-m", "recipes.sft", "--config", CONFIGS["sft"],
                          "--model_name_or_path", str(out / "sft" / "adapter"),
                          "--dataset_name", str(data / "train.jsonl"), "--output_dir", str(out / "sft_more"),
                          *args.sft_overrides, "--target_value", "0", "--target_patience", "0", "--data_seed", "1"],
             out / "sft_more"),
            ("eval_sft_more", evaluation("sft_more", str(out / "sft_more" / "adapter")), evals / "sft_more"),
        ]
    return stages


def run_config(out: Path, run: str) -> dict[str, Any]:
    """The resolved config a training stage recorded (config.yaml)."""
    path = out / run / "config.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def shared_prompt_tokens(run: Path) -> dict[str, float]:
    """The prompt tokens the GRPO run's shared prefix did not put through the model, summed over its
    sessions (run_info.json's `shared_prefix.saved_tokens`, one file per start or resume); {} when
    the prompt was not shared."""
    saved: dict[str, float] = {}
    for info in sorted(run.glob("*run_info.json")):
        found = (read_json(info) or {}).get("shared_prefix", {}).get("saved_tokens") or {}
        for part, count in found.items():
            saved[part] = saved.get(part, 0) + count
    return saved


def grpo_compute(out: Path, n_params: int) -> dict[str, Any]:
    """What the GRPO arm cost in model FLOPs: its sampled tokens generated and trained (as TRL
    logged them) and, when the demo filtered, the filter's generation."""
    from core.compute import generation_flops, grpo_flops, grpo_recomputes_old_logps, tokens_trained

    try:
        steps, tokens = tokens_trained(read_jsonl(out / "grpo" / "metrics.jsonl"))
    except ValueError as err:
        raise DemoError(f"the GRPO stage: {err}; rerun it") from None
    config = run_config(out, "grpo")
    saved = shared_prompt_tokens(out / "grpo")
    flops = grpo_flops(n_params, tokens, num_iterations=config.get("num_iterations") or 1,
                       old_logps=grpo_recomputes_old_logps(config), reference=bool(config.get("beta")), saved=saved)
    arm = {"steps": steps, "tokens": tokens, "flops": flops["total"], "parts": flops, "shared_prompt_saved": saved}
    report = read_json(out / "pass_rate" / "report.json")
    if report:
        tokens_used = report["tokens"]
        arm["filter"] = {"tokens": tokens_used["prompt"] + tokens_used["completion"],
                         "flops": generation_flops(n_params, tokens_used["prompt"], tokens_used["completion"])}
        arm["flops"] += arm["filter"]["flops"]
    return arm


def sft_more_budget(out: Path, model: str) -> dict[str, Any]:
    """SFT steps that cost what the GRPO arm did, in model FLOPs (core/compute.py), at the tokens per
    step the SFT stage trained; the machine's speed plays no part."""
    from core.compute import parameter_count, sft_steps_for, tokens_trained

    n_params = parameter_count(model)
    grpo = grpo_compute(out, n_params)
    try:
        steps, tokens = tokens_trained(read_jsonl(out / "sft" / "metrics.jsonl"))
    except ValueError as err:
        raise DemoError(f"the SFT stage: {err}; rerun it") from None
    per_step = tokens / steps
    return {"n_params": n_params, "grpo_flops": grpo["flops"], "sft_tokens_per_step": round(per_step, 1),
            "steps": sft_steps_for(grpo["flops"], n_params, per_step)}


def shown_command(cmd: list[str]) -> str:
    """A stage's command as the state and the report show it (`python -m ...`)."""
    return " ".join(shlex.quote(c) for c in ["python"] + cmd[1:])


def reusable(old_state: dict[str, Any], old_out: Path, out: Path,
             stages: list[tuple[str, list[str], Path | None]]) -> list[str]:
    """The leading stages of `stages` that another demo (`old_out`, its state) finished with the same
    command, its directory read as this one's: they would compute the same files. The first stage
    that differs, or that it did not finish, ends the list (every later stage depends on it)."""
    names = []
    for name, cmd, _ in stages:
        done = old_state.get("stages", {}).get(name)
        if done is None or done["command"].replace(f"{old_out}/", f"{out}/") != shown_command(cmd):
            break
        names.append(name)
    return names


def copy_stages(old_out: Path, named: Path, out: Path, names: list[str],
                stages: list[tuple[str, list[str], Path | None]], old_state: dict[str, Any],
                state: dict[str, Any]) -> None:
    """Copy the outputs, logs and state records of the `names` stages from `old_out` (named `named`
    in its commands) into `out`."""
    paths = {name: path for name, _, path in stages}
    for name in names:
        target = paths[name]
        if target is not None:
            source = old_out / target.relative_to(out)
            shutil.copytree(source, target, dirs_exist_ok=True)
        log = old_out / "logs" / f"{name}.log"
        if log.is_file():
            (out / "logs").mkdir(parents=True, exist_ok=True)
            shutil.copy2(log, out / "logs" / log.name)
        record = dict(old_state["stages"][name])
        record["command"] = record["command"].replace(f"{named}/", f"{out}/")
        state["stages"][name] = {**record, "reused_from": str(old_out)}


def grpo_step_line(out: Path) -> str | None:
    """The report's line on the GRPO step: median time and its generation and loss parts (from
    core/timing.py's `time/*` metrics), and whether each prompt went through the model once per
    group (recipes/grpo_prefix.py, as run_info.json records it)."""
    from evaluate.plots import last_per_step

    rows = read_jsonl(out / "grpo" / "metrics.jsonl") if (out / "grpo" / "metrics.jsonl").is_file() else []
    steps = [v for _, v in last_per_step(rows, "time/step")]
    if not steps:
        return None

    def median(key: str) -> float:
        values = sorted(v for _, v in last_per_step(rows, key))
        return values[len(values) // 2] if values else 0.0

    info_path = out / "grpo" / "run_info.json"
    sharing = json.loads(info_path.read_text(encoding="utf-8")).get("shared_prefix") if info_path.is_file() else None
    if sharing and sharing.get("loss") and sharing.get("generation"):
        how = "each prompt went through the model once per group, in the loss and in generation (`shared_prefix`)"
    elif sharing:
        stock = "; ".join(f"{half}: {', '.join(why)}" for half, why in sharing["stock_because"].items() if why)
        how = f"stock TRL for part of the step ({stock})"
    else:
        how = "stock TRL"
    return (f"GRPO step: median {median('time/step'):.1f} s over {len(steps)} steps (generation "
            f"{median('time/generation'):.1f} s, loss forward+backward {median('time/forward_backward'):.1f} s); "
            f"{how}.")


def resume_args(name: str, path: Path) -> list[str]:
    """Extra arguments for an unfinished training stage: --resume when it left a checkpoint."""
    if name in ("sft", "grpo") and path.is_dir() and any(path.glob("checkpoint-*")):
        return ["--resume", "true"]
    return []


# ------------------------------------------------------------------------------------- report
def eval_dir(out: Path, run: str, test_set: str) -> Path:
    """Where a row's evaluation of a test set lives: eval/<run>/ (test.jsonl), eval/<run>/ood/."""
    return out / "eval" / run if test_set == "test" else out / "eval" / run / test_set


def load_metrics(out: Path, runs: tuple[str, ...], test_set: str = "test") -> dict[str, dict[str, Any]]:
    metrics = {}
    for run in runs:
        path = eval_dir(out, run, test_set) / "metrics.json"
        if not path.is_file():
            raise DemoError(f"{path} is missing: the {run} evaluation did not finish (rerun with --resume)")
        metrics[run] = read_json(path)
    return metrics


def predictions(out: Path, run: str, test_set: str = "test") -> dict[str, dict[str, Any]]:
    """A run's scored predictions keyed by question (the test files have no duplicate questions)."""
    return {row["question"]: row for row in read_jsonl(eval_dir(out, run, test_set) / "predictions.jsonl")}


def trained_steps(out: Path, run: str) -> int | None:
    """Optimizer steps a training stage took (the last step it logged; a stopping rule may end it early)."""
    steps = [row["step"] for row in read_jsonl(out / run / "metrics.jsonl") if isinstance(row.get("step"), int)]
    return max(steps) if steps else None


def sft_stop(out: Path) -> str | None:
    """How the SFT stage ended, in words: stopped when its dev score stopped rising (or reached a
    target), or ran to its cap; None without a stopping rule."""
    cfg = run_config(out, "sft")
    if not cfg or not (cfg.get("target_patience") or cfg.get("target_value")):
        return None
    checks = read_jsonl(out / "sft" / "train_eval.jsonl")
    steps = trained_steps(out, "sft")
    if not checks or steps is None:
        return None
    metric = cfg["target_metric"]
    values = [(c["step"], c[f"target_{metric}"]) for c in checks]
    best_step, best = max(values, key=lambda sv: (sv[1], -sv[0]))  # the first of the best
    how = "stopped" if steps < cfg["max_steps"] else f"ran to its cap of {cfg['max_steps']} steps"
    # A plateau stop puts the best check's weights back (evaluate/gsm8k.py, restore_best).
    kept = f"; the model is step {best_step}'s" if steps < cfg["max_steps"] and best_step != steps else ""
    return (f"{how} at step {steps}; dev {metric} (greedy, {checks[-1]['n']} dev problems, every "
            f"{cfg['target_every']} steps) best {best:.3f} at step {best_step}, last {values[-1][1]:.3f}{kept}")


def greedy_of(metrics: dict[str, Any]) -> float:
    """A row's greedy accuracy (a greedy-only evaluation's plain accuracy)."""
    return metrics["greedy_accuracy"] if "greedy_accuracy" in metrics else metrics["accuracy"]


def sample_keys(metrics: dict[str, Any]) -> tuple[str | None, str | None]:
    """The pass@k and maj@k keys an evaluation has (None, None when it decoded greedily only)."""
    passes = [key for key in metrics if key.startswith("pass@")]
    majs = [key for key in metrics if key.startswith("maj@")]
    return (passes[0] if passes else None, majs[0] if majs else None)


def results_table(metrics: dict[str, dict[str, Any]], steps: dict[str, str]) -> str:
    """The Markdown table of one test set: greedy accuracy, maj@k and pass@k of every row."""
    pass_key, maj_key = sample_keys(next(iter(metrics.values())))
    sampled = pass_key is not None
    header = "| model | greedy accuracy |" + (f" {maj_key} | {pass_key} | sampled accuracy (mean of k) |" if sampled else "")
    header += " greedy format | greedy tokens |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for run, m in metrics.items():
        label = LABELS[run] + (f", {steps[run]}" if steps.get(run) else "")
        cells = [f"{greedy_of(m):.3f}"]
        if sampled:
            cells += [f"{m[maj_key]:.3f}", f"{m[pass_key]:.3f}", f"{m['accuracy']:.3f}"]
        cells += [f"{m.get('greedy_format_rate', m['format_rate']):.3f}",
                  f"{m.get('greedy_mean_completion_tokens', m.get('mean_completion_tokens', float('nan'))):.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "a gain beyond the bootstrap noise"
    if high < 0:
        return "a loss beyond the bootstrap noise"
    return "inside the noise: no demonstrated difference"


def best_sft(metrics: dict[str, dict[str, Any]]) -> str:
    """The SFT row with the highest greedy accuracy on a test set (a tie goes to the later row, the
    one that trained longer). Chosen on the set it is compared on: that favours SFT, never GRPO."""
    rows = [run for run in SFT_ROWS if run in metrics]
    return max(reversed(rows), key=lambda run: greedy_of(metrics[run]))


def compare(out: Path, baseline: str, test_set: str = "test") -> dict[str, Any]:
    """GRPO minus `baseline`, greedy accuracy, on the same held-out problems (paired bootstrap)."""
    from evaluate.stats import compare_runs

    field = "greedy_correct" if "greedy_correct" in next(iter(predictions(out, "grpo", test_set).values()), {}) \
        else "correct"
    d = compare_runs(eval_dir(out, baseline, test_set), eval_dir(out, "grpo", test_set), field=field,
                     n_resamples=10_000, seed=0)
    return {"baseline": baseline, "set": test_set, "n": d.n, "baseline_accuracy": d.mean_a, "grpo_accuracy": d.mean_b,
            "diff": d.diff, "low": d.low, "high": d.high, "p_value": d.p_value, "p_text": d.p_text(),
            "verdict": verdict(d.low, d.high)}


def diff_line(row: dict[str, Any], best: bool) -> str:
    name = "SFT continued" if row["baseline"] == "sft_more" else "SFT"
    return (f"GRPO - {name}{' (the best SFT)' if best else ''}, greedy accuracy: {100 * row['diff']:+.1f} points on "
            f"{row['n']} held-out problems, {SETS[row['set']]} (paired bootstrap 95% CI {100 * row['low']:+.1f} to "
            f"{100 * row['high']:+.1f}, {row['p_text']}): {row['verdict']}")


def summary_diff(row: dict[str, Any]) -> dict[str, Any]:
    """summary.json's form of a difference: points as the report prints them (one decimal)."""
    return {"baseline": row["baseline"], "points": round(100 * row["diff"], 1), "ci_low": round(100 * row["low"], 1),
            "ci_high": round(100 * row["high"], 1), "n": row["n"]}


def sft_accuracy_on_training_subset(out: Path) -> tuple[float, int] | None:
    """The SFT model's greedy accuracy on the held-out subset the GRPO callback evaluates, for
    the curve's step 0 (the callback runs at checkpoints only)."""
    cfg = run_config(out, "grpo")
    if not cfg:
        return None
    from data.vi_gsm8k import load_vi_gsm8k

    subset = load_vi_gsm8k(cfg["eval_dataset_name"], split=cfg.get("eval_split", "test"), limit=cfg["eval_limit"],
                           seed=cfg["seed"], system_prompt=cfg["system_prompt"])
    sft = predictions(out, "sft")
    hits = [sft[q].get("greedy_correct", sft[q]["correct"]) for q in subset["question"] if q in sft]
    return (sum(hits) / len(hits), len(hits)) if hits else None


def plot_curve(out: Path, metrics: dict[str, dict[str, Any]] | None = None) -> Path:
    """grpo_curve.png: training reward per step (and its running mean) and the held-out accuracy
    measured at each checkpoint, from the SFT model's at step 0 - `make plot`'s overview picture.

    The checkpoint curve counts a subset of the held-out problems (`eval_limit`), the table all of
    them, so the two disagree at step 0. With the table's `metrics`, its SFT and GRPO greedy
    accuracies are drawn too, as squares at step 0 and at GRPO's last step, and the legend says
    which problems each counts."""
    from evaluate.plots import load_run, plot_overview

    run = load_run(out / "grpo", label="grpo")
    start = sft_accuracy_on_training_subset(out)
    table = None
    if metrics and "sft" in metrics and "grpo" in metrics:
        points = [(0, greedy_of(metrics["sft"])), (run.last_step, greedy_of(metrics["grpo"]))]
        table = {"grpo": (points, metrics["sft"]["n"])}
    return plot_overview([run], out / CURVE, start={"grpo": start} if start else None, start_label="the SFT model",
                         table=table)


def curve_note(out: Path, metrics: dict[str, dict[str, Any]]) -> list[str]:
    """The sentence under the picture: which problems its points count, and the table's."""
    start = sft_accuracy_on_training_subset(out)
    if start is None:
        return []
    n_all = metrics["sft"]["n"]
    return [f"The curve's points count the same {start[1]} of the {n_all} held-out problems at every checkpoint "
            f"(step 0: the SFT model, {start[0]:.3f} on them); the squares are the table's accuracies on all "
            f"{n_all} ({greedy_of(metrics['sft']):.3f} before GRPO, {greedy_of(metrics['grpo']):.3f} after)."]


def plot_rows(out: Path, by_set: dict[str, dict[str, dict[str, Any]]]) -> Path:
    """accuracy.png: greedy accuracy, maj@k and pass@k of every row, one panel per test set - the
    sharpening in one picture (RL should move greedy towards pass@k; more SFT need not)."""
    from evaluate.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(by_set), figsize=(5.5 * len(by_set), 3.8), squeeze=False)
    for ax, (test_set, metrics) in zip(axes[0], by_set.items(), strict=True):
        pass_key, maj_key = sample_keys(next(iter(metrics.values())))
        kinds = [("greedy", greedy_of)] + [(key, lambda m, key=key: m[key]) for key in (maj_key, pass_key) if key]
        width = 0.8 / len(kinds)
        for j, (name, value) in enumerate(kinds):
            xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(metrics))]
            values = [value(m) for m in metrics.values()]
            ax.bar(xs, values, width, label=name, color=f"C{j}")
            for x, v in zip(xs, values, strict=True):
                ax.text(x, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(metrics)), [LABELS[run].split(" (")[0] for run in metrics])
        ax.set_ylim(0, 1.2)  # room above the bars for the legend
        ax.set_title(f"{SETS[test_set]}, {next(iter(metrics.values()))['n']} problems", fontsize=10)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8, loc="upper center", ncol=len(kinds), frameon=False)
    return _save(fig, out / ROWS_PLOT)


def examples(out: Path, k: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """k held-out problems picked by a seeded draw (not by outcome), with the SFT and GRPO answers."""
    sft, grpo = predictions(out, "sft"), predictions(out, "grpo")
    questions = sorted(q for q in sft if q in grpo)
    picked = random.Random(seed).sample(questions, min(k, len(questions)))
    return [{"question": q, "answer": sft[q]["answer"], "sft": sft[q], "grpo": grpo[q]} for q in picked]


def greedy_answer(row: dict[str, Any]) -> tuple[str, bool, str | None]:
    """(completion, right, read answer) of a prediction's greedy answer."""
    if "greedy_completion" in row:
        return row["greedy_completion"], row["greedy_correct"], row["greedy_pred"]
    return row["completion"], row["correct"], row["pred"]


def describe_machine() -> dict[str, Any]:
    """What makes a CPU run fast or slow: the CPU's model name, cores and relevant flags."""
    from core.precision import cpu_flags

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu": name, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def children_cpu_seconds() -> float:
    """CPU time (user + system) of the finished stages so far. A stage's share does not grow when
    other jobs slow it down, so next to its wall time it shows how much of that was waiting."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_precisions(out: Path) -> dict[str, dict[str, str]]:
    """The precision each training stage recorded in its run_info.json (the evaluations take the
    same decision from the same `dtype`)."""
    found = {}
    for run in ("sft", "grpo", "sft_more"):
        path = out / run / "run_info.json"
        if path.is_file() and (precision := json.loads(path.read_text(encoding="utf-8")).get("precision")):
            found[run] = precision
    return found


def machine_lines(out: Path, state: dict[str, Any]) -> list[str]:
    """The report's lines about the machine and the precision."""
    machine = state.get("machine") or {}
    flags = ", ".join(machine.get("flags", [])) or "none of " + ", ".join(CPU_FLAGS)
    precisions = stage_precisions(out)
    kinds = {(p["dtype"], p["reason"]) for p in precisions.values()}
    if len(kinds) == 1:
        dtype, reason = kinds.pop()
        precision = f"- Precision: {dtype} in every stage ({reason})."
    elif kinds:
        precision = "- Precision: " + "; ".join(f"{run} {p['dtype']} ({p['reason']})" for run, p in precisions.items())
    else:
        decided = state.get("precision") or {}
        precision = f"- Precision: {decided.get('dtype', '?')} ({decided.get('reason', '?')})."
    return [f"- CPU: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; flags: {flags}.",
            precision,
            "- Threads and load per stage: in the stage table below (load: runnable threads of the whole "
            "machine, 1-minute average, when the stage started and ended)."]


def torch_isa(out: Path) -> str | None:
    """What torch's CPU kernels ran, as the stages recorded it (run_info.json `cpu_capability`);
    several values joined when stages disagree (a demo resumed under other ISA caps)."""
    found = []
    for info in sorted(out.glob("*/run_info.json")) + sorted(out.glob("eval/*/run_info.json")):
        value = read_json(info).get("versions", {}).get("cpu_capability")
        if value and value not in found:
            found.append(value)
    return ", ".join(found) or None


def compute_section(out: Path, state: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The report's table of what each arm cost (model FLOPs, tokens, steps, wall time) and its
    summary.json form."""
    from core.compute import sft_flops, tokens_trained

    budget = state.get("budget")
    if not budget:
        return [], {}
    n_params = budget["n_params"]
    seconds = {name: info["seconds"] for name, info in state["stages"].items()}
    grpo = grpo_compute(out, n_params)
    rows = []
    if "filter" in grpo:
        rows.append(("GRPO arm: pass-rate filtering (generation)", grpo["filter"]["flops"], grpo["filter"]["tokens"],
                     "", seconds.get("pass_rate", 0.0)))
    rows.append(("GRPO arm: GRPO (generation + training)", grpo["parts"]["total"], grpo["tokens"], grpo["steps"],
                 seconds.get("grpo", 0.0)))
    arms = {"grpo": {"flops": grpo["flops"], "seconds": round(seconds.get("grpo", 0.0) + seconds.get("pass_rate", 0.0), 1)}}
    if "filter" in grpo:
        rows.append(("GRPO arm, in all", grpo["flops"], grpo["tokens"] + grpo["filter"]["tokens"], "",
                     arms["grpo"]["seconds"]))
    if "sft_more" in state["stages"]:
        steps, tokens = tokens_trained(read_jsonl(out / "sft_more" / "metrics.jsonl"))
        flops = sft_flops(n_params, tokens)
        rows.append(("SFT continued", flops, tokens, steps, seconds.get("sft_more", 0.0)))
        arms["sft_more"] = {"flops": flops, "seconds": seconds.get("sft_more", 0.0)}
    lines = ["| arm | model FLOPs | tokens | steps | wall time |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {fmt_flops(flops)} | {tokens:,.0f} | {steps} | {fmt_duration(secs)} |"
              for name, flops, tokens, steps, secs in rows]
    lines += ["", f"N = {n_params / 1e6:.4g}M parameters; 2N FLOPs per generated or prefilled token, 6N per trained "
              "token (core/compute.py), from the tokens each run logged; held-out checks during training are not "
              "counted, nor the SFT stage both arms start from. SFT continued was given "
              f"{budget['steps']} steps at the SFT stage's {budget['sft_tokens_per_step']:g} tokens per step: the "
              "GRPO arm's FLOPs, whatever the machine. Wall time is this machine's."]
    return lines, {"n_params": n_params, **{f"{arm}_flops": v["flops"] for arm, v in arms.items()},
                   **{f"{arm}_seconds": v["seconds"] for arm, v in arms.items()}, "sft_more_steps": budget["steps"]}


def filter_lines(out: Path) -> list[str]:
    """The pass-rate filter's counts in the report."""
    from evaluate.pass_rate import report_lines

    report = read_json(out / "pass_rate" / "report.json")
    if not report:
        return []
    return [f"- {line}." for line in report_lines(report)] + [
        f"- sampled as GRPO samples: {report['settings']['decoding']}, {report['settings']['max_new_tokens']} new "
        f"tokens at most; GRPO trained on the kept problems (pass_rate/kept.jsonl)."]


def write_report(out: Path, state: dict[str, Any]) -> tuple[str, list[str], Path]:
    """report.md and summary.json in the demo directory; returns (the in-distribution table, the
    difference lines, the report path)."""
    evaluated = tuple(run for run in RUNS if f"eval_{run}" in state.get("stages", {}))
    sets = ("test", "ood") if state.get("n_test_ood") else ("test",)
    done = {run: trained_steps(out, run) for run in ("sft", "grpo", "sft_more")}
    steps = {run: f"{n} steps" for run, n in done.items() if n}
    if done["sft"] and done["sft_more"]:
        steps["sft_more"] = f"{done['sft']} + {done['sft_more']} steps"
    tables, diffs, summary_diffs, rows_summary, by_set = {}, {}, {}, {}, {}
    for test_set in sets:
        metrics = by_set[test_set] = load_metrics(out, evaluated, test_set)
        tables[test_set] = results_table(metrics, steps)
        best = best_sft(metrics)
        rows = [compare(out, run, test_set) for run in SFT_ROWS if run in metrics]
        diffs[test_set] = [diff_line(row, row["baseline"] == best) for row in rows]
        summary_diffs[test_set] = summary_diff(next(row for row in rows if row["baseline"] == best))
        for run, m in metrics.items():
            pass_key, maj_key = sample_keys(m)
            rows_summary.setdefault(run, {})[test_set] = {
                "n": m["n"], "greedy": round(greedy_of(m), 4), "pass@k": None if pass_key is None else round(m[pass_key], 4),
                "maj@k": None if maj_key is None else round(m[maj_key], 4), "k": state.get("eval_samples")}
    sft, grpo = predictions(out, "sft"), predictions(out, "grpo")
    fixed = sum(1 for q in sft if q in grpo and greedy_answer(grpo[q])[1] and not greedy_answer(sft[q])[1])
    broke = sum(1 for q in sft if q in grpo and greedy_answer(sft[q])[1] and not greedy_answer(grpo[q])[1])
    plot_curve(out, by_set["test"])
    plot_rows(out, by_set)
    compute_lines, compute_summary = compute_section(out, state)
    stop = sft_stop(out)
    seconds = {name: info["seconds"] for name, info in state.get("stages", {}).items()}
    first = load_metrics(out, ("sft",))["sft"]
    k = state.get("eval_samples") or 1

    held_out = f"{first['n']} disjoint held-out problems"
    if "ood" in sets:
        held_out += f" and {state['n_test_ood']} out-of-distribution ones"
    decoding = "greedily"
    if k > 1:
        decoding += (f" and with {k} samples at T={first['settings']['temperature']:g} (maj@{k}: the most frequent "
                     f"answer is right; pass@{k}: any sample is)")
    parts = [
        "# Offline RL demo: GRPO against the best SFT the same compute buys",
        "",
        f"Model: `{state['model']}`; data: {state['n_train']} synthetic Vietnamese arithmetic problems for training "
        f"(seed {state['seed']}, `{state['data_args']}`), {state['n_dev']} dev problems for the SFT stop, {held_out}. "
        f"Every row answers each held-out problem {decoding}, {first['settings']['max_new_tokens']} new tokens at most.",
        "",
        "Design (a) of issue 26, not yet calibrated: SFT trained until its dev accuracy stopped rising; GRPO from "
        "that model on the training problems it solves only sometimes; SFT continued from the same model for the "
        "model FLOPs the GRPO arm used. The differences are greedy accuracy on the same problems.",
        "",
        f"## Held-out problems, {SETS['test']} ({first['n']})",
        "",
        tables["test"],
        "",
        *[f"- {line}" for line in diffs["test"]],
        f"- Problems GRPO turned right (greedy): {fixed}; turned wrong: {broke} (of {len(sft)}).",
        *([f"- {line}"] if (line := grpo_step_line(out)) else []),
        "",
    ]
    if "ood" in sets:
        ood_n = load_metrics(out, ("sft",), "ood")["sft"]["n"]
        parts += [f"## Held-out problems, {SETS['ood']} ({ood_n})", "",
                  "The same templates with numbers no training problem uses (+/- operands 51-99, the times table at "
                  "11-15; data/synthetic.py `OOD_RANGES`).", "", tables["ood"], "",
                  *[f"- {line}" for line in diffs["ood"]], ""]
    parts += [f"![greedy accuracy, maj@k and pass@k of every row]({ROWS_PLOT})", "",
              "greedy format: a `#### <số>` line is there; accuracy reads the answer flexibly (`####`, \"Đáp số:\", "
              "last number), with the checker the GRPO reward uses.", ""]
    if compute_lines:
        parts += ["## Compute", "", *compute_lines, ""]
    parts += ["## How the stages went", ""]
    if stop:
        parts.append(f"- SFT: {stop}.")
    parts += filter_lines(out)
    parts += ["", "## Machine", "", *machine_lines(out, state), f"- torch's CPU kernels: {torch_isa(out) or '?'}.", "",
              f"![GRPO reward and held-out accuracy]({CURVE})", "", *curve_note(out, by_set["test"]), "",
              "## Stages", "",
              "| stage | time | CPU time | threads | load (1 min, start / end) | command |",
              "|---|---|---|---|---|---|"]
    for name, info in state.get("stages", {}).items():
        load = "/".join(f"{x:.1f}" for x in info["load"]) if info.get("load") else ""
        cpu = fmt_duration(info["cpu_seconds"]) if "cpu_seconds" in info else ""
        copied = f"copied from {info['reused_from']}: " if info.get("reused_from") else ""
        parts.append(f"| {name} | {fmt_duration(info['seconds'])} | {cpu} | {info.get('threads') or 'default'} "
                     f"| {load} | {copied}`{info['command']}` |")
    total = sum(seconds.values())
    cpu_total = sum(info.get("cpu_seconds", 0.0) for info in state.get("stages", {}).values())
    parts += [f"| total | {fmt_duration(total)} | {fmt_duration(cpu_total)} | | | |", "",
              "CPU time: user + system seconds of the stage's process, all threads together. With one thread "
              "and other jobs on the cores, time minus CPU time is time spent waiting for a core.", ""]
    parts += ["## Five held-out problems, before (SFT) and after (GRPO), greedy", "",
              "Picked by a seeded draw from the test problems, not by outcome.", ""]
    for i, ex in enumerate(examples(out), start=1):
        parts += [f"### {i}. {ex['question']}", "", f"Gold answer: {ex['answer']}", ""]
        for run in ("sft", "grpo"):
            completion, right, pred = greedy_answer(ex[run])
            parts += [f"{LABELS[run]} ({'right' if right else 'wrong'}, read as {pred}):", "", "```text",
                      completion.strip() or "(empty)", "```", ""]
    report = out / REPORT
    write_text_atomic(report, "\n".join(parts))

    precision = stage_precisions(out).get("grpo") or state.get("precision") or {}
    summary = {
        "design": "a",
        "calibrated": False,
        "quick": state.get("quick", False),
        "model": state["model"],
        "seed": state["seed"],
        "precision": precision.get("dtype"),
        "precision_reason": precision.get("reason"),
        "isa": torch_isa(out),
        "stages_seconds": round(total, 1),
        "grpo_minus_best_sft": summary_diffs["test"],
        **({"grpo_minus_best_sft_ood": summary_diffs["ood"]} if "ood" in sets else {}),
        "rows": rows_summary,
        "compute": compute_summary,
        "fixed": fixed,
        "broke": broke,
    }
    write_json_atomic(out / SUMMARY, summary)
    return tables["test"], diffs["test"] + diffs.get("ood", []), report


# --------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m recipes.demo",
        description="Offline RL demo on a CPU: SFT to its plateau, GRPO on its frontier problems, against SFT "
                    "continued for the same FLOPs; evaluated, with a report and summary.json.",
    )
    parser.add_argument("--output_dir", default="runs/demo", help="demo directory (default runs/demo)")
    parser.add_argument("--resume", action="store_true", help="continue the demo in output_dir")
    parser.add_argument("--reuse", default=None, metavar="DIR",
                        help="start from another demo's first stages (copied) as far as their commands are this "
                             "demo's, e.g. the same SFT and filter under other --grpo_args")
    parser.add_argument("--model_name_or_path", dest="model", default=None,
                        help="model directory (default: the embedded SmolLM2-135M-Instruct, converted on first use)")
    parser.add_argument("--quick", action="store_true",
                        help="minutes-sized plumbing run (tiny counts; use with a tiny --model)")
    parser.add_argument("--n_train", type=int, default=None, help=f"training problems (default {DATA_DEFAULTS['n_train']})")
    parser.add_argument("--n_test", type=int, default=None,
                        help=f"held-out problems (default {DATA_DEFAULTS['n_test']}: a 5-point difference is then "
                             "outside the bootstrap noise)")
    parser.add_argument("--n_test_ood", type=int, default=None,
                        help=f"out-of-distribution held-out problems (default {DATA_DEFAULTS['n_test_ood']}; 0: none)")
    parser.add_argument("--n_dev", type=int, default=None,
                        help=f"dev problems for the SFT stage's stopping rule (default {DATA_DEFAULTS['n_dev']})")
    parser.add_argument("--seed", type=int, default=DATA_DEFAULTS["seed"], help="data seed (default 0)")
    parser.add_argument("--data_args", default=DATA_DEFAULTS["data_args"],
                        help=f"extra data.synthetic options (default {DATA_DEFAULTS['data_args']!r})")
    parser.add_argument("--eval_samples", type=int, default=DATA_DEFAULTS["eval_samples"],
                        help=f"samples per held-out problem for maj@k and pass@k, beside the greedy answer (default "
                             f"{DATA_DEFAULTS['eval_samples']}; 1: greedy only)")
    parser.add_argument("--eval_base", default="false", choices=("true", "false"),
                        help="also evaluate the untrained model (default false: it rambles to the token limit, "
                             "the costliest evaluation, and answers almost nothing)")
    parser.add_argument("--filter", default="true", choices=("true", "false"),
                        help="pass-rate filtering before GRPO (default true); false trains GRPO on every problem")
    parser.add_argument("--filter_limit", type=int, default=None,
                        help=f"training problems the filter samples (default {DATA_DEFAULTS['filter_limit']})")
    parser.add_argument("--threads", default="auto",
                        help="threads per stage: a number, or auto (the cores other jobs leave free, "
                             "decided before each stage)")
    parser.add_argument("--sft_more", default="true", choices=("true", "false"),
                        help="also continue SFT for the GRPO arm's FLOPs and evaluate it (default true): did RL "
                             "beat the SFT the same compute buys?")
    for stage in STAGE_ARGS:
        parser.add_argument(f"--{stage}_args", default="",
                            help=f"extra '--key value' overrides of the {stage} stage ({CONFIGS[stage]})")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    for key in ("n_train", "n_test", "n_test_ood", "n_dev", "filter_limit"):
        if getattr(args, key) is None:
            setattr(args, key, quick.get(key, DATA_DEFAULTS[key]))
    if args.eval_samples < 1:
        parser.error("--eval_samples must be at least 1")
    args.sft_more, args.filter, args.eval_base = args.sft_more == "true", args.filter == "true", args.eval_base == "true"
    samples = ["--num_samples", str(args.eval_samples)] if args.eval_samples > 1 else []
    for stage in STAGE_ARGS:
        extra = (shlex.split(DESIGN[f"{stage}_args"]) + (samples if stage == "eval" else [])
                 + shlex.split(quick.get(f"{stage}_args", "")) + shlex.split(getattr(args, f"{stage}_args")))
        setattr(args, f"{stage}_overrides", extra)
    return args


def settings_of(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """What decides a demo's numbers; a resumed demo must be given the same."""
    return {"model": model, "quick": args.quick, "n_train": args.n_train, "n_test": args.n_test,
            "n_test_ood": args.n_test_ood, "n_dev": args.n_dev, "seed": args.seed, "data_args": args.data_args,
            "eval_samples": args.eval_samples, "eval_base": args.eval_base, "filter": args.filter,
            "filter_limit": args.filter_limit, "sft_args": args.sft_overrides, "filter_args": args.filter_overrides,
            "grpo_args": args.grpo_overrides, "eval_args": args.eval_overrides, "sft_more_stage": args.sft_more,
            "precision": precision_of()}


def precision_of() -> dict[str, str]:
    """The precision every stage will take (core/precision.py, the configs' `dtype: auto`); the
    decision needs no torch."""
    from core.precision import decide_for

    decision = decide_for("auto", "cpu")
    return {"dtype": decision.dtype, "reason": decision.reason}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.output_dir)
    started = time.time()
    try:
        check_system_prompts({stage: getattr(args, f"{stage}_overrides") for stage in STAGE_ARGS})
        state = load_state(out)
        occupied = out.is_dir() and any(out.iterdir())
        if occupied and not args.resume:
            finished = (out / REPORT).is_file()
            raise DemoError(f"{out} already holds a {'finished' if finished else 'started'} demo; pass --resume to "
                            f"{'print its report again' if finished else 'continue it'}, or --output_dir NEW_DIR "
                            "for a new one (nothing is overwritten)")
        if args.resume and not state:
            raise DemoError(f"--resume: {out} holds no demo (no {STATE}); drop --resume to start one")

        if args.model is None and not state:
            from core.embedded import ensure_embedded_model

            banner("model")
            model = str(ensure_embedded_model())
        else:
            model = args.model if args.model is not None else state["model"]
        if not Path(model).is_dir():
            raise DemoError(f"model directory not found: {model}")
        settings = settings_of(args, model)
        if state:
            changed = {k: (state.get(k), v) for k, v in settings.items() if state.get(k) != v
                       and not (k == "model" and args.model is None)}
            if changed:
                raise DemoError(f"{out} was started with other settings {changed} (was, now); resume with the same "
                                "options, or use --output_dir NEW_DIR")
            settings["model"] = state["model"]
        else:
            out.mkdir(parents=True, exist_ok=True)
            state = {**settings, "output_dir": str(out), "stages": {}}  # the spelling its commands use
            save_state(out, state)
        state["machine"] = describe_machine()
        save_state(out, state)
        machine = state["machine"]
        print(f"[demo] model {state['model']}; directory {out}", flush=True)
        print(f"[demo] CPU {machine['cpu']}, {machine['cores']} cores, flags: {', '.join(machine['flags']) or 'none'}; "
              f"the configs' dtype auto gives {state['precision']['dtype']}: {state['precision']['reason']}", flush=True)

        stages = plan(args, out, state["model"])
        if args.reuse and not state["stages"]:
            old_out = Path(args.reuse)
            old_state = load_state(old_out)
            if not old_state:
                raise DemoError(f"--reuse: {old_out} holds no demo (no {STATE})")
            # Its commands name its directory as it was given then (relative or absolute).
            named = Path(old_state.get("output_dir", old_out))
            names = reusable(old_state, named, out, stages)
            copy_stages(old_out, named, out, names, stages, old_state, state)
            save_state(out, state)
            print(f"[demo] reused from {old_out}: {', '.join(names) or 'nothing (the first stage differs)'}",
                  flush=True)
        for number, (name, cmd, path) in enumerate(stages, start=1):
            if name in state["stages"]:
                print(f"[demo] {name}: done ({fmt_duration(state['stages'][name]['seconds'])}), skipped", flush=True)
                continue
            banner(f"{number}/{len(stages)} {name}")
            if name == "sft_more":
                state["budget"] = sft_more_budget(out, state["model"])
                save_state(out, state)
                cmd = cmd + ["--max_steps", str(state["budget"]["steps"])]
                print(f"[demo] the GRPO arm used {fmt_flops(state['budget']['grpo_flops'])} (model FLOPs); at "
                      f"{state['budget']['sft_tokens_per_step']:g} tokens per SFT step that is "
                      f"{state['budget']['steps']} more SFT steps", flush=True)
            extra = resume_args(name, path)
            if not extra and path is not None:
                clear_unfinished(path, out)
            try:
                threads, why = choose_threads(args.threads)
            except ValueError as err:
                raise DemoError(f"--threads: {err}") from None
            print(f"[demo] threads: {threads or 'one per core'} ({why})", flush=True)
            t0, load0, cpu0 = time.time(), load_average(), children_cpu_seconds()
            run_stage(name, cmd + extra, out, threads)
            state["stages"][name] = {"seconds": round(time.time() - t0, 1), "command": shown_command(cmd),
                                     "cpu_seconds": round(children_cpu_seconds() - cpu0, 1),
                                     "threads": threads or f"{machine['cores']} (one per core)",
                                     "load": [x for x in (load0, load_average()) if x is not None]}
            order = [stage[0] for stage in stages]  # a stage redone on --resume keeps its place in the report
            state["stages"] = dict(sorted(state["stages"].items(), key=lambda item: order.index(item[0])))
            save_state(out, state)

        banner("report")
        table, diff_lines, report = write_report(out, state)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun with --resume --output_dir {out} to continue", file=sys.stderr)
        return 130
    total = sum(info["seconds"] for info in state["stages"].values())
    print(f"\n[demo] stages took {fmt_duration(total)} in all (this command: {fmt_duration(time.time() - started)})")
    print()
    print(table)
    print()
    for line in diff_lines:
        print(line)
    print(f"\nreport: {report}  (summary: {out / SUMMARY}, plot: {out / CURVE}, examples and commands inside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
