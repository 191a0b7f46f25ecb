"""Stock TRL GRPOTrainer against the toolkit's GRPO (each prompt encoded once per group), on a CPU.

Both arms are the same `trl.GRPOTrainer` built from configs/grpo/demo.yaml (the embedded
SmolLM2-135M-Instruct, LoRA r=16 on every projection, the demo's rewards), loaded by the recipe's
own loader with the same seed; "ours" has `recipes.grpo_prefix` attached, as recipes/grpo.py does.
They run in one process and take turns step by step (stock step 1, ours step 1, stock step 2, ...),
so that whatever else the machine does hits both about equally. Each arm keeps its own random
stream across the turns, so both sample from the same seed: with the same numbers in, they draw
the same completions (checked: `same_completions_first_step`).

Per step, from core/timing.py's phases: the step time, generation (HF `generate`), loss (forward
and backward of the micro-batch), tokens per second (TRL's prompt + completion token count over
the step time), and the peak resident memory of the process during the step (Linux resets the
high-water mark at each turn; both arms' weights are resident throughout, so the step's own
memory is `peak - start`). The largest log-prob difference is the first-use check of the shared
computation against stock's on the first batch, at the same weights.

Shapes (prompts in SmolLM2's tokens):
    demo                         the demo: synthetic one-step problems with the demo's system prompt
                                 (prompt median ~115), completions <= 32, 2 prompts x G 8 per step
    demo_1prompt_G4/_G8/_G16     the same problems, 1 prompt per step, G = 4, 8, 16 (the G sweep)
    gsm                          vi_gsm8k-like: the project's vi_gsm8k fixture with the vi_gsm8k
                                 system prompt (median ~250), completions of exactly 250 tokens
                                 (min_new_tokens, in both arms), 1 prompt x G 8 per step

    make bench-grpo                                  # all five shapes, float32, 2 threads
    python -m bench.grpo_prefix --shapes demo --steps 3 --threads 1
    python -m bench.grpo_prefix --model_name_or_path runs/tiny/qwen2 --shapes tiny --out /tmp/b   # plumbing

Writes `<out>/grpo_shared_prefix.json` and `.md` (default out: bench/results).
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Both arms run configs/grpo/demo.yaml, which says `backend: hf`: the bench then never imports
# Unsloth (core/boot.py reads the backend from the command line, which here names no config). Only
# when run as a command: a test that imports this module must not hand the switch to every process
# it starts afterwards.
if __name__ == "__main__":
    os.environ.setdefault("VIRL_NO_UNSLOTH", "1")

import core.boot  # noqa: E402,F401  (as in every entry point)

# isort: split
import torch
from transformers import PrinterCallback, TrainerCallback, set_seed
from trl import GRPOTrainer

from core.cli import ArgumentParser, UserError
from core.config import parse_args
from core.files import write_json_atomic, write_text_atomic
from core.models import load_model_and_tokenizer
from core.precision import cpu_flags
from core.threads import other_runnable_threads
from core.timing import attach_grpo_step_timer
from data.synthetic import generate as synthetic_problems
from data.vi_gsm8k import SYSTEM_PROMPT, load_vi_gsm8k
from recipes.grpo import ARGUMENT_TYPES
from recipes.grpo_prefix import attach as attach_shared_prefix
from rewards import get_reward_funcs

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "grpo" / "demo.yaml"
FIXTURE = ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl"
DEMO_SYSTEM_PROMPT = "Giải toán. Dòng cuối: #### <đáp số>"  # configs/grpo/demo.yaml's
ARMS = ("stock", "ours")
FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")


@dataclass(frozen=True)
class Shape:
    data: str  # "demo" (synthetic problems) or "gsm" (the vi_gsm8k fixture)
    generations: int
    prompts_per_step: int
    completion: int
    exact_completion: bool = False  # min_new_tokens = completion, in both arms


SHAPES = {
    "demo": Shape("demo", 8, 2, 32),
    "gsm": Shape("gsm", 8, 1, 250, exact_completion=True),
    # G sweep: one prompt per step, so that the rows grow with G alone
    "demo_1prompt_G4": Shape("demo", 4, 1, 32),
    "demo_1prompt_G8": Shape("demo", 8, 1, 32),
    "demo_1prompt_G16": Shape("demo", 16, 1, 32),
    "tiny": Shape("gsm", 4, 2, 8),  # the test's plumbing check on a tiny model
}
DEFAULT_SHAPES = ("demo", "gsm", "demo_1prompt_G4", "demo_1prompt_G8", "demo_1prompt_G16")


# ------------------------------------------------------------------------------ memory
def _status(field: str) -> float:
    """A /proc/self/status memory field in GB (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> None:
    """Give freed heap memory back to the system, then reset the process's resident high-water
    mark (VmHWM) to its current size (Linux, glibc). Without the first, memory the previous step
    freed stays resident and the next step's peak would hide under it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------- turns
class Turns:
    """Two trainers in two threads, one step each in turn.

    An arm holds the turn from the start of its step to the end of that step's log (so its
    `train()` start-up, generation, loss and logging never overlap the other arm), then hands it
    over. torch's random state is one per process: each arm's is saved when it hands over and put
    back when it takes the turn again, so each arm samples exactly as it would alone.
    """

    def __init__(self, seed: int):
        self.cond = threading.Condition()
        self.current, self.holding = ARMS[0], None
        self.finished: set[str] = set()
        self.failed: BaseException | None = None
        torch.manual_seed(seed)  # both arms start from the same state
        self.rng = {arm: torch.get_rng_state() for arm in ARMS}
        self.records: dict[str, list[dict]] = {arm: [] for arm in ARMS}

    def take(self, arm: str) -> None:
        if self.holding == arm:
            return
        with self.cond:
            self.cond.wait_for(lambda: self.current == arm or self.failed is not None)
            if self.failed is not None:
                raise RuntimeError("the other arm failed") from self.failed
            self.holding = arm
        torch.set_rng_state(self.rng[arm])

    def give(self, arm: str) -> None:
        self.rng[arm] = torch.get_rng_state()
        with self.cond:
            self.holding = None
            other = ARMS[1 - ARMS.index(arm)]
            if other not in self.finished:
                self.current = other
            self.cond.notify_all()

    def finish(self, arm: str, error: BaseException | None = None) -> None:
        with self.cond:
            self.finished.add(arm)
            self.holding = None
            if error is not None:
                self.failed = error
            self.current = ARMS[1 - ARMS.index(arm)]
            self.cond.notify_all()


class _TakeTurn(TrainerCallback):
    """First callback of the arm: wait for its turn before the step (and before the step clock),
    and start the step's memory high-water mark."""

    def __init__(self, turns: Turns, arm: str):
        self.turns, self.arm, self.step = turns, arm, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.turns.take(self.arm)
        reset_peak_rss()
        self.step = {"rss_start_gb": _status("VmRSS"), "cpu_start": time.process_time()}


