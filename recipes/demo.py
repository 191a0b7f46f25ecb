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
    7. report     report.md: the base / SFT / GRPO table, GRPO minus SFT with a paired bootstrap
                  95 % interval on the same held-out problems, grpo_curve.png (reward and held-out
                  accuracy over the GRPO steps) and five example completions before and after.

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
import random
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

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "sft": "configs/sft/demo.yaml",
    "grpo": "configs/grpo/demo.yaml",
    "eval": "configs/eval/demo.yaml",
}
STATE = "demo_state.json"
REPORT = "report.md"
CURVE = "grpo_curve.png"
RUNS = ("base", "sft", "grpo")
LABELS = {"base": "base (untrained)", "sft": "SFT priming", "grpo": "GRPO (from SFT)"}

# The synthetic problems: one-step word problems (+ - x :). After a short SFT priming the 135M
# model solves about 40 % of them and 3 % of the two-step ones, where GRPO's samples almost never
# disagree; longer problems also cost CPU time in every stage.
DATA_DEFAULTS = {"n_train": 1000, "n_test": 200, "seed": 0, "data_args": "--max_steps 1"}

# --quick: a minutes-sized plumbing run (use it with a tiny model, hence float32: tiny matrices
# are faster in it): every stage, every file of the report, no learning to speak of.
QUICK = {
    "n_train": 24,
    "n_test": 8,
    "sft_args": "--dtype float32 --max_steps 2 --per_device_train_batch_size 4 --logging_steps 1",
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
def other_runnable_threads(samples: int = 20, interval: float = 0.05) -> float | None:
    """How many threads of other processes are running or waiting for a core right now (the
    median of a short sampling of /proc/loadavg's runnable count, less this process); None where
    /proc is not there."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            return None
        time.sleep(interval)
    counts.sort()
    return float(counts[len(counts) // 2])


def choose_threads(requested: str) -> str | None:
    """OMP_NUM_THREADS for the next stage: a number as given; for "auto" the cores that other
    processes leave free (None: torch's default, one thread per core).

    With more runnable threads than cores, torch's threads wait for each other at every operation:
    measured here, a SmolLM2-135M forward pass took 3x longer with 2 threads than with 1 while
    other jobs kept the 2 cores busy. Decided again before every stage, since other jobs come and
    go; an OMP_NUM_THREADS already set by the user is kept.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return os.environ["OMP_NUM_THREADS"]
    if requested != "auto":
        return requested
    cores = os.cpu_count() or 1
    others = other_runnable_threads()
    if others is None or cores == 1:
        return None
    threads = max(1, cores - int(others + 0.5))
    if threads == cores:
        return None
    print(f"[demo] other jobs keep {others:g} thread(s) busy on the {cores} cores: this stage runs with "
          f"{threads} thread(s), faster than contending for the cores (--threads N to choose)", flush=True)
    return str(threads)


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
    """The stages as (name, command, output path that an interrupted run must clear or resume)."""
    py = sys.executable
    data, evals = out / "data", out / "eval"
    sft_model, grpo_adapter = out / "sft" / "merged", out / "grpo" / "adapter"

    def evaluation(run: str, model_path: str) -> list[str]:
        return [py, "-m", "evaluate.gsm8k", "--config", CONFIGS["eval"], "--model_name_or_path", model_path,
                "--dataset_name", str(data / "test.jsonl"), "--run_name", run, "--results_dir", str(evals),
                *args.eval_overrides]

    return [
        ("data", [py, "-m", "data.synthetic", "--n_train", str(args.n_train), "--n_test", str(args.n_test),
                  "--seed", str(args.seed), "--out", str(data), *shlex.split(args.data_args)], data),
        ("eval_base", evaluation("base", model), evals / "base"),
        ("sft", [py, "-m", "recipes.sft", "--config", CONFIGS["sft"], "--model_name_or_path", model,
                 "--dataset_name", str(data / "train.jsonl"), "--output_dir", str(out / "sft"),
                 "--save_merged", "true", *args.sft_overrides], out / "sft"),
        ("eval_sft", evaluation("sft", str(sft_model)), evals / "sft"),
        ("grpo", [py, "-m", "recipes.grpo", "--config", CONFIGS["grpo"], "--model_name_or_path", str(sft_model),
                  "--dataset_name", str(data / "train.jsonl"), "--eval_dataset_name", str(data / "test.jsonl"),
                  "--eval_every_save", "true", "--output_dir", str(out / "grpo"), *args.grpo_overrides],
         out / "grpo"),
        ("eval_grpo", evaluation("grpo", str(grpo_adapter)), evals / "grpo"),
    ]


def resume_args(name: str, path: Path) -> list[str]:
    """Extra arguments for an unfinished training stage: --resume when it left a checkpoint."""
    if name in ("sft", "grpo") and path.is_dir() and any(path.glob("checkpoint-*")):
        return ["--resume", "true"]
    return []


# ------------------------------------------------------------------------------------- report
def load_metrics(out: Path) -> dict[str, dict[str, Any]]:
    metrics = {}
    for run in RUNS:
        path = out / "eval" / run / "metrics.json"
        if not path.is_file():
            raise DemoError(f"{path} is missing: the {run} evaluation did not finish (rerun with --resume)")
        metrics[run] = json.loads(path.read_text(encoding="utf-8"))
    return metrics


def predictions(out: Path, run: str) -> dict[str, dict[str, Any]]:
    """A run's scored predictions keyed by question (the test file has no duplicate questions)."""
    return {row["question"]: row for row in read_jsonl(out / "eval" / run / "predictions.jsonl")}


def results_table(metrics: dict[str, dict[str, Any]], steps: dict[str, Any]) -> str:
    """The Markdown table of the three stages."""
    lines = ["| model | accuracy | accuracy (strict) | format compliance | mean completion tokens |",
             "|---|---|---|---|---|"]
    for run in RUNS:
        m = metrics[run]
        label = LABELS[run] + (f", {steps[run]} steps" if steps.get(run) else "")
        lines.append(f"| {label} | {m['accuracy']:.3f} | {m['accuracy_strict']:.3f} | {m['format_rate']:.3f} "
                     f"| {m.get('mean_completion_tokens', float('nan')):.1f} |")
    return "\n".join(lines)


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "a gain beyond the bootstrap noise"
    if high < 0:
        return "a loss beyond the bootstrap noise"
    return "inside the noise: no demonstrated difference"


def compare(out: Path) -> list[dict[str, Any]]:
    """GRPO minus SFT on the same held-out problems, flexible and strict accuracy."""
    from evaluate.stats import compare_runs

    rows = []
    for field, name in (("correct", "accuracy"), ("correct_strict", "accuracy (strict)")):
        d = compare_runs(out / "eval" / "sft", out / "eval" / "grpo", field=field, n_resamples=10_000, seed=0)
        rows.append({"metric": name, "n": d.n, "sft": d.mean_a, "grpo": d.mean_b, "diff": d.diff,
                     "low": d.low, "high": d.high, "p_value": d.p_value, "p_text": d.p_text(), "verdict": verdict(d.low, d.high)})
    return rows


def diff_line(row: dict[str, Any]) -> str:
    return (f"GRPO - SFT, {row['metric']}: {100 * row['diff']:+.1f} points on {row['n']} held-out problems "
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


def write_report(out: Path, state: dict[str, Any]) -> tuple[str, list[str], Path]:
    """report.md in the demo directory; returns (table, difference lines, report path)."""
    metrics = load_metrics(out)
    steps = {}
    for run in ("sft", "grpo"):
        cfg = out / run / "config.yaml"
        if cfg.is_file():
            steps[run] = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("max_steps")
    table = results_table(metrics, steps)
    diffs = compare(out)
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
        "",
        f"![GRPO reward and held-out accuracy]({CURVE})",
        "",
        "## Stages",
        "",
        "| stage | time | command |",
        "|---|---|---|",
    ]
    for name, info in state.get("stages", {}).items():
        parts.append(f"| {name} | {fmt_duration(info['seconds'])} | `{info['command']}` |")
    total = sum(seconds.values())
    parts += [f"| total | {fmt_duration(total)} | |", ""]
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
        "metrics": {r: {k: v for k, v in metrics[r].items() if not isinstance(v, dict)} for r in RUNS},
        "grpo_minus_sft": diffs, "fixed": fixed, "broke": broke})
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
    parser.add_argument("--seed", type=int, default=DATA_DEFAULTS["seed"], help="data seed (default 0)")
    parser.add_argument("--data_args", default=DATA_DEFAULTS["data_args"],
                        help=f"extra data.synthetic options (default {DATA_DEFAULTS['data_args']!r})")
    parser.add_argument("--threads", default="auto",
                        help="threads per stage: a number, or auto (the cores other jobs leave free, "
                             "decided before each stage)")
    for stage in ("sft", "grpo", "eval"):
        parser.add_argument(f"--{stage}_args", default="",
                            help=f"extra '--key value' overrides of {CONFIGS[stage]}")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.n_train = args.n_train or quick.get("n_train", DATA_DEFAULTS["n_train"])
    args.n_test = args.n_test or quick.get("n_test", DATA_DEFAULTS["n_test"])
    for stage in ("sft", "grpo", "eval"):
        extra = shlex.split(quick.get(f"{stage}_args", "")) + shlex.split(getattr(args, f"{stage}_args"))
        setattr(args, f"{stage}_overrides", extra)
    return args


def settings_of(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """What decides a demo's numbers; a resumed demo must be given the same."""
    return {"model": model, "quick": args.quick, "n_train": args.n_train, "n_test": args.n_test, "seed": args.seed,
            "data_args": args.data_args, "sft_args": args.sft_overrides, "grpo_args": args.grpo_overrides,
            "eval_args": args.eval_overrides}


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
        print(f"[demo] model {state['model']}; directory {out}", flush=True)

        for name, cmd, path in plan(args, out, state["model"]):
            if name in state["stages"]:
                print(f"[demo] {name}: done ({fmt_duration(state['stages'][name]['seconds'])}), skipped", flush=True)
                continue
            banner(name)
            extra = resume_args(name, path)
            if not extra and path is not None:
                clear_unfinished(path, out)
            t0 = time.time()
            run_stage(name, cmd + extra, out, choose_threads(args.threads))
            shown = " ".join(shlex.quote(c) for c in ["python"] + cmd[1:])
            state["stages"][name] = {"seconds": round(time.time() - t0, 1), "command": shown}
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
