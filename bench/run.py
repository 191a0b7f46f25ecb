"""Unsloth vs plain Hugging Face: time per step, tokens per second and peak GPU memory of GRPO and DPO.

For each model shape (random weights, Qwen2.5 dimensions: bench/models.py) and each recipe, the real
recipe runs for a few steps once per backend, each in its own process, so the `hf` run is never
patched by an Unsloth import (core/boot.py). The numbers come from what the recipes write:
`step_seconds`, `peak_memory_gb`, `peak_reserved_gb` and TRL's cumulative `num_tokens` in
metrics.jsonl. The first `--warmup` steps are left out (kernel compilation, caches); a step's
value is the median of the rest.

Settings (GPU): 4-bit weights, LoRA r=16 on all projections, bf16, gradient checkpointing (Unsloth's
offloaded mode / the standard one), GRPO 2 prompts x 4 generations x 128 new tokens per step, DPO
batch 4 pairs of at most 256 tokens; prompts from the project's Vietnamese fixtures.

    make bench                                  # GPU: shapes 0.5b and 1.5b; CPU: the tiny shape
    python -m bench.run --shapes 0.5b,1.5b,3b --steps 6
    python -m bench.run --shapes tiny --steps 3 --out /tmp/bench   # what the CPU test runs

Writes `<out>/<date>-<device>.json` and `.md` (default out: bench/results); each run's log,
metrics.jsonl and run_info.json go to `<logs>/<date>-<device>/<shape>-<recipe>-<backend>/` (default
logs: runs/bench), the models and adapters to `--work-dir` (default: a temporary directory).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from bench.models import QWEN25_SHAPES, build_model, parameter_count
from core.cli import ArgumentParser

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("unsloth", "hf")
RECIPES = ("grpo", "dpo")
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo",
            "datasets", "xformers")


def recipe_args(recipe: str, gpu: bool) -> list[str]:
    """Overrides of the recipe's tiny config that set the benchmark's workload (same for both backends)."""
    if gpu:
        common = ["--load_in_4bit", "true", "--dtype", "bfloat16", "--bf16", "true", "--device", "cuda",
                  "--gradient_checkpointing_mode", "unsloth", "--lora_r", "16", "--lora_alpha", "16"]
        new_tokens, max_length = 128, 256
    else:  # the tiny CPU shape: the same code path, small numbers
        common = ["--load_in_4bit", "false", "--dtype", "float32", "--bf16", "false", "--device", "cpu",
                  "--gradient_checkpointing_mode", "false", "--lora_r", "8", "--lora_alpha", "8"]
        new_tokens, max_length = 8, 128
    common += ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--max_seq_length",
               "1024"]
    if recipe == "grpo":
        return common + ["--num_generations", "4", "--per_device_train_batch_size", "8",
                         "--gradient_accumulation_steps", "1", "--max_completion_length", str(new_tokens),
                         "--eval_every_save", "false"]
    # A fixed shape: pairs longer than max_length are cut to it (the length budget would stop the run).
    return common + ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
                     "--max_length", str(max_length), "--on_long_rows", "cut", "--eval_held_out", "false",
                     "--sft_first_steps", "0"]


def run_one(recipe: str, backend: str, model_dir: Path, run_dir: Path, keep_dir: Path, steps: int, gpu: bool,
            timeout: int) -> dict:
    """Run the real recipe for `steps` steps in a fresh process; returns its status and metrics rows.

    The run directory (adapter included) is `run_dir`; its log, metrics.jsonl and run_info.json are
    copied to `keep_dir`, next to the report.
    """
    cmd = [sys.executable, "-m", f"recipes.{recipe}", "--config", f"configs/{recipe}/tiny.yaml",
           "--model_name_or_path", str(model_dir), "--backend", backend, "--output_dir", str(run_dir),
           "--max_steps", str(steps)] + recipe_args(recipe, gpu)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    keep_dir.mkdir(parents=True, exist_ok=True)
    log = keep_dir / "log.txt"
    start = time.time()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({timeout} s)"
    # Unsloth announces itself when imported; a `hf` run must not have imported it.
    result = {"status": status, "wall_seconds": round(time.time() - start, 1), "log": str(log),
              "unsloth_imported": "Unsloth" in log.read_text(errors="replace")}
    for name in ("metrics.jsonl", "run_info.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, keep_dir / name)
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    result["rows"] = [r for r in rows if "step_seconds" in r]
    if status != "ok":
        result["error"] = last_error(log)
    return result


def last_error(log: Path) -> str:
    """The most telling line of a failed run's log (an `error:` line or the exception)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else "(empty log)"


