"""configs/accelerate/*.yaml: accelerate's own loader and launcher read each one as intended.

`load_config_from_file` is what `accelerate launch --config_file` calls; it rejects unknown top-level
keys. Keys inside `fsdp_config`/`deepspeed_config` are copied onto the launch arguments without a
check, so they are compared with the launcher's argument names here, and the environment the launcher
would give the training processes is computed (nothing is started).
"""

import argparse
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from tests.conftest import ROOT

CONFIGS = ROOT / "configs" / "accelerate"
EXPECTED = {
    "single_gpu.yaml": DistributedType.NO,
    "multi_gpu.yaml": DistributedType.MULTI_GPU,
    "zero2.yaml": DistributedType.DEEPSPEED,
    "zero3.yaml": DistributedType.DEEPSPEED,
    "fsdp.yaml": DistributedType.FSDP,
    # DDP on CPUs goes through torchrun like GPUs; the processes use gloo (tests/test_multiprocess.py).
    "cpu_ddp.yaml": DistributedType.MULTI_GPU,
}


def test_every_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_loads_the_config(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == EXPECTED[name]


def launch_args(name: str, *extra: str) -> argparse.Namespace:
    """The launcher's view of `accelerate launch --config_file NAME EXTRA -m recipes.grpo`."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / name), *extra, "-m", "recipes.grpo"])
    args, _, _ = _validate_launch_command(args)
    return args


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nested_keys_are_launcher_options(name):
    known = {action.dest for action in launch_command_parser()._actions}
    config = load_config_from_file(str(CONFIGS / name))
    for key in config.fsdp_config:
        assert (key if key.startswith("fsdp") else "fsdp_" + key) in known, key
    for key in config.deepspeed_config:
        assert key in known, key


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "zero2.yaml", "zero3.yaml", "fsdp.yaml", "cpu_ddp.yaml"])
def test_num_processes_flag_overrides_the_file(name):
    assert launch_args(name).num_processes == load_config_from_file(str(CONFIGS / name)).num_processes
    assert launch_args(name, "--num_processes", "3").num_processes == 3  # make NPROC=3


def test_multi_node_flags_override_the_file():
    args = launch_args("multi_gpu.yaml", "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
                       "--main_process_ip", "10.0.0.1", "--main_process_port", "29501")
    assert (args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port) == \
        (2, 1, "10.0.0.1", 29501)


def test_launcher_environment_for_sharded_configs(monkeypatch):
    """What the training processes will see: the variables core.launch.current_launch reads."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_args("fsdp.yaml", "--num_processes", "2")
    args.main_process_port = 0  # a free port: the check for a busy one must not depend on this machine
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"

    for name, stage in (("zero2.yaml", "2"), ("zero3.yaml", "3")):
        args = launch_args(name, "--num_processes", "2")
        args.main_process_port = 0
        args.deepspeed_fields_from_accelerate_config = ""
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == stage


def test_makefile_launch_line():
    """`make grpo NPROC=... ACCELERATE=...` is `accelerate launch --config_file F --num_processes N -m ...`."""
    import subprocess

    def dry(*variables):
        # --no-print-directory: under `make test` this make is a sub-make and would add
        # "make[1]: Leaving directory" after the command.
        out = subprocess.run(["make", "--no-print-directory", "-n", "grpo", "CONFIG=configs/grpo/qwen2.5-3b.yaml",
                              *variables], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return " ".join(out.strip().splitlines()[-1].split())

    assert dry().startswith(".venv/bin/python -m recipes.grpo --config")
    assert dry("NPROC=8", "ACCELERATE=configs/accelerate/zero2.yaml").startswith(
        ".venv/bin/accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 -m recipes.grpo")
    assert dry("NPROC=4").startswith(
        ".venv/bin/accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 4 -m")
    # No NPROC: the file's num_processes stands.
    assert "--num_processes" not in dry("ACCELERATE=configs/accelerate/fsdp.yaml")
    multi_node = dry("NPROC=16", "ACCELERATE=configs/accelerate/multi_gpu.yaml",
                     "LAUNCH_ARGS=--num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1")
    assert "--num_processes 16 --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 -m recipes.grpo" in multi_node


def test_configs_are_plain_files():
    for path in CONFIGS.glob("*.yaml"):
        assert Path(path).read_text(encoding="utf-8").startswith("#"), f"{path.name} needs a comment saying what it is for"