class _GiveTurn(TrainerCallback):
    """Last callback of the arm: note the step's memory and completions at its end, the step
    clock's phases and TRL's counters at its log, then hand over the turn."""

    def __init__(self, turns: Turns, arm: str, take: _TakeTurn, trainer):
        self.turns, self.arm, self.take, self.trainer = turns, arm, take, trainer

    def on_step_end(self, args, state, control, **kwargs):
        record = dict(self.take.step, peak_rss_gb=_status("VmHWM"), step=state.global_step,
                      cpu_s=time.process_time() - self.take.step.pop("cpu_start"))
        if state.global_step == 1:
            record["completions"] = list(self.trainer._logs["completion"])
        self.turns.records[self.arm].append(record)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "time/step" in logs:  # logging_steps 1: every step's row
            self.turns.records[self.arm][-1].update(
                {k: logs[k] for k in logs if k.startswith("time/") or k in ("num_tokens", "completions/mean_length",
                                                                              "loss")})
            self.turns.give(self.arm)


# -------------------------------------------------------------------------------- setup
def dataset_for(shape: Shape, work: Path, seed: int):
    """The training problems of a shape, loaded as recipes/grpo.py loads them."""
    if shape.data == "demo":
        rows = synthetic_problems(64, seed=seed, max_steps=1)  # the demo's one-step problems
        path = work / "demo.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
        source, system = path, DEMO_SYSTEM_PROMPT
    else:
        source, system = FIXTURE, SYSTEM_PROMPT
    return load_vi_gsm8k(str(source), system_prompt=system, seed=seed).remove_columns("completion")


def build_arm(arm: str, shape: Shape, argv: list[str], dataset, turns: Turns, work: Path):
    script_args, training_args, model_args, _ = parse_args(ARGUMENT_TYPES, argv)
    training_args = copy.deepcopy(training_args)
    training_args.output_dir = str(work / arm)
    training_args.disable_tqdm = True  # the bench prints its own lines; the arms' logs go to the records
    if shape.exact_completion:
        training_args.generation_kwargs = {"min_new_tokens": shape.completion}
    set_seed(training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, seed=training_args.seed)
    take = _TakeTurn(turns, arm)
    trainer = GRPOTrainer(model=model, reward_funcs=get_reward_funcs(script_args.reward_funcs), args=training_args,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[take])
    trainer.remove_callback(PrinterCallback)
    sharing = attach_shared_prefix(trainer) if arm == "ours" else None
    attach_grpo_step_timer(trainer)
    trainer.add_callback(_GiveTurn(turns, arm, take, trainer))
    return trainer, tokenizer, sharing


