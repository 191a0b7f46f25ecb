"""Launch checks: how this process was started (one process, DDP, DeepSpeed, FSDP) and which
combinations are refused before they fail late.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.cli import UserError

if TYPE_CHECKING:
    from core.config import ModelArguments

# `accelerate launch` (configs/accelerate/*.yaml) starts one process per GPU and tells each, through
# environment variables, what it is part of: WORLD_SIZE / LOCAL_RANK (torchrun), ACCELERATE_USE_FSDP
# with FSDP_VERSION, ACCELERATE_USE_DEEPSPEED with ACCELERATE_DEEPSPEED_ZERO_STAGE (or a DeepSpeed
# JSON in ACCELERATE_DEEPSPEED_CONFIG_FILE). The model is loaded before the Trainer builds its
# Accelerator, so these variables are what the loader can go by.
#
# Unsloth 2026.10.9 supports multi-process training itself (per-rank device maps, DDP defaults for
# LoRA, DeepSpeed ZeRO placement, FSDP2 QLoRA with a float quant storage), so `backend: unsloth` is
# allowed under every launch; only the combinations below are refused.


def is_main_process() -> bool:
    """Rank 0 (or a single process): only it writes run files."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@dataclass(frozen=True)
class Launch:
    """How this process was started: `kind` is `single`, `ddp`, `deepspeed` or `fsdp`."""

    kind: str = "single"
    world_size: int = 1
    local_rank: int = 0
    zero_stage: int | None = None
    fsdp_version: int | None = None

    @property
    def shards_weights(self) -> bool:
        """True when the weights themselves are split across processes (FSDP, ZeRO-3)."""
        return self.kind == "fsdp" or self.zero_stage == 3

    def describe(self) -> str:
        if self.kind == "deepspeed":
            return f"DeepSpeed ZeRO-{self.zero_stage if self.zero_stage is not None else '?'}"
        if self.kind == "fsdp":
            return f"FSDP{self.fsdp_version}"
        return self.kind.upper() if self.kind == "ddp" else "single process"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def current_launch() -> Launch:
    """Read the launch from the environment `accelerate launch` / torchrun give each process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
        if not stage.isdigit() and os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            try:
                with open(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"], encoding="utf-8") as fh:
                    stage = str(json.load(fh).get("zero_optimization", {}).get("stage", ""))
            except (OSError, ValueError):
                stage = ""
        return Launch("deepspeed", world_size, local_rank, zero_stage=int(stage) if stage.isdigit() else None)
    if _env_flag("ACCELERATE_USE_FSDP"):
        return Launch("fsdp", world_size, local_rank, fsdp_version=int(os.environ.get("FSDP_VERSION", "1") or 1))
    return Launch("ddp" if world_size > 1 else "single", world_size, local_rank)


def check_launch(margs: ModelArguments) -> Launch:
    """Refuse launches that would fail late or silently do something else; returns the launch.

    Called by `load_model_and_tokenizer`, so every recipe gets it.
    """
    launch = current_launch()
    if launch.world_size > 1:
        from accelerate.state import PartialState

        # TrainingArguments set up the process group while the config was parsed. A CPU-only
        # machine without `use_cpu` leaves every process on its own: N full runs writing one directory.
        if PartialState._shared_state and PartialState().num_processes != launch.world_size:
            raise UserError(
                f"this {launch.world_size}-process launch did not form one process group (no GPU visible?); "
                "for DDP on CPUs add --use_cpu true (see configs/accelerate/cpu_ddp.yaml), else launch on GPUs"
            )
    if margs.backend == "unsloth" and margs.load_in_4bit and (
        launch.zero_stage == 3 or (launch.kind == "fsdp" and launch.fsdp_version == 1)
    ):
        # Unsloth stores 4-bit weights in a float dtype only for FSDP2; ZeRO-3 and FSDP1 would try
        # to shard packed uint8 weights.
        raise UserError(
            f"backend unsloth with load_in_4bit cannot shard 4-bit weights under {launch.describe()}: "
            "use --backend hf (it stores them in the compute dtype), configs/accelerate/fsdp.yaml (FSDP2) or zero2.yaml"
        )
    if margs.fast_inference and launch.kind == "fsdp":
        raise UserError(
            "fast_inference (Unsloth's vLLM engine) does not work under FSDP; set fast_inference: false, "
            "or use configs/accelerate/multi_gpu.yaml (DDP)"
        )
    if launch.world_size > 1 and is_main_process():
        print(f"[launch] {launch.describe()} with {launch.world_size} processes, backend={margs.backend}")
    return launch


def hf_device_map(device: str) -> dict[str, int] | None:
    """Where the hf backend puts the weights: each process on its own GPU (LOCAL_RANK).

    None when the weights will be sharded (FSDP/ZeRO-3 place them; transformers refuses a device
    map under ZeRO-3) and on the CPU. A 4-bit load with None still lands on this process's GPU:
    bitsandbytes uses the current device, which accelerate set to LOCAL_RANK.
    """
    launch = current_launch()
    if device != "cuda" or launch.shards_weights:
        return None
    return {"": launch.local_rank}


def quant_storage_for_launch(margs: ModelArguments, dtype) -> Any | None:
    """`bnb_4bit_quant_storage` for the hf backend: the user's, else the compute dtype when sharding.

    FSDP and ZeRO-3 flatten and shard parameters of one dtype; packed 4-bit weights stored as uint8
    beside bf16 LoRA/norm weights cannot be sharded, stored as the compute dtype they can.
    """
    if margs.bnb_4bit_quant_storage:
        return margs.bnb_4bit_quant_storage
    launch = current_launch()
    if launch.shards_weights:
        if is_main_process():
            print(f"[model] {launch.describe()}: storing 4-bit weights as {str(dtype).replace('torch.', '')} "
                  "(bnb_4bit_quant_storage) so they can be sharded")
        return dtype
    return None  # bitsandbytes' default, uint8


def wait_for_all_processes() -> None:
    """Barrier across the launch's processes; nothing in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    from accelerate.state import PartialState

    if PartialState._shared_state:
        PartialState().wait_for_everyone()
