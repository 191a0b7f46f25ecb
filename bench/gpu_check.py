"""The GPU check: on a GPU, where Unsloth runs its own code, does every recipe still learn?

The CPU test suite runs Unsloth's CPU backend (stock transformers/PEFT/TRL), so it cannot see what
Unsloth changes on a GPU: its trainer rewrites, 4-bit kernels, FastModel, precision checks, vLLM
glue. Each check here runs a real recipe entry point (the command a user types), on small offline
models, and asserts what the recipe optimises moved - not only that it exited 0:

    environment           torch has kernels for this GPU (a V100 is refused by the toolkit); versions,
                          bf16, whether vLLM and vllm-bnb-plugin import
    sft_learns            4-bit LoRA SFT on 8 problems: training loss falls below 70 % of its start
    merge_matches         that SFT run's --save_merged: merged in float32 per layer (checked), on the GPU
    export_merged         `make export FORMAT=merged` of that adapter: reload check passes; its peak RSS
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
    float32_said          `dtype: float32` under Unsloth: recorded as what the trainer runs (bf16
                          autocast on a bf16 GPU, float32 on a T4)
    vllm_grpo             GRPO with fast_inference (vLLM) on a Qwen2.5-0.5B-shaped 4-bit model in a
                          dtype vLLM accepts: generation really went through vLLM
    grpo_from_adapter_vllm  as grpo_from_adapter, generating through vLLM's LoRA request

Every run that trains also passes only if its run_info.json says the trainer kept the precision
the toolkit decided (`precision.trainer.as_decided`).

    make gpu-check                                      # a GPU machine: bench/results/gpu_check.{json,md}
    python -m bench.gpu_check --device cpu --jobs 1     # every check on a CPU: a dry run

Time: each check runs in its own process group under its own limit (`--limit NAME=SECONDS`
overrides one) and no check starts once the overall `--budget` is spent (default 600 s: with the
machine's start-up and the install, `make gpu-check` fits 15 minutes of GPU time). The report is
rewritten after every check, and on SIGTERM/SIGINT, so a check killed by its limit, or the whole
command killed from outside, still leaves `gpu_check.json` and `.md` with what finished; the table
is printed at the end. Each check's log goes to `<out>/gpu_check_logs/`.

Models: the tiny GPT-2 and classifier (recipes/tiny.py), the "toy" Qwen2 (bench/models.py: weights
at 0.2 so a LoRA can move it) and, for vLLM, random weights of Qwen2.5-0.5B's shape.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import ArgumentParser, UserError
from core.files import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl"
DIGITS = "tests.grpo_toy_rewards:digit_share"
DEFAULT_LIMIT = 240  # seconds: a small model's recipe run on a GPU, Unsloth's import and compilation included
VLLM_LIMIT = 360  # vLLM's engine start-up (CUDA graphs) comes on top


@dataclass
class Check:
    """One check: a recipe command, what it waits for, and how its outputs are judged."""

    name: str
    command: Callable[[], list[str] | None]  # None: judge another check's outputs, run nothing
    judge: Callable[[Path, str], dict[str, Any]]  # (run dir, stdout) -> {"passed": bool, ...}
    after: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None | Callable[[], str | None] = None  # why it cannot run here (asked when it would start)
    limit: int = DEFAULT_LIMIT
    run_dir: str = ""  # for a judge-only check: the run it reads


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


def run_info(run: Path) -> dict[str, Any]:
    info = run / "run_info.json"
    return json.loads(info.read_text()) if info.is_file() else {}


def precision_of(run: Path) -> str | None:
    return (run_info(run).get("precision") or {}).get("dtype")


def environment() -> dict[str, Any]:
    """What this machine offers the GPU path (`--environment`, the first check, in its own process)."""
    from importlib import metadata

    import torch

    from core.precision import has_kernels_for, native_bf16

    found: dict[str, Any] = {"python": platform.python_version(), "versions": versions(),
                             "vllm_imports": importlib.util.find_spec("vllm") is not None,
                             "vllm_bnb_plugin_imports": importlib.util.find_spec("vllm_bnb_plugin") is not None,
                             "cuda": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                             "arch_list": torch.cuda.get_arch_list()}
    found["native_bf16_decided"] = native_bf16("cuda" if found["cuda"] else "cpu")[0]  # VIRL_BF16 counts
    if found["cuda"]:
        capability = tuple(torch.cuda.get_device_capability(0))
        found.update(gpu=torch.cuda.get_device_name(0), capability=f"{capability[0]}.{capability[1]}",
                     kernels=has_kernels_for(capability, found["arch_list"]),
                     native_bf16=torch.cuda.is_bf16_supported(including_emulation=False),
                     memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1))
    try:
        found["vllm_bnb_plugin"] = metadata.version("vllm-bnb-plugin")
    except metadata.PackageNotFoundError:
        pass
    return found


class GPUCheck:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        self.logs = self.out / "gpu_check_logs"
        self.device = args.device
        self.env: dict[str, Any] = {}  # what the environment check found
        self.results: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.lock = threading.RLock()  # the signal handler may write the report while the main thread does
        self.running: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()

    # ------------------------------------------------------------------------------ models, data
    @property
    def tiny(self) -> Path:
        return self.work / "models" / "tiny"

    @property
    def toy(self) -> Path:
        return self.work / "models" / "toy"

    @property
    def qwen05(self) -> Path:
        return self.work / "models" / "qwen2.5-0.5b"

    @property
    def digits(self) -> Path:
        return self.work / "models" / "digits.jsonl"

    @property
    def vllm(self) -> bool:
        return self.device == "cuda" and bool(self.env.get("vllm_imports"))

    def selected(self, *names: str) -> bool:
        return not self.args.only or any(n in self.args.only for n in names)

    def common(self, run: str) -> list[str]:
        return ["--device", self.device, "--backend", "unsloth", "--output_dir", str(self.work / "runs" / run),
                "--report_to", "none", "--logging_steps", "1"]

    def toy_lora(self) -> list[str]:
        return ["--model_name_or_path", str(self.toy), "--load_in_4bit", "true", "--lora_r", "16",
                "--lora_alpha", "32", "--dtype", "auto"]

    # ----------------------------------------------------------------------------------- checks
    def checks(self) -> list[Check]:
        py = [sys.executable, "-m"]
        w = self.work / "runs"
        def no_vllm():
            return None if self.vllm else "vLLM does not import here (or no GPU): make gpu-check VLLM=1 installs it"

        def env_ok(run, out):
            line = next((x for x in out.splitlines() if x.startswith("ENV ")), None)
            if line is None:
                return {"passed": False, "why": "no ENV line"}
            self.env = json.loads(line[4:])
            if self.device is None:
                self.device = "cuda" if self.env["cuda"] else "cpu"
            # A GPU torch has no kernels for fails here, and every recipe refuses it in one line.
            ok = self.env["cuda"] and self.env["kernels"] if self.device == "cuda" else True
            return {"passed": ok, **{k: v for k, v in self.env.items() if k != "versions"}}

        def models_ready(run, out):
            ready = [self.tiny / ".complete", self.toy / ".complete", self.digits]
            if self.vllm:
                ready.append(self.qwen05 / ".complete")
            return {"passed": all(p.exists() for p in ready),
                    "built": [p.name if p.suffix else p.parent.name for p in ready]}

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
            ok = (data["max_layer_rel_diff_fp32"] < 1e-4 and data["max_abs_logit_diff"] <= 0.05 * data["logit_scale"]
                  and data["device"] == self.device)  # on the GPU when there is one
            return {"passed": ok, **{k: data.get(k) for k in ("dtype", "device", "lora_layers_checked",
                                                              "max_layer_rel_diff_fp32", "max_abs_logit_diff",
                                                              "next_token_agreement", "saved_tensors_checked",
                                                              "peak_rss_gb")}}

        def export_merged(run, out):
            record = json.loads((run / "export.json").read_text()) if (run / "export.json").is_file() else {}
            merge = json.loads((run / "merge.json").read_text()) if (run / "merge.json").is_file() else {}
            checks = record.get("checks") or [{}]
            return {"passed": bool(checks[0].get("passed")) and merge.get("device") == self.device,
                    "top1_agreement": checks[0].get("top1_agreement"), "merge_device": merge.get("device"),
                    "merge_peak_rss_gb": merge.get("peak_rss_gb")}

        def grpo_learns(run, out):
            reward = metric_rows(run, "rewards/digit_share/mean")
            start, end = mean(reward[:5]), mean(reward[-5:])
            return {"passed": len(reward) >= 10 and end > start + 0.3, "reward_first5": start, "reward_last5": end,
                    "trainable": trainable_from(out), "precision": precision_of(run)}

        def grpo_objective(run, out):
            import yaml

            stated = yaml.safe_load((ROOT / "configs/grpo/tiny.yaml").read_text())
            got = run_info(run).get("objective", {})
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
            generation = "vLLM" if "generation=vLLM" in out else "HF generate"
            if run.name.endswith("_vllm"):
                ok = ok and generation == "vLLM"
            return {"passed": ok, "adapter_step1_reward": first[0] if first else None,
                    "base_step1_reward": base[0] if base else None, "generation": generation,
                    "precision": precision_of(run)}

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
                    "precision": precision_of(run),
                    "note": "passing = the training guard saw the policy's weights change; scores are reported"}

        def fp16_path(run, out):
            loss = metric_rows(run, "loss")
            expected = "float16" if self.device == "cuda" else "float32"
            return {"passed": precision_of(run) == expected and bool(loss) and mean(loss[-3:]) < mean(loss[:3]),
                    "precision": precision_of(run), "expected": expected, "loss_first3": mean(loss[:3]),
                    "loss_last3": mean(loss[-3:])}

        def float32_said(run, out):
            from core.precision import decide

            # bfloat16 where bf16 is native on a GPU (Unsloth's trainer autocasts there), else float32.
            expected = decide("float32", self.device, self.env.get("native_bf16_decided", False), "", "unsloth").dtype
            trainer = (run_info(run).get("precision") or {}).get("trainer") or {}
            return {"passed": precision_of(run) == expected and bool(trainer) and bool(metric_rows(run, "loss")),
                    "precision": precision_of(run), "expected": expected, "trainer_autocast": trainer.get("autocast")}

        def vllm_grpo(run, out):
            return {"passed": "generation=vLLM" in out and bool(metric_rows(run, "reward"))
                    and precision_of(run) in ("bfloat16", "float16"),
                    "steps": len(metric_rows(run, "reward")), "precision": precision_of(run)}

        sft_args = ["--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
                    "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--save_strategy", "no"]
        grpo_args = ["--reward_funcs", DIGITS, "--reward_weights", "1.0", "--num_generations", "8",
                     "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
                     "--save_strategy", "no", "--eval_every_save", "false"]
        # vLLM computes in bf16/fp16: the tiny configs' `dtype: float32` would make the loader
        # generate with HF generate instead (core/models.py, vllm_refusal).
        vllm_args = ["--load_in_4bit", "true", "--fast_inference", "true", "--dtype", "auto",
                     "--gpu_memory_utilization", "0.3"]
        return [
            Check("environment", lambda: py + ["bench.gpu_check", "--environment"], env_ok, limit=120),
            Check("models", lambda: py + ["bench.gpu_check", "--prepare", "--work", str(self.work),
                                          *(["--vllm-model"] if self.vllm else [])], models_ready,
                  after=("environment",), limit=300),
            Check("sft_learns", lambda: py + ["recipes.sft", "--config", "configs/sft/tiny.yaml", *self.common("sft"),
                                              *self.toy_lora(), *sft_args, "--limit", "8", "--max_steps", "20",
                                              "--save_merged", "true"], sft_learns),
            Check("merge_matches", lambda: None, merge_matches, after=("sft_learns",), run_dir="sft"),
            Check("export_merged", lambda: py + ["deploy.export", "--model_name_or_path", str(w / "sft" / "adapter"),
                                                 "--format", "merged", "--output_dir", str(w / "export"),
                                                 "--check_tokens", "16"],
                  export_merged, after=("sft_learns",)),
            Check("grpo_learns", lambda: py + ["recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                                               *self.common("grpo"), *self.toy_lora(), *grpo_args,
                                               "--learning_rate", "2e-2", "--max_steps", "30"], grpo_learns),
            Check("grpo_objective", lambda: None, grpo_objective, after=("grpo_learns",), run_dir="grpo"),
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
            Check("float32_said", lambda: py + ["recipes.sft", "--config", "configs/sft/tiny.yaml",
                                                *self.common("float32"), *self.toy_lora(), *sft_args, "--limit", "8",
                                                "--max_steps", "4", "--load_in_4bit", "false", "--dtype", "float32"],
                  float32_said),
            Check("vllm_grpo", lambda: py + ["recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                                             *self.common("vllm"), "--model_name_or_path", str(self.qwen05),
                                             *vllm_args, "--max_steps", "2", "--save_strategy", "no",
                                             "--eval_every_save", "false"],
                  vllm_grpo, skip=no_vllm, limit=VLLM_LIMIT),
            Check("grpo_from_adapter_vllm", lambda: py + ["recipes.grpo", "--config", "configs/grpo/tiny.yaml",
                                                          *self.common("from_adapter_vllm"), "--model_name_or_path",
                                                          str(w / "digits" / "adapter"), *vllm_args, *grpo_args,
                                                          "--learning_rate", "1e-6", "--max_steps", "1"],
                  from_adapter, after=("digits_sft", "grpo_learns", "vllm_grpo"), skip=no_vllm, limit=VLLM_LIMIT),
        ]

    # ------------------------------------------------------------------------------------ running
    def limit_of(self, check: Check) -> int:
        return int(self.args.limit.get(check.name, check.limit))

    def run_check(self, check: Check) -> dict[str, Any]:
        t0 = time.time()
        failed = [a for a in check.after if not self.results.get(a, {}).get("ran")]
        skip = check.skip() if callable(check.skip) else check.skip
        if skip:
            return {"status": "skipped", "why": skip}
        if failed:
            return {"status": "skipped", "why": f"needs {', '.join(failed)}, which did not run"}
        command = check.command()
        stdout, peak = "", None
        run_dir = self.work / "runs" / check.run_dir
        if command is not None:
            if "--output_dir" in command:
                run_dir = Path(command[command.index("--output_dir") + 1])
            left = int(self.args.budget - (time.time() - self.started))
            if left < 10 or self.stopping.is_set():
                return {"status": "skipped", "why": f"the {self.args.budget} s budget was spent before it could start"}
            limit = min(self.limit_of(check), left)
            env = dict(os.environ, PYTHONUNBUFFERED="1", UNSLOTH_COMPILE_LOCATION=str(self.work / "cache" / check.name),
                       **check.env)
            if self.device == "cpu":
                env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
                env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU dry run stays on the CPU on a GPU machine too
            log = self.logs / f"{check.name}.log"
            with open(log, "w", encoding="utf-8") as fh:
                fh.write(f"$ {' '.join(command)}\n")
                fh.flush()
                # A process group of its own: a limit stops the check's children too (vLLM's workers).
                proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                with self.lock:
                    self.running[check.name] = proc
                    self.results[check.name] = {"status": "running", "pid": proc.pid, "limit_s": limit}
                self.write_report()
                code, peak = wait_with_limit(proc, limit, self.stopping)
                with self.lock:
                    self.running.pop(check.name, None)
            stdout = log.read_text(encoding="utf-8", errors="replace")
            seconds = round(time.time() - t0, 1)
            if code is None:
                stopped = self.stopping.is_set()
                status = "interrupted" if stopped else "timed out"
                return {"status": status, "why": f"{'stopped' if stopped else 'killed at its limit'} after "
                        f"{seconds} s (limit {limit} s); its log: {log}", "seconds": seconds, "limit_s": limit,
                        "ran": False, "peak_rss_gb": peak, "pid": proc.pid}
            if code != 0:
                lines = stdout.splitlines()
                errors = [x for x in lines if x.startswith("error:")] or lines[-3:]
                return {"status": "failed", "why": f"exit {code}: {' | '.join(errors)[-400:]}", "seconds": seconds,
                        "limit_s": limit, "ran": False, "peak_rss_gb": peak}
        try:
            verdict = check.judge(run_dir, stdout)
        except (OSError, ValueError, KeyError) as err:
            verdict = {"passed": False, "why": f"could not read the run's outputs: {err}"}
        passed = verdict.pop("passed")
        trainer = (run_info(run_dir).get("precision") or {}).get("trainer") if command is not None else None
        if trainer is not None:
            verdict["trainer_autocast"] = trainer["autocast"]
            passed = passed and trainer["as_decided"]  # the trainer kept what run_info.json says
        return {"status": "passed" if passed else "failed", "seconds": round(time.time() - t0, 1), "ran": True,
                "limit_s": self.limit_of(check) if command is not None else None, "peak_rss_gb": peak,
                "measured": verdict}

    def run(self) -> dict[str, Any]:
        self.logs.mkdir(parents=True, exist_ok=True)
        # The runs of an earlier GPU check would make every recipe refuse its output_dir; the models stay.
        shutil.rmtree(self.work / "runs", ignore_errors=True)
        (self.work / "runs").mkdir(parents=True)
        pending = [c for c in self.checks() if self.selected(c.name) or c.name in ("environment", "models")]
        for check in pending:  # every recipe runs on the models the `models` check builds
            if check.name not in ("environment", "models"):
                check.after = ("models", *check.after)
        self.results = {c.name: {"status": "pending"} for c in pending}
        self.write_report()
        print(f"[gpu-check] {len(pending)} checks, {self.args.budget} s budget; the report is rewritten after each: "
              f"{self.out / 'gpu_check.md'}", flush=True)
        with futures.ThreadPoolExecutor(6) as pool:
            running: dict[futures.Future, Check] = {}
            while pending or running:
                finished = {n for n, r in self.results.items() if r["status"] not in ("pending", "running")}
                ready = [c for c in pending if all(a in finished or a not in self.results for a in c.after)]
                for check in ready[: max(0, self.jobs() - len(running))]:
                    pending.remove(check)
                    running[pool.submit(self.run_check, check)] = check
                if not running:  # a dependency cycle would leave checks waiting forever
                    for check in pending:
                        self.results[check.name] = {"status": "skipped", "why": "dependencies never finished"}
                    break
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    check = running.pop(future)
                    with self.lock:
                        self.results[check.name] = future.result()
                    result = self.results[check.name]
                    print(f"[gpu-check] {check.name}: {result['status']} "
                          f"{json.dumps(result.get('measured') or result.get('why'), default=str)[:300]}", flush=True)
                    self.write_report()
        return self.report()

    def jobs(self) -> int:
        """Checks at a time: --jobs, else 6 on a GPU (small models share it) and 1 on a CPU."""
        return self.args.jobs or (6 if self.device == "cuda" else 1)

    def report(self) -> dict[str, Any]:
        statuses = [r["status"] for r in self.results.values()]
        return {"device": self.device_name(), "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started)),
                "versions": versions(), "budget_s": self.args.budget, "elapsed_s": round(time.time() - self.started, 1),
                "finished": all(s not in ("pending", "running") for s in statuses), "checks": dict(self.results)}

    def write_report(self, last: bool = False) -> None:
        """gpu_check.json and .md as they stand: rewritten (atomically) when a check starts and ends.
        After a stop signal only the stop's own `last` write lands, so it is the one that stays."""
        with self.lock:
            if self.stopping.is_set() and not last:
                return
            report = self.report()
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "gpu_check.json", report)
            write_text_atomic(self.out / "gpu_check.md", markdown(report))

    def stop(self, signum, frame) -> None:
        """SIGTERM/SIGINT: record the running checks as interrupted, write the report, and leave; the
        threads waiting on those checks stop their process groups (`wait_with_limit`)."""
        self.stopping.set()
        with self.lock:
            for name, proc in self.running.items():
                self.results[name] = {"status": "interrupted", "pid": proc.pid,
                                      "why": f"the GPU check got signal {signum} while it ran"}
            self.write_report(last=True)
        sys.exit(128 + signum)

    def device_name(self) -> str:
        if self.device == "cuda":
            return self.env.get("gpu", "a GPU")
        if self.device == "cpu":
            return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
        return "not known yet (the environment check has not finished)"