def run_shape(name: str, shape: Shape, args, work: Path) -> dict:
    steps = args.warmup + args.steps
    argv = ["--config", str(CONFIG), "--model_name_or_path", args.model_name_or_path, "--dataset_name", "unused",
            "--output_dir", str(work / "unused"), "--dtype", args.dtype, "--num_generations", str(shape.generations),
            "--per_device_train_batch_size", str(shape.generations * shape.prompts_per_step),
            "--max_completion_length", str(shape.completion), "--max_steps", str(steps), "--save_strategy", "no",
            "--eval_every_save", "false", "--logging_steps", "1", "--seed", str(args.seed),
            "--max_seq_length", "1024", "--report_to", "none"]
    _, training_args, _, _ = parse_args(ARGUMENT_TYPES, argv)
    dataset = dataset_for(shape, work, training_args.seed)
    turns = Turns(training_args.seed)
    built = {arm: build_arm(arm, shape, argv, dataset, turns, work) for arm in ARMS}
    stock_lora = [p.detach() for p in built["stock"][0].model.parameters() if p.requires_grad]
    ours_lora = [p.detach() for p in built["ours"][0].model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(stock_lora, ours_lora, strict=True)), "the arms start apart"
    tokenizer = built["stock"][1]
    prompt_tokens = sorted(len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                             return_dict=True)["input_ids"]) for row in dataset)

    def train(arm: str) -> None:
        torch.set_num_threads(args.threads)  # per thread: OpenMP settings do not cross threads
        try:
            turns.take(arm)  # train()'s start-up seeds torch: inside the turn
            built[arm][0].train()
        except BaseException as err:  # noqa: BLE001  (handed to the other arm, then re-raised below)
            turns.finish(arm, err)
            raise
        turns.finish(arm)

    print(f"[bench] {name}: {steps} steps per arm, taking turns ({args.warmup} warm-up)", flush=True)
    started = time.time()
    errors: list[BaseException] = []
    threads = [threading.Thread(target=lambda a=arm: _catch(train, a, errors), name=arm) for arm in ARMS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    result = summarize(turns.records, args.warmup)
    result.update(prompt_tokens_median=statistics.median(prompt_tokens), generations=shape.generations,
                  rows_per_step=shape.generations * shape.prompts_per_step, max_completion=shape.completion,
                  exact_completion=shape.exact_completion, wall_seconds=round(time.time() - started, 1),
                  max_abs_logprob_diff=built["ours"][2].first_use_max_abs_logprob_diff,
                  shared=built["ours"][2].summary())
    first = [turns.records[arm][0].get("completions") for arm in ARMS]
    result["same_completions_first_step"] = first[0] is not None and first[0] == first[1]
    return result


def _catch(func, arm, errors):
    try:
        func(arm)
    except BaseException as err:  # noqa: BLE001
        errors.append(err)


def summarize(records: dict[str, list[dict]], warmup: int) -> dict:
    """Per arm, medians over the measured steps; the ratios ours / stock (per step pair, median)."""
    out = {}
    for arm, rows in records.items():
        measured = rows[warmup:]
        if not measured:
            raise UserError("no measured steps: raise --steps")
        tokens = [b.get("num_tokens", 0) - a.get("num_tokens", 0) for a, b in zip(rows, rows[1:], strict=False)]
        tokens = ([rows[0].get("num_tokens", 0)] + tokens)[warmup:]

        def med(key, measured=measured):
            return round(statistics.median(r.get(key, 0.0) for r in measured), 3)

        out[arm] = {"step_s": med("time/step"), "generation_s": med("time/generation"),
                    "loss_s": med("time/forward_backward"), "logprob_passes_s": med("time/logprob_passes"),
                    "optimizer_s": med("time/optimizer"),
                    "tokens_per_s": round(statistics.median(t / r["time/step"] for t, r in zip(tokens, measured,
                                                                                                strict=True)), 1),
                    "completion_mean": med("completions/mean_length"),
                    "peak_rss_gb": round(max(r["peak_rss_gb"] for r in measured), 3),
                    "step_rss_gb": round(max(r["peak_rss_gb"] - r["rss_start_gb"] for r in measured), 3),
                    "cpu_s": round(statistics.median(r["cpu_s"] for r in measured), 3),
                    "steps": [{k: round(v, 3) for k, v in r.items() if isinstance(v, float)} for r in rows]}
    pairs = list(zip(records["stock"][warmup:], records["ours"][warmup:], strict=False))

    def ratio(key):
        return round(statistics.median(o[key] / s[key] for s, o in pairs if s.get(key)), 3)

    out.update(step_time_ratio=ratio("time/step"), generation_ratio=ratio("time/generation"),
               loss_ratio=ratio("time/forward_backward"), cpu_time_ratio=ratio("cpu_s"),
               pair_step_ratios=[round(o["time/step"] / s["time/step"], 3) for s, o in pairs])
    return out


# ------------------------------------------------------------------------------- report
def machine(threads: int) -> dict:
    """The CPU, its flags, the threads and how busy the machine is (runnable threads of other
    processes, sampled at the start; the 1-minute load average at the start and the end)."""
    flags = cpu_flags()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
            "load_1min_start": round(os.getloadavg()[0], 2), "other_runnable_threads": other_runnable_threads()}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "| shape | prompt (median) | completion | G | rows/step | stock step s | ours step s | step ratio "
        "| CPU-time ratio | generation s stock / ours | loss s stock / ours | tokens/s stock / ours "
        "| peak RSS GB stock / ours | step RSS GB stock / ours | max abs log-prob diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        s, o = r["stock"], r["ours"]
        completion = f"{r['max_completion']}" if r["exact_completion"] else f"<= {r['max_completion']} " \
                                                                          f"(mean {s['completion_mean']:g})"
        lines.append(
            f"| {name} | {r['prompt_tokens_median']:g} | {completion} | {r['generations']} | {r['rows_per_step']} "
            f"| {s['step_s']:.1f} | {o['step_s']:.1f} | **{r['step_time_ratio']:.2f}x** | {r['cpu_time_ratio']:.2f}x "
            f"| {s['generation_s']:.1f} / {o['generation_s']:.1f} | {s['loss_s']:.1f} / {o['loss_s']:.1f} "
            f"| {s['tokens_per_s']:.0f} / {o['tokens_per_s']:.0f} | {s['peak_rss_gb']:.2f} / {o['peak_rss_gb']:.2f} "
            f"| {s['step_rss_gb']:.2f} / {o['step_rss_gb']:.2f} | {r['max_abs_logprob_diff']:.1e} |")
    lines += ["", f"{m['cpu']}, {m['cores']} cores (flags: {', '.join(m['flags']) or 'none'}; torch "
              f"{m['torch_cpu_capability']}), {m['threads']} threads, {report['precision']}; other processes' runnable "
              f"threads at the start: {m.get('other_runnable_threads')}; load (1 min) {m['load_1min_start']} at the "
              f"start, {m['load_1min_end']} at the end. Step times are medians of "
              f"{report['settings']['steps']} measured steps per arm after {report['settings']['warmup']} "
              "warm-up, the arms taking turns; the ratio is the median of the per-pair ratios. Same completions "
              "in both arms' first step: " + ", ".join(f"{n} {'yes' if r['same_completions_first_step'] else 'NO'}"
                                                       for n, r in report["shapes"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m bench.grpo_prefix", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                        help=f"comma-separated, of {', '.join(SHAPES)} (default: {','.join(DEFAULT_SHAPES)})")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per arm and shape (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="steps per arm left out first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model_name_or_path", default="embedded", help="default: the embedded SmolLM2-135M")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory for the JSON and Markdown")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise UserError(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    torch.set_num_threads(args.threads)
    found = machine(args.threads)
    others = found["other_runnable_threads"]
    if others is not None and others + args.threads > (os.cpu_count() or 1) + 0.5:
        # Measured on a 2-core machine with other jobs running: the same stock `generate` took 9 s
        # and 117 s a minute apart with 2 threads (every operation waits for the thread that lost
        # its core); with 1 thread the arms' times stayed within ~15 %.
        print(f"[bench] warning: other processes keep ~{others:g} threads runnable on {os.cpu_count()} cores: with "
              f"{args.threads} threads the times measure waiting for cores; --threads 1 measures the work", flush=True)
    report = {"bench": "grpo_shared_prefix", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": found,
              "precision": args.dtype, "model": args.model_name_or_path,
              "versions": {p: metadata.version(p) for p in ("torch", "transformers", "trl", "peft")},
              "settings": {"steps": args.steps, "warmup": args.warmup, "seed": args.seed,
                           "config": str(CONFIG.relative_to(ROOT))},
              "shapes": {}}
    started = time.time()
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"bench-grpo-{name}-") as work:
            report["shapes"][name] = run_shape(name, SHAPES[name], args, Path(work))
        r = report["shapes"][name]
        print(f"[bench] {name}: stock {r['stock']['step_s']:.1f} s, ours {r['ours']['step_s']:.1f} s per step: "
              f"{r['step_time_ratio']:.2f}x (generation {r['generation_ratio']:.2f}x, loss {r['loss_ratio']:.2f}x)",
              flush=True)
    report["machine"]["load_1min_end"] = round(os.getloadavg()[0], 2)
    report["wall_seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "grpo_shared_prefix.json", report)
    write_text_atomic(out / "grpo_shared_prefix.md", markdown(report))
    print(markdown(report))
    print(f"[bench] wrote {out / 'grpo_shared_prefix.json'} and .md in {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    try:  # not core.cli.run_cli: its automatic thread choice would contradict --threads
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
