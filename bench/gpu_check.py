"""The GPU check: on a GPU, where Unsloth runs its own code, does every recipe still learn?

The CPU test suite runs Unsloth's CPU backend (stock transformers/PEFT/TRL), so it cannot see what
Unsloth changes on a GPU: its trainer rewrites, 4-bit kernels, FastModel, precision checks, vLLM
glue. Each check here runs a real recipe entry point (the command a user types), on small offline
models, and asserts what the recipe optimises moved - not only that it exited 0:

    sft_learns            4-bit LoRA SFT on 8 problems: training loss falls below 70 % of its start
    merge_matches         that SFT run's --save_merged: merged logits = base + adapter, saved = checked
    grpo_learns           4-bit LoRA GRPO, digit-share reward: the reward rises by 0.3 in 30 steps
    grpo_objective        the GRPO trainer got the loss keys the YAML states (Unsloth fills some itself)
    grpo_from_adapter     GRPO continuing an SFT adapter that writes digits samples from the adapter:
                          its first-step reward is far above the base model's
    dpo_learns            4-bit LoRA DPO: loss falls from ln 2 by 0.1
    lm_full_finetune      GPT-2 without LoRA (Unsloth's FastModel path): held-out perplexity drops 5 %
    reward_model_learns   the classifier's training loss falls
    ppo_runs              PPO on the adapted GPT-2 with that classifier: the policy's weights change
                          (the recipe's training guard) and the scores are reported
    fp16_path             VIRL_BF16=0: the no-bf16 path (a T4 rehearsed on this GPU) trains in fp16
    vllm_grpo             GRPO with fast_inference (vLLM) on a Qwen2.5-0.5B-shaped 4-bit model,
                          when vLLM imports (skipped otherwise)
    grpo_from_adapter_vllm  as grpo_from_adapter, generating through vLLM's LoRA request

    python -m bench.gpu_check --out gpu_check_out                      # a GPU machine (bench/gpu_check.sh)
    python -m bench.gpu_check --device cpu --out /tmp/gc --jobs 1      # every check on a CPU: a dry run

Models: the tiny GPT-2 and classifier (recipes/tiny.py), the "toy" Qwen2 (bench/models.py: weights
at 0.2 so a LoRA can move it) and, for vLLM, random weights of Qwen2.5-0.5B's shape. Results:
`<out>/gpu_check.json` and `.md` (and a copy under --results, e.g. bench/results/), each check's
log under `<out>/logs/`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import ArgumentParser

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl"
DIGITS = "tests.grpo_toy_rewards:digit_share"


@dataclass
class Check:
    """One check: a recipe command, what it waits for, and how its outputs are judged."""

    name: str
    command: Callable[[], list[str]]
    judge: Callable[[Path, str], dict[str, Any]]  # (run dir, stdout) -> {"passed": bool, ...}
    after: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


def metric_rows(run: Path, key: str) -> list[float]:
    """Values of `key` in the run's metrics.jsonl, in order."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def trainable_from(stdout: str) -> int | None:
    """The trainable-parameter count the loader printed ("[model] LoRA ...: N trainable")."""
    found = re.findall(r"([\d,]+) trainable", stdout)
    return int(found[-1].replace(",", "")) if found else None


def precision_of(run: Path) -> str | None:
    info = run / "run_info.json"
    if not info.is_file():
        return None
    precision = json.loads(info.read_text()).get("precision") or {}
    return precision.get("dtype")