def prepare(work: Path, vllm_model: bool) -> None:
    """Build the checks' offline models and data in `work` (`--prepare`; the `models` check runs it in
    its own process, so that the GPU check itself stays small and each check's peak RSS is its own:
    a child's reported peak starts from its parent's size)."""
    from bench.models import build_model
    from recipes.tiny import build_all

    models = work / "models"
    build_all(models / "tiny")
    build_model("toy", models / "toy")
    if vllm_model:
        build_model("0.5b", models / "qwen2.5-0.5b")
    # Problems whose worked answer is all digits: an adapter trained on them writes digits.
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(models / "digits.jsonl", "w", encoding="utf-8") as fh:
        for row in rows[:16]:
            fh.write(json.dumps({"question": row["question"], "explanation": "1234567890 0987654321 1234567890",
                                 "answer": "1234567890"}, ensure_ascii=False) + "\n")


def wait_with_limit(proc: subprocess.Popen, limit: float, stop: threading.Event) -> tuple[int | None, float | None]:
    """Wait for `proc` at most `limit` seconds (or until `stop` is set), then stop its process group:
    SIGTERM, SIGKILL 10 s later. Returns its exit code (None when it was stopped) and its peak RSS in
    GB (the kernel's accounting for the reaped process and what it waited for)."""
    deadline, stopped_at = time.time() + limit, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            signal_group(proc.pid, signal.SIGKILL if stopped_at else signal.SIGTERM)  # what outlived it (workers)
            return (None if stopped_at else proc.returncode), round(usage.ru_maxrss * 1024 / 1e9, 3)
        now = time.time()
        if stopped_at is None and (now >= deadline or stop.is_set()):
            signal_group(proc.pid, signal.SIGTERM)
            stopped_at = now
        elif stopped_at is not None and now - stopped_at > 10:
            signal_group(proc.pid, signal.SIGKILL)
        time.sleep(0.2)


