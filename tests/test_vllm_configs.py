"""The GRPO configs for TRL's vLLM modes parse with the recipe's own parser (every key is a real
GRPOConfig/ModelArguments field) and say what docs/scaling.md says they do; the commands in
docs/scaling.md name only files that exist."""

import re

import pytest

from tests.conftest import ROOT

VLLM_CONFIGS = {"qwen2.5-3b-vllm-server.yaml": "server", "qwen2.5-3b-vllm-colocate.yaml": "colocate"}


def parse(name):
    import recipes.grpo as grpo
    from core.config import ModelArguments, RunArguments, parse_args

    return parse_args([grpo.GRPOScriptArguments, grpo.GRPOConfig, ModelArguments, RunArguments],
                      ["--config", str(ROOT / "configs" / "grpo" / name)])  # precision: decided per device


@pytest.mark.parametrize("name, mode", sorted(VLLM_CONFIGS.items()))
def test_vllm_config_parses(name, mode):
    _, train, model, _ = parse(name)
    assert train.use_vllm and train.vllm_mode == mode
    # TRL's vLLM path with plain TRL + PEFT and 16-bit weights (see the config's comments).
    assert model.backend == "hf" and not model.load_in_4bit and not model.fast_inference
    # Every process's completions form whole groups.
    assert train.generation_batch_size % train.num_generations == 0
    if mode == "server":
        assert (train.vllm_server_host, train.vllm_server_port) == ("127.0.0.1", 8000)
    else:
        assert 0 < train.vllm_gpu_memory_utilization < 0.5
        assert train.vllm_max_model_length >= train.max_completion_length + 256


def test_server_layout_divides_into_groups():
    """6 trainer processes (GPUs 2-7) x 8 completions x 2 micro-steps: whole groups of 8."""
    _, train, _, _ = parse("qwen2.5-3b-vllm-server.yaml")
    assert (train.per_device_train_batch_size * 6 * train.steps_per_generation) % train.num_generations == 0


def test_scaling_doc_names_only_real_files():
    text = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"configs/[\w./-]+\.yaml", text))
    assert {f"configs/grpo/{name}" for name in VLLM_CONFIGS} <= paths
    assert {f"configs/accelerate/{n}.yaml" for n in ("multi_gpu", "zero2", "zero3", "fsdp")} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"docs/scaling.md names files that do not exist: {missing}"
    # Every make target it uses exists in the Makefile.
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in set(re.findall(r"\bmake ([a-z-]+)", text)):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no `make {target}` target"
