"""Multi-process launches: `make grpo/dpo NPROC=2 ACCELERATE=configs/accelerate/cpu_ddp.yaml` really
trains as one 2-process DDP job on the CPU (gloo), and only rank 0 writes the run directory; plus the
launch checks of `core.launch` (which processes, where the weights go, what is refused).

One 2-process run (GRPO, the default Unsloth backend) is in the default suite; each costs about a
minute on 2 cores, so the other backend/recipe pairs are marked slow.
"""

import json
from pathlib import Path

import pytest

from core.cli import UserError
from core.config import ModelArguments
from core.launch import Launch, check_launch, current_launch, hf_device_map, quant_storage_for_launch
from tests.conftest import recorded, run_entry

THREADS = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
DDP = ["NPROC=2", "ACCELERATE=configs/accelerate/cpu_ddp.yaml"]
LAUNCH_VARS = ("WORLD_SIZE", "LOCAL_RANK", "RANK", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
               "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_USE_FSDP", "FSDP_VERSION")


def make_ddp(recipe: str, run_dir: Path, *args: str, check: bool = True):
    return run_entry(["make", recipe, *DDP, f"CONFIG=configs/{recipe}/tiny.yaml",
                      "ARGS=" + " ".join(["--use_cpu", "true", "--output_dir", str(run_dir), "--max_steps", "2",
                                          *args])], env=THREADS, check=check)