class GPUCheck:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        self.logs = self.out / "logs"
        self.device = args.device
        self.results: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------ models, data
    def prepare(self) -> None:
        from bench.models import build_model
        from recipes.tiny import build_all

        self.tiny = build_all(self.work / "tiny")
        self.toy = build_model("toy", self.work / "toy")
        self.vllm = importlib.util.find_spec("vllm") is not None and self.device == "cuda"
        if self.vllm:
            self.qwen05 = build_model("0.5b", self.work / "qwen2.5-0.5b")
        # Problems whose worked answer is all digits: an adapter trained on them writes digits.
        rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.digits = self.work / "digits.jsonl"
        with open(self.digits, "w", encoding="utf-8") as fh:
            for row in rows[:16]:
                fh.write(json.dumps({"question": row["question"], "explanation": "1234567890 0987654321 1234567890",
                                     "answer": "1234567890"}, ensure_ascii=False) + "\n")

    def common(self, run: str) -> list[str]:
        return ["--device", self.device, "--backend", "unsloth", "--output_dir", str(self.work / run),
                "--report_to", "none", "--logging_steps", "1"]

    def toy_lora(self) -> list[str]:
        return ["--model_name_or_path", str(self.toy), "--load_in_4bit", "true", "--lora_r", "16",
                "--lora_alpha", "32", "--dtype", "auto"]

    # ----------------------------------------------------------------------------------- checks
    def checks(self) -> list[Check]:
        py = [sys.executable, "-m"]
        w = self.work
        no_vllm = None if self.vllm else "vLLM does not import here (or no GPU): the HF generate path ran instead"

        def sft_learns(run, out):
            loss = metric_rows(run, "loss")
            first, last = mean(loss[:3]), mean(loss[-3:])
            return {"passed": bool(loss) and last < 0.7 * first and (trainable_from(out) or 0) > 0,
                    "trainable": trainable_from(out), "loss_first3": first, "loss_last3": last,
                    "precision": precision_of(run)}

        def merge_matches(run, out):
            report = run / "merged" / "merge.json"
            if not report.is_file():
                return {"passed": False, "why": "no merged/merge.json"}
            data = json.loads(report.read_text())
            return {"passed": data["next_token_agreement"] == 1.0 and data["max_abs_logit_diff_fp32"] < 1e-3,
                    **{k: data[k] for k in ("dtype", "next_token_agreement", "max_abs_logit_diff_fp32",
                                            "saved_tensors_checked")}}

        def grpo_learns(run, out):
            reward = metric_rows(run, "rewards/digit_share/mean")
            start, end = mean(reward[:5]), mean(reward[-5:])
            return {"passed": len(reward) >= 10 and end > start + 0.3, "reward_first5": start, "reward_last5": end,
                    "trainable": trainable_from(out), "precision": precision_of(run)}

        def grpo_objective(run, out):
            import yaml

            stated = yaml.safe_load((ROOT / "configs/grpo/tiny.yaml").read_text())
            info = json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").is_file() else {}
            got = info.get("objective", {})
            differ = {k: (stated.get(k), v) for k, v in got.items() if stated.get(k) != v and k in stated}
            return {"passed": bool(got) and not differ, "objective": got, "differs_from_yaml": differ}

        def digits_sft(run, out):
            loss = metric_rows(run, "loss")
            return {"passed": bool(loss) and mean(loss[-3:]) < 0.3 * mean(loss[:3]),
                    "loss_first3": mean(loss[:3]), "loss_last3": mean(loss[-3:])}

        def from_adapter(run, out):
            first = metric_rows(run, "rewards/digit_share/mean")[:1]
            base = metric_rows(w / "grpo", "rewards/digit_share/mean")[:1]
            ok = bool(first) and bool(base) and first[0] > max(0.3, 3 * base[0])
            return {"passed": ok, "adapter_step1_reward": first[0] if first else None,
                    "base_step1_reward": base[0] if base else None,
                    "generation": "vLLM" if "generation=vLLM" in out else "HF generate"}

        def dpo_learns(run, out):
            loss = metric_rows(run, "loss")
            return {"passed": bool(loss) and mean(loss[-3:]) < mean(loss[:3]) - 0.1,
                    "loss_first3": mean(loss[:3]), "loss_last3": mean(loss[-3:]), "trainable": trainable_from(out)}

        def lm_full(run, out):
            metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
            before, after = metrics.get("perplexity_before"), metrics.get("perplexity")
            return {"passed": before is not None and after < 0.95 * before, "perplexity_before": before,
                    "perplexity_after": after, "precision": precision_of(run)}

        def rm_learns(run, out):
            loss = metric_rows(run, "loss")
            return {"passed": bool(loss) and mean(loss[-3:]) < mean(loss[:3]), "loss_first3": mean(loss[:3]),
                    "loss_last3": mean(loss[-3:])}

        def ppo_runs(run, out):
            metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
            return {"passed": bool(metrics), "scores_first": metrics.get("scores_first"),
                    "scores_last": metrics.get("scores_last"), "kl_last": metrics.get("kl_last"),
                    "note": "passing = the training guard saw the policy's weights change; scores are reported"}

        def fp16_path(run, out):
            loss = metric_rows(run, "loss")
            expected = "float16" if self.device == "cuda" else "float32"
            return {"passed": precision_of(run) == expected and bool(loss) and mean(loss[-3:]) < mean(loss[:3]),
                    "precision": precision_of(run), "expected": expected, "loss_first3": mean(loss[:3]),
                    "loss_last3": mean(loss[-3:])}

        def vllm_grpo(run, out):
            return {"passed": "generation=vLLM" in out and bool(metric_rows(run, "reward")),
                    "steps": len(metric_rows(run, "reward"))}

        sft_args = ["--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
                    "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--save_strategy", "no"]
        grpo_args = ["--reward_funcs", DIGITS, "--reward_weights", "1.0", "--num_generations", "8",
                     "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
                     "--save_strategy", "no", "--eval_every_save", "false"]
        return [
            Check("sft_learns", lambda: py + ["recipes.sft", "--config", "configs/sft/tiny.yaml", *self.common("sft"),
                                              *self.toy_lora(), *sft_args, "--limit", "8", "--max_steps", "20",
                                              "--save_merged", "true"], sft_learns),
            Check("merge_matches", lambda: None, merge_matches, after=("sft_learns",)),
            Check("grpo_learns", lambda: py + ["recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                                               *self.common("grpo"), *self.toy_lora(), *grpo_args,
                                               "--learning_rate", "2e-2", "--max_steps", "30"], grpo_learns),
            Check("grpo_objective", lambda: None, grpo_objective, after=("grpo_learns",)),
            Check("digits_sft", lambda: py + ["recipes.sft", "--config", "configs/sft/tiny.yaml",
                                              *self.common("digits"), *self.toy_lora(), *sft_args,
                                              "--learning_rate", "1e-2", "--dataset_name", str(self.digits),
                                              "--max_steps", "30"], digits_sft),
            Check("grpo_from_adapter", lambda: py + ["recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                                                     *self.common("from_adapter"), "--model_name_or_path",
                                                     str(w / "digits" / "adapter"), "--load_in_4bit", "true",
                                                     *grpo_args, "--learning_rate", "1e-6", "--max_steps", "1"],
                  from_adapter, after=("digits_sft", "grpo_learns")),
            Check("dpo_learns", lambda: py + ["recipes.dpo", "--config", "configs/dpo/tiny.yaml", *self.common("dpo"),
                                              *self.toy_lora(), "--learning_rate", "5e-3", "--max_steps", "20",
                                              "--lr_scheduler_type", "constant", "--warmup_steps", "0",
                                              "--save_strategy", "no", "--eval_held_out", "false",
                                              "--sft_first_steps", "0"], dpo_learns),
            Check("lm_full_finetune", lambda: py + ["recipes.lm", "--config", "configs/lm/tiny.yaml",
                                                    *self.common("lm"), "--model_name_or_path",
                                                    str(self.tiny / "gpt2"), "--dtype", "auto",
                                                    "--save_strategy", "no"], lm_full),
            Check("reward_model_learns", lambda: [*py, "recipes.reward_model", "--config",
                                                  "configs/reward_model/tiny.yaml", "--output_dir", str(w / "rm"),
                                                  "--model_name_or_path", str(self.tiny / "classifier"),
                                                  "--report_to", "none", "--logging_steps", "1",
                                                  "--save_strategy", "no", "--word_segmentation", "false",
                                                  *(["--use_cpu", "true"] if self.device == "cpu" else [])],
                  rm_learns, skip=None if importlib.util.find_spec("sklearn") else
                  "scikit-learn is not installed here (the classifier's metrics need it)"),
            # The untrained tiny classifier as the reward: PPO's path, without waiting on the one above.
            Check("ppo_runs", lambda: py + ["recipes.ppo", "--config", "configs/ppo/tiny.yaml",
                                            "--device", self.device, "--output_dir", str(w / "ppo"),
                                            "--model_name_or_path", str(w / "lm" / "model"),
                                            "--reward_model", str(self.tiny / "classifier"), "--report_to", "none"],
                  ppo_runs, after=("lm_full_finetune",)),
            Check("fp16_path", lambda: py + ["recipes.sft", "--config", "configs/sft/tiny.yaml", *self.common("fp16"),
                                             *self.toy_lora(), *sft_args, "--limit", "8", "--max_steps", "10"],
                  fp16_path, env={"VIRL_BF16": "0"}),
            Check("vllm_grpo", lambda: py + ["recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                                             *self.common("vllm"), "--model_name_or_path", str(self.qwen05),
                                             "--load_in_4bit", "true", "--fast_inference", "true",
                                             "--gpu_memory_utilization", "0.3", "--max_steps", "2",
                                             "--save_strategy", "no", "--eval_every_save", "false"],
                  vllm_grpo, skip=no_vllm),
            Check("grpo_from_adapter_vllm", lambda: py + ["recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                                                          *self.common("from_adapter_vllm"), "--model_name_or_path",
                                                          str(w / "digits" / "adapter"), "--load_in_4bit", "true",
                                                          "--fast_inference", "true", "--gpu_memory_utilization",
                                                          "0.3", *grpo_args, "--learning_rate", "1e-6",
                                                          "--max_steps", "1"],
                  from_adapter, after=("digits_sft", "grpo_learns", "vllm_grpo"), skip=no_vllm),
        ]

    # ------------------------------------------------------------------------------------ running
    def run_check(self, check: Check) -> dict[str, Any]:
        t0 = time.time()
        failed = [a for a in check.after if not self.results.get(a, {}).get("ran")]
        if check.skip:
            return {"status": "skipped", "why": check.skip}
        if failed:
            return {"status": "skipped", "why": f"needs {', '.join(failed)}, which did not run"}
        command = check.command()
        stdout, ran = "", True
        run_dir = self.work / {"merge_matches": "sft", "grpo_objective": "grpo"}.get(check.name, "")
        if command is not None:
            run_dir = Path(command[command.index("--output_dir") + 1])
            env = dict(os.environ, PYTHONUNBUFFERED="1", UNSLOTH_COMPILE_LOCATION=str(self.work / "cache" / check.name),
                       **check.env)
            if self.device == "cpu":
                env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
            log = self.logs / f"{check.name}.log"
            try:
                proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=self.args.check_timeout)
                stdout = proc.stdout
                log.write_text(f"$ {' '.join(command)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
                if proc.returncode != 0:
                    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")] or proc.stderr.splitlines()[-3:]
                    return {"status": "failed", "why": f"exit {proc.returncode}: {' | '.join(errors)[-400:]}",
                            "seconds": round(time.time() - t0, 1), "ran": False}
            except subprocess.TimeoutExpired:
                return {"status": "failed", "why": f"timed out after {self.args.check_timeout}s",
                        "seconds": round(time.time() - t0, 1), "ran": False}
        try:
            verdict = check.judge(run_dir, stdout)
        except (OSError, ValueError, KeyError) as err:
            verdict = {"passed": False, "why": f"could not read the run's outputs: {err}"}
        passed = verdict.pop("passed")
        return {"status": "passed" if passed else "failed", "seconds": round(time.time() - t0, 1), "ran": ran,
                "measured": verdict}

    def run(self) -> dict[str, Any]:
        self.logs.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        self.prepare()
        pending = self.checks()
        print(f"[gpu-check] {len(pending)} checks on {self.device_name()}, {self.args.jobs} at a time", flush=True)
        with futures.ThreadPoolExecutor(self.args.jobs) as pool:
            running: dict[futures.Future, Check] = {}
            while pending or running:
                ready = [c for c in pending if all(a in self.results for a in c.after)]
                for check in ready[: max(0, self.args.jobs - len(running))]:
                    pending.remove(check)
                    running[pool.submit(self.run_check, check)] = check
                if not running:  # a dependency cycle would leave checks waiting forever
                    for check in pending:
                        self.results[check.name] = {"status": "skipped", "why": "dependencies never finished"}
                    break
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    check = running.pop(future)
                    self.results[check.name] = future.result()
                    result = self.results[check.name]
                    print(f"[gpu-check] {check.name}: {result['status']} "
                          f"{json.dumps(result.get('measured') or result.get('why'), default=str)[:300]}", flush=True)
        return {"device": self.device_name(), "when": time.strftime("%Y-%m-%d %H:%M"), "versions": versions(),
                "total_seconds": round(time.time() - t0, 1), "checks": self.results}

    def device_name(self) -> str:
        if self.device == "cuda":
            import torch

            return torch.cuda.get_device_name(0)
        return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for pkg in ("torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "bitsandbytes", "vllm"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return found


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check: {report['device']}, {report['when']}", "",
             f"{sum(r['status'] == 'passed' for r in report['checks'].values())} passed, "
             f"{sum(r['status'] == 'failed' for r in report['checks'].values())} failed, "
             f"{sum(r['status'] == 'skipped' for r in report['checks'].values())} skipped in "
             f"{report['total_seconds']:.0f} s. Versions: "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
             "| check | status | seconds | measured |", "|---|---|---|---|"]
    for name, result in report["checks"].items():
        measured = result.get("measured") or {"why": result.get("why")}
        shown = "; ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in measured.items())
        lines.append(f"| {name} | {result['status']} | {result.get('seconds', '')} | {shown.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json/.md and logs/")
    parser.add_argument("--work", default="/tmp/virl-gpu-check/learn", help="models and run folders")
    parser.add_argument("--device", default=None, help="cuda (default when a GPU is visible) or cpu")
    parser.add_argument("--jobs", type=int, default=None, help="checks at a time (default 6 on a GPU, 1 on a CPU)")
    parser.add_argument("--check-timeout", type=int, default=300, help="seconds one check may take")
    parser.add_argument("--results", default=None, help="also copy the report here (e.g. bench/results)")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.jobs = args.jobs or (6 if args.device == "cuda" else 1)
    report = GPUCheck(args).run()
    out = Path(args.out)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    if args.results:
        slug = re.sub(r"[^a-z0-9]+", "-", report["device"].lower()).strip("-")
        dest = Path(args.results) / f"{time.strftime('%Y-%m-%d')}-{slug}-gpu-check"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
        dest.with_suffix(".md").write_text(markdown(report))
    return 0 if all(r["status"] != "failed" for r in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
