"""The whole GRPO story, offline on a CPU: base model -> SFT priming -> GRPO, each one evaluated.

    make demo                                   # = python -m recipes.demo  -> runs/demo/report.md
    python -m recipes.demo --output_dir runs/demo2          # a second demo next to the first
    python -m recipes.demo --resume                         # continue an interrupted demo
    python -m recipes.demo --quick --model_name_or_path runs/tiny/qwen2 --output_dir runs/demo-quick  # plumbing only

The model is the embedded SmolLM2-135M-Instruct (`core.embedded`: converted once from a PyPI
wheel, no hub access needed); the task is seeded synthetic Vietnamese arithmetic problems
(`data.synthetic`) in the vi_gsm8k schema. Every stage is the project's own entry point, run as a
subprocess with the demo's YAML configs - exactly what a user runs on a GPU with a bigger model:

    1. data       python -m data.synthetic            -> data/train.jsonl, data/test.jsonl (disjoint)
    2. eval base  python -m evaluate.gsm8k  --config configs/eval/demo.yaml   (untrained model)
    3. sft        python -m recipes.sft     --config configs/sft/demo.yaml    (short format priming)
    4. eval sft   python -m evaluate.gsm8k  ... sft/merged
    5. grpo       python -m recipes.grpo    --config configs/grpo/demo.yaml   (from sft/merged;
                  held-out accuracy on a subset at every checkpoint)
    6. eval grpo  python -m evaluate.gsm8k  ... grpo/adapter
    7. sft_more   python -m recipes.sft     ... sft/adapter continued, as many steps as fit in
                  GRPO's training time (the fair question: did RL beat more SFT?)
    8. eval sft_more
    9. report     report.md: the base / SFT / GRPO / SFT-continued table, GRPO minus SFT and GRPO
                  minus SFT-continued with a paired bootstrap 95 % interval on the same held-out
                  problems, grpo_curve.png (reward and held-out accuracy over the GRPO steps), five
                  example completions before and after, and the machine: CPU flags, precision,
                  threads and load of every stage, so that runs on other machines compare.

Precision: every stage's config says `dtype: auto`, so each stage takes core/precision.py's
decision - bf16 where the CPU has it natively (avx512_bf16, AMX), else float32 (bf16 emulated on
an AVX2 CPU is ~50x slower). The demo prints the decision first; `VIRL_BF16=0 make demo` runs the
float32 arm on any CPU. Threads: `--threads auto` (core/threads.py) gives each stage the cores
other jobs leave free, decided again before every stage.

The SFT priming is 30 steps; it can stop by a target instead (`--sft_args "--target_value 0.35
--target_metric accuracy"`): a metric on the dev problems (data/dev.jsonl, apart from train and
test), checked every few steps. configs/sft/demo.yaml says what each choice measured.

Each finished stage is recorded in ``demo_state.json``; a demo directory that already holds a
run is never overwritten: ``--resume`` skips the finished stages (an unfinished training stage
continues from its last checkpoint; an unfinished evaluation is redone), ``--output_dir`` starts
a new one. Each stage's output is shown live and kept in ``logs/<stage>.log``.

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
}
STATE = "demo_state.json"
REPORT = "report.md"
CURVE = "grpo_curve.png"
RUNS = ("base", "sft", "grpo", "sft_more")
LABELS = {"base": "base (untrained)", "sft": "SFT priming", "grpo": "GRPO (from SFT)",
          "sft_more": "SFT continued (GRPO's time)"}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides a CPU run's speed

# The synthetic problems: one-step word problems (+ - x :). After a short SFT priming the 135M
# model solves about 40 % of them and 3 % of the two-step ones, where GRPO's samples almost never
# disagree; longer problems also cost CPU time in every stage.
DATA_DEFAULTS = {"n_train": 1000, "n_test": 200, "n_dev": 64, "seed": 0, "data_args": "--max_steps 1"}

# --quick: a minutes-sized plumbing run (use it with a tiny model, hence float32: tiny matrices
# are faster in it): every stage, every file of the report, no learning to speak of.
QUICK = {
    "n_train": 24,
    "n_test": 8,
    "n_dev": 4,
    "sft_args": ("--dtype float32 --max_steps 2 --per_device_train_batch_size 4 --logging_steps 1 "
                 "--target_value 1.0 --target_every 1 --target_max_new_tokens 16"),
    "grpo_args": ("--dtype float32 --max_steps 2 --num_generations 4 --per_device_train_batch_size 4 "
                  "--max_completion_length 16 --save_steps 1 --eval_limit 4 --warmup_steps 0"),
    "eval_args": "--dtype float32 --max_new_tokens 16 --batch_size 8",
}


class DemoError(Exception):
    """A mistake the user can fix (printed as one line, exit code 2)."""


# ------------------------------------------------------------------------------------ helpers
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (blank lines skipped); [] when the file is absent."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_state(out: Path) -> dict[str, Any]:
    path = out / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def save_state(out: Path, state: dict[str, Any]) -> None:
    write_json_atomic(out / STATE, state)


def fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def banner(text: str) -> None:
    print(f"\n{'=' * 8} [demo] {text} {'=' * max(4, 70 - len(text))}", flush=True)


def config_value(path: str, key: str) -> Any:
    """One key of a YAML config (None when absent)."""
    with open(ROOT / path, encoding="utf-8") as fh:
        return (yaml.safe_load(fh) or {}).get(key)


def check_system_prompts(overrides: dict[str, list[str]]) -> None:
    """SFT, GRPO and evaluation must show the model the same system prompt, or the scores compare
    different prompts; fail before minutes of work when the configs disagree."""
    prompts = {}
    for name, path in CONFIGS.items():
        value = config_value(path, "system_prompt")
        args = overrides.get(name, [])
        if "--system_prompt" in args and args.index("--system_prompt") + 1 < len(args):
            value = args[args.index("--system_prompt") + 1]
        prompts[name] = value
    if len(set(prompts.values())) != 1:
        raise DemoError(f"the demo configs use different system prompts {prompts}; make them the same")


# ------------------------------------------------------------------------------------- stages
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

    The sft_more command lacks its step count, which depends on how long GRPO took: `main` adds it
    (`sft_more_steps`) when the stage starts."""
    py = sys.executable
    data, evals = out / "data", out / "eval"
    sft_model, grpo_adapter = out / "sft" / "merged", out / "grpo" / "adapter"

    def evaluation(run: str, model_path: str) -> list[str]:
        return [py, "-m", "evaluate.gsm8k", "--config", CONFIGS["eval"], "--model_name_or_path", model_path,
                "--dataset_name", str(data / "test.jsonl"), "--run_name", run, "--results_dir", str(evals),
                *args.eval_overrides]

    stages = [
        ("data", [py, "-m", "data.synthetic", "--n_train", str(args.n_train), "--n_test", str(args.n_test),
                  "--n_dev", str(args.n_dev), "--seed", str(args.seed), "--out", str(data),
                  *shlex.split(args.data_args)], data),
        ("eval_base", evaluation("base", model), evals / "base"),
        ("sft", [py, "-m", "recipes.sft", "--config", CONFIGS["sft"], "--model_name_or_path", model,
                 "--dataset_name", str(data / "train.jsonl"), "--target_dataset_name", str(data / "dev.jsonl"),
                 "--output_dir", str(out / "sft"), "--save_merged", "true", *args.sft_overrides], out / "sft"),
        ("eval_sft", evaluation("sft", str(sft_model)), evals / "sft"),
        ("grpo", [py, "-m", "recipes.grpo", "--config", CONFIGS["grpo"], "--model_name_or_path", str(sft_model),
                  "--dataset_name", str(data / "train.jsonl"), "--eval_dataset_name", str(data / "test.jsonl"),
                  "--eval_every_save", "true", "--output_dir", str(out / "grpo"), *args.grpo_overrides],
         out / "grpo"),
        ("eval_grpo", evaluation("grpo", str(grpo_adapter)), evals / "grpo"),
    ]
    if args.sft_more:
        # The same SFT, continued from the priming's adapter on the same training file (another
        # data order, so it does not start with the rows the priming saw), with no target.
        stages += [
            ("sft_more", [py, "-m", "recipes.sft", "--config", CONFIGS["sft"],
                          "--model_name_or_path", str(out / "sft" / "adapter"),
                          "--dataset_name", str(data / "train.jsonl"), "--output_dir", str(out / "sft_more"),
                          *args.sft_overrides, "--target_value", "0", "--data_seed", "1"], out / "sft_more"),
            ("eval_sft_more", evaluation("sft_more", str(out / "sft_more" / "adapter")), evals / "sft_more"),
        ]
    return stages