def assert_one_writer(run_dir: Path, train_key: str) -> list[dict]:
    """Exactly one adapter and one metrics log, written once per step by rank 0 of a 2-process job."""
    assert sorted(p.name for p in run_dir.rglob("adapter_model.safetensors") if "checkpoint" not in str(p)) == \
        ["adapter_model.safetensors"]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)), "a metrics line was written twice"
    rows = [json.loads(line) for line in lines]
    steps = [r["step"] for r in rows if train_key in r]
    assert steps == [1, 2], steps  # rank 1 writing too would double every step
    assert all(recorded(r["step_seconds"]) for r in rows if train_key in r)
    assert not list(run_dir.glob(".*.tmp")), "an atomic write was left half done"
    # Both processes took part: one RNG state per rank in the checkpoint, and the launch recorded.
    assert sorted(p.name for p in (run_dir / "checkpoint-2").glob("rng_state_*.pth")) == \
        ["rng_state_0.pth", "rng_state_1.pth"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["launch"]["kind"] == "ddp" and info["launch"]["world_size"] == 2
    return rows


@pytest.mark.slow  # two processes of GRPO (~40 s on 2 cores): `make test-slow` (CI) runs it
def test_grpo_two_processes_unsloth(tmp_path):
    run_dir = tmp_path / "grpo"
    proc = make_ddp("grpo", run_dir)
    assert "accelerate launch --config_file configs/accelerate/cpu_ddp.yaml --num_processes 2" in proc.stdout
    assert "[launch] DDP with 2 processes, backend=unsloth" in proc.stdout
    rows = assert_one_writer(run_dir, "reward")
    # 2 processes x 8 completions / 4 generations = 4 of the 60 fixture problems per step: the data
    # is split between the ranks, not trained twice.
    assert [r["epoch"] for r in rows if "reward" in r] == pytest.approx([4 / 60, 8 / 60])
    # The training-time eval (eval_every_save in the tiny config) ran on rank 0 only.
    assert len((run_dir / "train_eval.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_grpo_two_processes_hf_same_layout(tmp_path):
    make_ddp("grpo", tmp_path / "unsloth", "--eval_every_save", "false")
    make_ddp("grpo", tmp_path / "hf", "--backend", "hf", "--eval_every_save", "false")
    assert_one_writer(tmp_path / "hf", "reward")
    assert layout(tmp_path / "hf") == layout(tmp_path / "unsloth")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_dpo_two_processes(tmp_path, backend):
    run_dir = tmp_path / "dpo"
    make_ddp("dpo", run_dir, "--backend", backend)
    assert_one_writer(run_dir, "loss")
    # The held-out evaluation after training is rank 0's alone.
    held_out = json.loads((run_dir / "preference_eval.json").read_text())
    policy = [name for name, state in held_out["states"].items() if state == "policy"]
    assert len(policy) == 1 and set(held_out["metrics"]) == set(held_out["states"]), held_out
    # Every state scored on the same held-out pairs, the trained one with its implicit reward.
    assert len({m["pairs"] for m in held_out["metrics"].values()}) == 1 and held_out["metrics"][policy[0]]["pairs"] > 0
    assert 0.0 <= held_out["metrics"][policy[0]]["reward_accuracy"] <= 1.0


def layout(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- launch checks
@pytest.fixture
def launch_env(monkeypatch):
    """Clear the launch variables, then set the given ones."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.mark.parametrize("env, expected", [
    ({}, Launch()),
    ({"WORLD_SIZE": "8", "LOCAL_RANK": "3"}, Launch("ddp", 8, 3)),
    # What `accelerate launch --config_file configs/accelerate/zero3.yaml` exports.
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
     Launch("deepspeed", 8, 0, zero_stage=3)),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
     Launch("deepspeed", 8, 0, zero_stage=2)),
    ({"WORLD_SIZE": "4", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, Launch("fsdp", 4, 0, fsdp_version=2)),
    # accelerate builds FSDP1 when the config names no version.
    ({"WORLD_SIZE": "4", "ACCELERATE_USE_FSDP": "true"}, Launch("fsdp", 4, 0, fsdp_version=1)),
])
def test_current_launch(launch_env, env, expected):
    launch_env(**env)
    assert current_launch() == expected


def test_current_launch_reads_the_zero_stage_from_a_deepspeed_json(launch_env, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    launch_env(WORLD_SIZE="2", ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_CONFIG_FILE=str(config))
    assert current_launch().zero_stage == 3 and current_launch().shards_weights


@pytest.mark.parametrize("env, device, expected", [
    ({}, "cuda", {"": 0}),
    ({"WORLD_SIZE": "8", "LOCAL_RANK": "5"}, "cuda", {"": 5}),  # each rank on its own GPU, not all on 0
    ({"WORLD_SIZE": "8", "LOCAL_RANK": "5", "ACCELERATE_USE_DEEPSPEED": "true",
      "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "cuda", {"": 5}),
    ({"WORLD_SIZE": "8", "LOCAL_RANK": "5", "ACCELERATE_USE_DEEPSPEED": "true",
      "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "cuda", None),  # ZeRO-3 places the weights itself
    ({"WORLD_SIZE": "8", "LOCAL_RANK": "5", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "cuda", None),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cpu", None),
])
def test_hf_device_map(launch_env, env, device, expected):
    launch_env(**env)
    assert hf_device_map(device) == expected


@pytest.mark.parametrize("env, user_storage, expected", [
    ({}, None, None),  # bitsandbytes' uint8 default
    ({"WORLD_SIZE": "8"}, None, None),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, None, "bfloat16"),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, None, "bfloat16"),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None, None),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true"}, "float16", "float16"),  # the user's choice wins
])
def test_quant_storage_for_launch(launch_env, env, user_storage, expected):
    import torch

    launch_env(**env)
    margs = ModelArguments(model_name_or_path="m", backend="hf", load_in_4bit=True,
                           bnb_4bit_quant_storage=user_storage)
    storage = quant_storage_for_launch(margs, torch.bfloat16)
    assert (str(storage).replace("torch.", "") if storage is not None else None) == expected


def test_hf_loader_builds_the_sharding_quant_config(launch_env, monkeypatch):
    """The hf loader hands transformers a 4-bit config whose storage dtype FSDP can shard."""
    import torch
    import transformers

    import core.models as models

    launch_env(WORLD_SIZE="2", ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    seen = {}

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    margs = ModelArguments(model_name_or_path="m", backend="hf", load_in_4bit=True)
    with pytest.raises(OSError):
        models._load_hf(margs, "m", torch.bfloat16, True, "cuda")
    assert seen["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    assert seen["device_map"] is None


@pytest.mark.parametrize("env, model_kwargs, message", [
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
     {"backend": "unsloth", "load_in_4bit": True}, "use --backend hf"),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"},
     {"backend": "unsloth", "load_in_4bit": True}, "FSDP1"),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
     {"backend": "unsloth", "fast_inference": True}, "fast_inference"),
])
def test_check_launch_refuses(launch_env, monkeypatch, env, model_kwargs, message):
    launch_env(**env)
    monkeypatch.setattr("accelerate.state.PartialState._shared_state", {})
    with pytest.raises(UserError, match=message):
        check_launch(ModelArguments(model_name_or_path="m", **model_kwargs))


@pytest.mark.parametrize("env, model_kwargs", [
    ({"WORLD_SIZE": "8"}, {"backend": "unsloth", "load_in_4bit": True}),  # Unsloth under DDP: allowed
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
     {"backend": "unsloth", "load_in_4bit": True}),  # Unsloth stores 4-bit as bf16 for FSDP2 itself
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
     {"backend": "hf", "load_in_4bit": True}),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
     {"backend": "unsloth", "load_in_4bit": True}),
])
def test_check_launch_allows(launch_env, monkeypatch, env, model_kwargs):
    launch_env(**env)
    monkeypatch.setattr("accelerate.state.PartialState._shared_state", {})
    assert check_launch(ModelArguments(model_name_or_path="m", **model_kwargs)).world_size == 8


def test_check_launch_refuses_processes_that_did_not_join(launch_env, monkeypatch):
    """WORLD_SIZE=2 but accelerate set up a one-process state (a CPU machine without use_cpu)."""
    import accelerate.state

    class LonelyState:
        _shared_state = {"distributed_type": "NO"}
        num_processes = 1

    launch_env(WORLD_SIZE="2")
    monkeypatch.setattr(accelerate.state, "PartialState", LonelyState)
    with pytest.raises(UserError, match="--use_cpu true"):
        check_launch(ModelArguments(model_name_or_path="m"))
