"""Run directories: what a run writes, and that it never overwrites another run.

`prepare_output_dir` refuses a folder that holds a run (unless resuming), `write_run_info` records
the resolved config, versions, git revision and precision, `JsonlMetricsCallback` appends every
logged step to metrics.jsonl (core/console.py gives the console one short line per step instead),
`save_final` writes the adapter (or model) and the merged copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from core.adapters import name_16bit_base, record_adapter_base, sixteen_bit_name
from core.cli import UserError
from core.config import LAST_PARSE, ModelArguments, config_to_dict
from core.files import write_json_atomic as write_json
from core.files import write_text_atomic
from core.launch import current_launch, is_main_process, wait_for_all_processes
from core.merge import merge_adapter
from core.precision import check_device, precision_for


def prepare_output_dir(output_dir: str, resume: bool) -> str | None:
    """Make `output_dir` ready; returns the checkpoint to resume from, if any.

    A non-empty directory is never overwritten: without `--resume` the run refuses to start.
    """
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir {output_dir} is a file; choose a directory")
    occupied = path.is_dir() and any(path.iterdir())
    ours = not path.exists()  # made by this run: run_cli removes it again if the run stops on a user error
    if occupied and not resume and _only_bookkeeping(path):
        # A run that failed before its first checkpoint (bad data, model not found) left only
        # its config records: nothing to lose, so the fixed command may start it again.
        print(f"[run] {output_dir} holds only the records of a run that never saved anything: starting it anew")
        for stale in path.iterdir():
            if stale.is_file():
                stale.unlink()
        occupied, ours = False, True
    if not occupied:
        if resume:
            raise UserError(f"--resume given but {output_dir} holds no run yet; drop --resume to start it")
        path.mkdir(parents=True, exist_ok=True)
        if ours:
            _CREATED_RUN_DIRS.append(path)
        wait_for_all_processes()  # or a slower rank would find rank 0's first files and refuse
        return None
    if not resume:
        raise UserError(
            f"{output_dir} already holds a run; pass --resume to continue it, "
            "or --output_dir NEW_DIR to start fresh (nothing is overwritten)"
        )
    checkpoint = get_last_checkpoint(str(path))
    if checkpoint is None:
        raise UserError(f"--resume: no checkpoint-* directory in {output_dir} to resume from")
    print(f"[run] resuming from {checkpoint}")
    return checkpoint


BOOKKEEPING = ("config.yaml", "run_info.json")


_CREATED_RUN_DIRS: list[Path] = []


def remove_unused_run_dirs() -> None:
    """Remove the run directories this process created that hold only start-of-run records: a run
    that stopped on its input (or model name) leaves no empty run folder behind."""
    for path in _CREATED_RUN_DIRS:
        if is_main_process() and path.is_dir() and _only_bookkeeping(path):
            shutil.rmtree(path, ignore_errors=True)


def _only_bookkeeping(path: Path) -> bool:
    """True when a run directory holds nothing but what `write_run_info` writes at the start."""
    names = [p.name for p in path.iterdir()]
    return all(n in BOOKKEEPING or (n.startswith("config.resume-") and n.endswith((".yaml", ".json")))
               or n.startswith(".") for n in names)


def git_revision() -> str:
    """The repository's HEAD commit (with '+dirty' when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers, plus the device and torch's CPU kernels."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
                "unsloth", "unsloth_zoo", "vllm"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    import torch

    versions["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    # The instruction set torch's CPU kernels run (AVX2, AVX512, ...): it follows ATEN_CPU_CAPABILITY,
    # so a run under the AVX2 caps records AVX2 even on a newer CPU (core/precision.py torch_isa_caps).
    versions["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return versions


def write_run_info(output_dir: str, *configs: Any, extra: dict[str, Any] | None = None) -> None:
    """Record the resolved config, library versions and git revision in the run directory."""
    if not is_main_process():
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = config_to_dict(*configs)
    name = "config.yaml" if not (out / "config.yaml").exists() else f"config.resume-{int(time.time())}.yaml"
    write_text_atomic(out / name, yaml.safe_dump(resolved, allow_unicode=True, sort_keys=True))
    info = {"git_revision": git_revision(), "versions": library_versions(), "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "launch": dataclasses.asdict(current_launch())}
    if LAST_PARSE["precision"] is not None:
        info["precision"] = dataclasses.asdict(LAST_PARSE["precision"])
    if extra:
        info.update(extra)
    path = out / ("run_info.json" if name == "config.yaml" else name.replace(".yaml", ".run_info.json"))
    write_json(path, info)
    _RUN_INFO[out.resolve()] = path


# output_dir -> the run_info file this process wrote there (a resumed run writes a second one).
_RUN_INFO: dict[Path, Path] = {}


def trainer_autocast(args) -> str:
    """The autocast a trainer really runs, read from its final arguments: `bfloat16`, `float16` or
    `none`. A library may rewrite the flags the decision set (Unsloth's generated trainers do, in
    their __init__), so this is read when training begins."""
    return "bfloat16" if getattr(args, "bf16", False) else "float16" if getattr(args, "fp16", False) else "none"


def record_trainer_precision(output_dir: str, args) -> dict[str, str] | None:
    """Add the trainer's real autocast to the run's run_info.json, and say so in one line when it is
    not what the precision decision set. Returns what was recorded (None without a decision)."""
    precision = LAST_PARSE["precision"]
    if precision is None or not is_main_process():
        return None
    used = trainer_autocast(args)
    expected = precision.dtype if precision.bf16 or precision.fp16 else "none"
    record = {"autocast": used, "as_decided": used == expected}
    if used != expected:
        print(f"[precision] the trainer runs {used} autocast, not the decided {precision.dtype}"
              f"{'' if expected == 'none' else ' autocast'} (its library changed the flags): recorded in run_info.json")
    path = _RUN_INFO.get(Path(output_dir).resolve())
    if path is not None and path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
        info.setdefault("precision", {})["trainer"] = record
        write_json(path, info)
    return record


class JsonlMetricsCallback(TrainerCallback):
    """Append every logged metrics dict to `output_dir/metrics.jsonl` (rank 0 only).

    The first row logged after an optimizer step also gets `step_seconds` (that step's wall time,
    generation included) and, on a GPU, `peak_memory_gb` / `peak_reserved_gb` (this process's
    `torch.cuda.max_memory_allocated` / `max_memory_reserved` so far); `bench/` reads them. When
    training begins, the trainer's real autocast goes into run_info.json (`record_trainer_precision`).
    """

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / "metrics.jsonl"
        self._step_start: float | None = None
        self._step_stats: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        # The trainer exists by now, and any library that rewrites its precision flags has done so.
        record_trainer_precision(str(self.path.parent), args)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is None:
            return
        self._step_stats = {"step_seconds": round(time.perf_counter() - self._step_start, 4)}
        self._step_stats.update(gpu_memory_peaks())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str, bool)) or v is None})
        row.update(self._step_stats)
        self._step_stats = {}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def save_final(trainer, tokenizer, output_dir: str, margs: ModelArguments, save_merged: bool) -> Path:
    """Save the final adapter (or full model) to `output_dir/adapter` and optionally a merged copy.

    The adapter's recorded base is the 16-bit model the run started from (see `name_16bit_base`);
    the merged copy is in the run's precision (bf16 / fp16, float32 for a float32 run).
    """
    out = Path(output_dir)
    final = out / ("adapter" if margs.use_peft else "model")
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(final))
        if margs.use_peft:
            name_16bit_base(str(final), sixteen_bit_name(margs.model_name_or_path))
            # Where that base is, so the adapter finds it from anywhere (core/adapters.py).
            record_adapter_base(final, requested=margs.model_name_or_path)
        print(f"[run] saved {final}")
        if save_merged and margs.use_peft:
            dtype = precision_for(margs.dtype, check_device(margs), margs.backend).dtype
            merge_adapter(str(final), str(out / "merged"), dtype=dtype, trust_remote_code=margs.trust_remote_code)
    return final


def gpu_memory_peaks() -> dict[str, float]:
    """This process's peak GPU memory so far, in GB (empty on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3),
    }