def step_seconds(path: Path) -> list[float]:
    """The `step_seconds` a training run logged (core.runs.JsonlMetricsCallback), one per step
    (the last record of a step wins, as after a resume)."""
    from evaluate.plots import last_per_step

    return [seconds for _, seconds in last_per_step(read_jsonl(path), "step_seconds")]


def sft_more_steps(out: Path) -> dict[str, Any]:
    """How many SFT steps fit in GRPO's training time: GRPO's summed step times over the SFT
    priming's median step time (both as measured in this demo, checks and saves left out)."""
    grpo, sft = step_seconds(out / "grpo" / "metrics.jsonl"), sorted(step_seconds(out / "sft" / "metrics.jsonl"))
    if not grpo or not sft:
        raise DemoError("the GRPO or SFT stage logged no step times (metrics.jsonl); rerun them")
    per_step = sft[len(sft) // 2]
    return {"steps": max(1, round(sum(grpo) / per_step)), "grpo_seconds": round(sum(grpo), 1),
            "sft_step_seconds": round(per_step, 2)}


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
def load_metrics(out: Path, runs: tuple[str, ...] = RUNS) -> dict[str, dict[str, Any]]:
    metrics = {}
    for run in runs:
        path = out / "eval" / run / "metrics.json"
        if not path.is_file():
            raise DemoError(f"{path} is missing: the {run} evaluation did not finish (rerun with --resume)")
        metrics[run] = json.loads(path.read_text(encoding="utf-8"))
    return metrics


def predictions(out: Path, run: str) -> dict[str, dict[str, Any]]:
    """A run's scored predictions keyed by question (the test file has no duplicate questions)."""
    return {row["question"]: row for row in read_jsonl(out / "eval" / run / "predictions.jsonl")}


def trained_steps(out: Path, run: str) -> int | None:
    """Optimizer steps a training stage took (the last step it logged; a target may stop it early)."""
    steps = [row["step"] for row in read_jsonl(out / run / "metrics.jsonl") if isinstance(row.get("step"), int)]
    return max(steps) if steps else None


def sft_target(out: Path) -> str | None:
    """The SFT priming's stopping target in words, and whether it was reached; None without one."""
    path = out / "sft" / "config.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if not cfg or not cfg.get("target_value"):
        return None
    steps = trained_steps(out, "sft")
    reached = steps is not None and steps < cfg["max_steps"]
    checks = read_jsonl(out / "sft" / "train_eval.jsonl")
    n = checks[-1]["n"] if checks else cfg["target_limit"]
    return (f"{'stopped at' if reached else 'did not reach'} {cfg['target_metric']} >= {cfg['target_value']:g} "
            f"on {n} dev problems")


def results_table(metrics: dict[str, dict[str, Any]], steps: dict[str, Any]) -> str:
    """The Markdown table of the evaluated stages."""
    lines = ["| model | accuracy | accuracy (strict) | format compliance | mean completion tokens |",
             "|---|---|---|---|---|"]
    for run in metrics:
        m = metrics[run]
        label = LABELS[run] + (f", {steps[run]}" if steps.get(run) else "")
        lines.append(f"| {label} | {m['accuracy']:.3f} | {m['accuracy_strict']:.3f} | {m['format_rate']:.3f} "
                     f"| {m.get('mean_completion_tokens', float('nan')):.1f} |")
    return "\n".join(lines)


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "a gain beyond the bootstrap noise"
    if high < 0:
        return "a loss beyond the bootstrap noise"
    return "inside the noise: no demonstrated difference"


def compare(out: Path, baseline: str = "sft") -> list[dict[str, Any]]:
    """GRPO minus `baseline` (the SFT priming, or SFT continued) on the same held-out problems:
    flexible and strict accuracy, or flexible only against SFT continued."""
    from evaluate.stats import compare_runs

    rows = []
    fields = (("correct", "accuracy"), ("correct_strict", "accuracy (strict)"))
    for field, name in fields if baseline == "sft" else fields[:1]:
        d = compare_runs(out / "eval" / baseline, out / "eval" / "grpo", field=field, n_resamples=10_000, seed=0)
        rows.append({"baseline": baseline, "metric": name, "n": d.n, baseline: d.mean_a, "grpo": d.mean_b,
                     "diff": d.diff, "low": d.low, "high": d.high, "p_value": d.p_value, "p_text": d.p_text(),
                     "verdict": verdict(d.low, d.high)})
    return rows


def diff_line(row: dict[str, Any]) -> str:
    name = "SFT continued" if row.get("baseline") == "sft_more" else "SFT"
    return (f"GRPO - {name}, {row['metric']}: {100 * row['diff']:+.1f} points on {row['n']} held-out problems "
            f"(paired bootstrap 95% CI {100 * row['low']:+.1f} to {100 * row['high']:+.1f}, "
            f"{row['p_text']}): {row['verdict']}")


def sft_accuracy_on_training_subset(out: Path) -> tuple[float, int] | None:
    """The SFT model's greedy accuracy on the held-out subset the GRPO callback evaluates, for
    the curve's step 0 (the callback runs at checkpoints only)."""
    config_path = out / "grpo" / "config.yaml"
    if not config_path.is_file():
        return None
    cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    from data.vi_gsm8k import load_vi_gsm8k

    subset = load_vi_gsm8k(cfg["eval_dataset_name"], split=cfg.get("eval_split", "test"), limit=cfg["eval_limit"],
                           seed=cfg["seed"], system_prompt=cfg["system_prompt"])
    sft = predictions(out, "sft")
    hits = [sft[q]["correct"] for q in subset["question"] if q in sft]
    return (sum(hits) / len(hits), len(hits)) if hits else None


def plot_curve(out: Path) -> Path:
    """grpo_curve.png: training reward per step (and its running mean) and the held-out accuracy
    measured at each checkpoint, from the SFT model's at step 0 - `make plot`'s overview picture."""
    from evaluate.plots import load_run, plot_overview

    run = load_run(out / "grpo", label="grpo")
    start = sft_accuracy_on_training_subset(out)
    return plot_overview([run], out / CURVE, start={"grpo": start} if start else None, start_label="the SFT model")


def examples(out: Path, k: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """k held-out problems picked by a seeded draw (not by outcome), with the SFT and GRPO answers."""
    sft, grpo = predictions(out, "sft"), predictions(out, "grpo")
    questions = sorted(q for q in sft if q in grpo)
    picked = random.Random(seed).sample(questions, min(k, len(questions)))
    return [{"question": q, "answer": sft[q]["answer"], "sft": sft[q], "grpo": grpo[q]} for q in picked]


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


def write_report(out: Path, state: dict[str, Any]) -> tuple[str, list[str], Path]:
    """report.md in the demo directory; returns (table, difference lines, report path)."""
    runs = tuple(r for r in RUNS if r != "sft_more" or "eval_sft_more" in state.get("stages", {}))
    metrics = load_metrics(out, runs)
    done = {run: trained_steps(out, run) for run in ("sft", "grpo", "sft_more")}
    steps = {run: f"{n} steps" for run, n in done.items() if n}
    if done["sft"] and done["sft_more"]:
        steps["sft_more"] = f"{done['sft']} + {done['sft_more']} steps"
    target = sft_target(out)
    if done["sft"] and target:
        steps["sft"] += f" ({target})"
    table = results_table(metrics, steps)
    diffs = compare(out)
    if "sft_more" in runs:
        diffs += compare(out, baseline="sft_more")
    diff_lines = [diff_line(row) for row in diffs]
    sft, grpo = predictions(out, "sft"), predictions(out, "grpo")
    fixed = sum(1 for q in sft if q in grpo and grpo[q]["correct"] and not sft[q]["correct"])
    broke = sum(1 for q in sft if q in grpo and sft[q]["correct"] and not grpo[q]["correct"])
    plot_curve(out)
    seconds = {name: info["seconds"] for name, info in state.get("stages", {}).items()}

    parts = [
        "# Offline GRPO demo",
        "",
        f"Model: `{state['model']}`; data: {state['n_train']} synthetic Vietnamese arithmetic problems "
        f"for training, {metrics['sft']['n']} disjoint held-out problems for every evaluation "
        f"(seed {state['seed']}, `{state['data_args']}`); greedy decoding, "
        f"{metrics['sft']['settings']['max_new_tokens']} new tokens at most.",
        "",
        table,
        "",
        "accuracy: the final number is right (read flexibly: `####`, \"Đáp số:\", last number); strict: right "
        "and on the final `#### <số>` line; format compliance: there is a `#### <số>` line.",
        "",
        *[f"- {line}" for line in diff_lines],
        f"- Problems GRPO turned right: {fixed}; turned wrong: {broke} (of {len(sft)}).",
        *([f"- {line}"] if (line := grpo_step_line(out)) else []),
        *([f"- SFT continued: {state['sft_more']['steps']} more SFT steps, as many as fit in GRPO's "
           f"{fmt_duration(state['sft_more']['grpo_seconds'])} of training steps at the priming's median "
           f"{state['sft_more']['sft_step_seconds']:g} s per SFT step (same training file, continuing the "
           "priming's adapter)."] if "sft_more" in runs else []),
        "",
        "## Machine",
        "",
        *machine_lines(out, state),
        "",
        f"![GRPO reward and held-out accuracy]({CURVE})",
        "",
        "## Stages",
        "",
        "| stage | time | CPU time | threads | load (1 min, start / end) | command |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in state.get("stages", {}).items():
        load = "/".join(f"{x:.1f}" for x in info["load"]) if info.get("load") else ""
        cpu = fmt_duration(info["cpu_seconds"]) if "cpu_seconds" in info else ""
        parts.append(f"| {name} | {fmt_duration(info['seconds'])} | {cpu} | {info.get('threads') or 'default'} "
                     f"| {load} | `{info['command']}` |")
    total = sum(seconds.values())
    cpu_total = sum(info.get("cpu_seconds", 0.0) for info in state.get("stages", {}).values())
    parts += [f"| total | {fmt_duration(total)} | {fmt_duration(cpu_total)} | | | |", "",
              "CPU time: user + system seconds of the stage's process, all threads together. With one thread "
              "and other jobs on the cores, time minus CPU time is time spent waiting for a core.", ""]
    parts += ["## Five held-out problems, before (SFT) and after (GRPO)", "",
              "Picked by a seeded draw from the test problems, not by outcome.", ""]
    for i, ex in enumerate(examples(out), start=1):
        parts += [f"### {i}. {ex['question']}", "", f"Gold answer: {ex['answer']}", ""]
        for run in ("sft", "grpo"):
            row = ex[run]
            mark = "right" if row["correct"] else "wrong"
            parts += [f"{LABELS[run]} ({mark}, read as {row['pred']}):", "", "```text",
                      row["completion"].strip() or "(empty)", "```", ""]
    report = out / REPORT
    write_text_atomic(report, "\n".join(parts))
    write_json_atomic(out / "comparison.json", {
        "metrics": {r: {k: v for k, v in metrics[r].items() if not isinstance(v, dict)} for r in runs},
        "steps": steps, "grpo_minus_sft": [d for d in diffs if d["baseline"] == "sft"],
        "grpo_minus_sft_more": [d for d in diffs if d["baseline"] == "sft_more"],
        "fixed": fixed, "broke": broke, "machine": state.get("machine"), "precision": state.get("precision")})
    return table, diff_lines, report


# --------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m recipes.demo",
        description="Offline GRPO demo on a CPU: base -> SFT priming -> GRPO, evaluated, with a report.",
    )
    parser.add_argument("--output_dir", default="runs/demo", help="demo directory (default runs/demo)")
    parser.add_argument("--resume", action="store_true", help="continue the demo in output_dir")
    parser.add_argument("--model_name_or_path", dest="model", default=None,
                        help="model directory (default: the embedded SmolLM2-135M-Instruct, converted on first use)")
    parser.add_argument("--quick", action="store_true",
                        help="minutes-sized plumbing run (tiny counts; use with a tiny --model)")
    parser.add_argument("--n_train", type=int, default=None, help=f"training problems (default {DATA_DEFAULTS['n_train']})")
    parser.add_argument("--n_test", type=int, default=None, help=f"held-out problems (default {DATA_DEFAULTS['n_test']})")
    parser.add_argument("--n_dev", type=int, default=None,
                        help=f"dev problems for the SFT priming's stopping target (default {DATA_DEFAULTS['n_dev']})")
    parser.add_argument("--seed", type=int, default=DATA_DEFAULTS["seed"], help="data seed (default 0)")
    parser.add_argument("--data_args", default=DATA_DEFAULTS["data_args"],
                        help=f"extra data.synthetic options (default {DATA_DEFAULTS['data_args']!r})")
    parser.add_argument("--threads", default="auto",
                        help="threads per stage: a number, or auto (the cores other jobs leave free, "
                             "decided before each stage)")
    parser.add_argument("--sft_more", default="true", choices=("true", "false"),
                        help="also continue SFT for GRPO's training time and evaluate it (default true): "
                             "did RL beat more SFT?")
    for stage in ("sft", "grpo", "eval"):
        parser.add_argument(f"--{stage}_args", default="",
                            help=f"extra '--key value' overrides of {CONFIGS[stage]}")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.n_train = args.n_train or quick.get("n_train", DATA_DEFAULTS["n_train"])
    args.n_test = args.n_test or quick.get("n_test", DATA_DEFAULTS["n_test"])
    args.n_dev = args.n_dev or quick.get("n_dev", DATA_DEFAULTS["n_dev"])
    args.sft_more = args.sft_more == "true"
    for stage in ("sft", "grpo", "eval"):
        extra = shlex.split(quick.get(f"{stage}_args", "")) + shlex.split(getattr(args, f"{stage}_args"))
        setattr(args, f"{stage}_overrides", extra)
    return args


def settings_of(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """What decides a demo's numbers; a resumed demo must be given the same."""
    return {"model": model, "quick": args.quick, "n_train": args.n_train, "n_test": args.n_test, "n_dev": args.n_dev,
            "seed": args.seed, "data_args": args.data_args, "sft_args": args.sft_overrides,
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
        check_system_prompts({"sft": args.sft_overrides, "grpo": args.grpo_overrides, "eval": args.eval_overrides})
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
            state = {**settings, "stages": {}}
            save_state(out, state)
        state["machine"] = describe_machine()
        save_state(out, state)
        machine = state["machine"]
        print(f"[demo] model {state['model']}; directory {out}", flush=True)
        print(f"[demo] CPU {machine['cpu']}, {machine['cores']} cores, flags: {', '.join(machine['flags']) or 'none'}; "
              f"the configs' dtype auto gives {state['precision']['dtype']}: {state['precision']['reason']}", flush=True)

        stages = plan(args, out, state["model"])
        for number, (name, cmd, path) in enumerate(stages, start=1):
            if name in state["stages"]:
                print(f"[demo] {name}: done ({fmt_duration(state['stages'][name]['seconds'])}), skipped", flush=True)
                continue
            banner(f"{number}/{len(stages)} {name}")
            if name == "sft_more":
                state["sft_more"] = sft_more_steps(out)
                save_state(out, state)
                cmd = cmd + ["--max_steps", str(state["sft_more"]["steps"])]
                print(f"[demo] GRPO trained for {fmt_duration(state['sft_more']['grpo_seconds'])}; at "
                      f"{state['sft_more']['sft_step_seconds']:g} s per SFT step that is "
                      f"{state['sft_more']['steps']} more SFT steps", flush=True)
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
            shown = " ".join(shlex.quote(c) for c in ["python"] + cmd[1:])
            state["stages"][name] = {"seconds": round(time.time() - t0, 1), "command": shown,
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
    print(f"\nreport: {report}  (plot: {out / CURVE}, examples and commands inside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