def summarize(rows: list[dict], warmup: int) -> dict:
    """Median step time and tokens/s over the steps after warm-up; the peak memory of the whole run."""
    tokens, previous = [], 0.0
    for row in rows:
        count = row.get("num_tokens")
        tokens.append(None if count is None else count - previous)
        previous = count if count is not None else previous
    measured = [(r, t) for r, t in zip(rows, tokens, strict=True)][warmup:]
    if not measured:
        return {"steps_measured": 0}
    seconds = [r["step_seconds"] for r, _ in measured]
    rates = [t / r["step_seconds"] for r, t in measured if t is not None and r["step_seconds"] > 0]
    out = {
        "steps_measured": len(measured),
        "step_seconds": round(statistics.median(seconds), 4),
        "tokens_per_step": round(statistics.median([t for _, t in measured if t is not None]), 1) if rates else None,
        "tokens_per_second": round(statistics.median(rates), 1) if rates else None,
    }
    for key in ("peak_memory_gb", "peak_reserved_gb"):
        values = [r[key] for r in rows if key in r]
        out[key] = max(values) if values else None
    return out


def ratios(results: list[dict]) -> list[dict]:
    """Unsloth / HF for each shape and recipe where both runs finished."""
    table = []
    by_key = {(r["shape"], r["recipe"], r["backend"]): r for r in results if r["status"] == "ok"}
    for shape, recipe in dict.fromkeys((r["shape"], r["recipe"]) for r in results):
        fast, base = by_key.get((shape, recipe, "unsloth")), by_key.get((shape, recipe, "hf"))
        if not fast or not base:
            continue
        row = {"shape": shape, "recipe": recipe}
        for key in ("step_seconds", "tokens_per_second", "peak_memory_gb", "peak_reserved_gb"):
            a, b = fast.get(key), base.get(key)
            row[key] = round(a / b, 3) if a is not None and b else None
        table.append(row)
    return table


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_markdown(report: dict, path: Path) -> None:
    lines = [
        f"# Unsloth vs Hugging Face: {report['device']}, {report['date']}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        f"Settings: {report['settings']}",
        "",
        f"Per step: median of the steps after {report['warmup']} warm-up step(s). Tokens: prompt + completion "
        "tokens the step processed (TRL's `num_tokens`). Peak memory: `torch.cuda.max_memory_allocated` / "
        "`max_memory_reserved` over the run, model load included.",
        "",
        "| shape | params | recipe | backend | step s | tokens/s | peak alloc GB | peak reserved GB | steps | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    for r in report["results"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')}"
        params = f"{r['params'] / 1e9:.2f}B" if r["params"] >= 1e8 else f"{r['params'] / 1e6:.1f}M"
        lines.append(f"| {r['shape']} | {params} | {r['recipe']} | {r['backend']} | "
                     f"{fmt(r.get('step_seconds'), 3)} | {fmt(r.get('tokens_per_second'), 0)} | "
                     f"{fmt(r.get('peak_memory_gb'))} | {fmt(r.get('peak_reserved_gb'))} | "
                     f"{r.get('steps_measured', 0)} | {status.replace('|', '/')} |")
    lines += ["", "Unsloth / HF (below 1: Unsloth takes less time or memory; above 1 for tokens/s: Unsloth is faster):",
              "", "| shape | recipe | step time | tokens/s | peak alloc | peak reserved |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report["ratios"]:
        lines.append(f"| {r['shape']} | {r['recipe']} | {fmt(r['step_seconds'])} | {fmt(r['tokens_per_second'])} | "
                     f"{fmt(r['peak_memory_gb'])} | {fmt(r['peak_reserved_gb'])} |")
    if not report["ratios"]:
        lines.append("| - | - | - | - | - | - |")
    patched = [f"{r['shape']} {r['recipe']}" for r in report["results"]
               if r["backend"] == "hf" and r.get("unsloth_imported")]
    lines += ["", f"WARNING: these hf runs imported Unsloth: {', '.join(patched)}" if patched else
              "Every hf run ran without importing Unsloth (plain transformers + PEFT + TRL)."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import torch

    gpu = torch.cuda.is_available()
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="0.5b,1.5b" if gpu else "tiny",
                        help=f"comma-separated, from {sorted(QWEN25_SHAPES)} (default: 0.5b,1.5b on a GPU, tiny on CPU)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated: grpo,dpo")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: unsloth,hf")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    parser.add_argument("--logs", default=str(ROOT / "runs" / "bench"),
                        help="where each run's log, metrics.jsonl and run_info.json are kept")
    parser.add_argument("--work-dir", default=None, help="where the random models go (default: a temp dir)")
    parser.add_argument("--run-timeout", type=int, default=300, help="seconds before one run is stopped")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; runs not started by then are recorded as skipped")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in QWEN25_SHAPES]
    if unknown or args.steps <= args.warmup:
        parser.error(f"unknown shape(s) {unknown}" if unknown else "--steps must exceed --warmup")
    if gpu and "tiny" in shapes:
        print("[bench] note: the tiny shape runs with the CPU settings (on the CPU), even on a GPU machine")

    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="virl-bench-"))
    device = device_name()
    stamp = time.strftime("%Y-%m-%d")
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    results = []
    for shape in shapes:
        model_dir = build_model(shape, work / f"qwen2.5-{shape}")
        on_gpu = gpu and shape != "tiny"
        for recipe in args.recipes.split(","):
            for backend in args.backends.split(","):
                entry = {"shape": shape, "params": parameter_count(model_dir), "recipe": recipe, "backend": backend}
                if args.time_budget is not None and time.time() - start > args.time_budget:
                    entry.update(status="skipped (time budget)")
                    results.append(entry)
                    continue
                name = f"{shape}-{recipe}-{backend}"
                result = run_one(recipe, backend, model_dir, work / "runs" / name,
                                 Path(args.logs) / f"{stamp}-{slug}" / name, args.steps, on_gpu, args.run_timeout)
                entry.update(status=result["status"], wall_seconds=result["wall_seconds"],
                             unsloth_imported=result["unsloth_imported"])
                if "error" in result:
                    entry["error"] = result["error"]
                entry.update(summarize(result["rows"], args.warmup))
                results.append(entry)
                print(f"[bench] {shape} {recipe} {backend}: {entry['status']}, "
                      f"{entry.get('step_seconds')} s/step, {entry.get('tokens_per_second')} tokens/s, "
                      f"peak {entry.get('peak_memory_gb')} GB ({entry['wall_seconds']} s)", flush=True)

    settings = {"gpu": gpu, "steps": args.steps, "warmup": args.warmup, "recipe_args": {
        r: recipe_args(r, gpu) for r in args.recipes.split(",")}}
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": device, "versions": versions(),
              "warmup": args.warmup, "settings": settings, "results": results, "ratios": ratios(results),
              "seconds": round(time.time() - start, 1)}
    base = out / f"{stamp}-{slug}"
    (base.with_suffix(".json")).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    settings_line = ("4-bit, LoRA r=16, bf16, gradient checkpointing; GRPO 2 prompts x 4 generations x 128 "
                     "tokens; DPO 4 pairs x <=256 tokens" if gpu else
                     "CPU tiny shape: float32, LoRA r=8; GRPO 2 prompts x 4 generations x 8 tokens; DPO 4 pairs")
    write_markdown({**report, "settings": settings_line}, base.with_suffix(".md"))
    print(f"[bench] wrote {base}.json and {base}.md ({report['seconds']} s)")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