def signal_group(pgid: int, signum: int) -> None:
    """Signal a check's process group (its leader's pid), if any of it is left."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for pkg in ("torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "bitsandbytes", "vllm",
                "vllm-bnb-plugin"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return found


def markdown(report: dict[str, Any]) -> str:
    counts = {}
    for result in report["checks"].values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    state = "finished" if report["finished"] else "NOT FINISHED (a partial report: the rest never ran or is running)"
    lines = [f"# GPU check: {report['device']}, {report['when']}", "",
             f"{state}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
             f" after {report['elapsed_s']:.0f} s of a {report['budget_s']} s budget. Versions: "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
             "| check | status | seconds | limit | peak RSS GB | measured |", "|---|---|---|---|---|---|"]
    for name, result in report["checks"].items():
        measured = result.get("measured") or {"why": result.get("why")}
        shown = "; ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in measured.items()
                          if v is not None)
        lines.append(f"| {name} | {result['status']} | {result.get('seconds', '')} | {result.get('limit_s') or ''} | "
                     f"{result.get('peak_rss_gb') or ''} | {shown.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def parse_limits(values: list[str]) -> dict[str, int]:
    limits = {}
    for value in values:
        name, _, seconds = value.partition("=")
        if not seconds.isdigit():
            raise UserError(f"--limit takes NAME=SECONDS, got {value!r}")
        limits[name] = int(seconds)
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"),
                        help="folder for gpu_check.json/.md and gpu_check_logs/ (default bench/results)")
    parser.add_argument("--work", default="/tmp/virl-gpu-check",
                        help="scratch folder: models/ (kept for the next check) and runs/ (cleared at the start)")
    parser.add_argument("--device", default=None, help="cuda (default when a GPU is visible) or cpu")
    parser.add_argument("--jobs", type=int, default=None, help="checks at a time (default 6 on a GPU, 1 on a CPU)")
    parser.add_argument("--budget", type=int, default=600,
                        help="seconds for all checks; none starts after it is spent (default 600)")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=SECONDS",
                        help=f"one check's time limit (default {DEFAULT_LIMIT} s, vLLM checks {VLLM_LIMIT} s)")
    parser.add_argument("--only", default=None, help="comma-separated checks to run (default: all)")
    parser.add_argument("--environment", action="store_true", help="print this machine's GPU facts as JSON (a check)")
    parser.add_argument("--prepare", action="store_true", help="build the offline models in --work (a check)")
    parser.add_argument("--vllm-model", action="store_true", help="with --prepare: also the Qwen2.5-0.5B shape")
    args = parser.parse_args(argv)
    if args.environment:
        print("ENV " + json.dumps(environment(), default=str), flush=True)
        return 0
    if args.prepare:
        prepare(Path(args.work), args.vllm_model)
        return 0
    if args.device not in (None, "cuda", "cpu"):
        raise UserError(f"--device must be cuda or cpu, got {args.device!r}")
    args.limit = parse_limits(args.limit)
    args.only = [x.strip() for x in args.only.split(",")] if args.only else None
    check = GPUCheck(args)
    known = [c.name for c in check.checks()]
    unknown = sorted(set(args.only or []) - set(known)) + sorted(set(args.limit) - set(known))
    if unknown:
        raise UserError(f"unknown check(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    signal.signal(signal.SIGTERM, check.stop)
    signal.signal(signal.SIGINT, check.stop)
    report = check.run()
    print(markdown(report), flush=True)
    return 0 if all(r["status"] in ("passed", "skipped") for r in report["checks"].values()) else 1


if __name__ == "__main__":
    from core.cli import run_cli

    run_cli(lambda argv: sys.exit(main(argv)), sys.argv[1:])
