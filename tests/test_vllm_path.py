"""Unsloth's vLLM path (`fast_inference: true`), pinned on the CPU against the installed unsloth_zoo.

vLLM needs a GPU, but the checks that stop a vLLM load are plain Python at the top of unsloth_zoo's
`load_vllm`: since vLLM 0.28 a bitsandbytes (4-bit) model needs the `vllm-bnb-plugin` package, and
float32 is refused. These tests run that function for real, with vLLM's presence and a GPU's
answers stood in, up to the point where it would start the engine, and hand it exactly what the
toolkit's loader hands Unsloth. bench/gpu_check.py's `vllm_grpo` starts the real engine on a GPU.
"""

import importlib.machinery
import sys
import types

import pytest
import torch

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
import core.precision
import recipes.grpo  # TRL's GRPO module asks whether vLLM is installed when imported: before the stand-in
from core.config import ModelArguments
from core.models import load_model_and_tokenizer


class EngineWouldStart(Exception):
    """Raised where load_vllm has passed its checks and would build the vLLM engine."""


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() finds it
    return module


@pytest.fixture
def gpu_with_vllm(monkeypatch):
    """A GPU machine with vLLM installed, as unsloth_zoo and the loader see it. Returns a function
    `machine(capability, bf16, plugin)` that sets the GPU and whether vllm-bnb-plugin is there."""
    import unsloth_zoo.vllm_utils as zoo

    monkeypatch.setitem(sys.modules, "vllm", _module("vllm"))
    monkeypatch.setattr(zoo, "vllm_version", "0.33.0", raising=False)  # bound at import when vLLM is there
    monkeypatch.setattr(zoo, "DEVICE_TYPE", "cuda")
    monkeypatch.setattr(zoo, "get_mem_info", lambda: (20 * 2**30, 24 * 2**30))

    def engine(dtype):  # the first step after every check, on the way to building the engine
        raise EngineWouldStart(dtype)

    monkeypatch.setattr(zoo, "patch_vllm_compute_dtype", engine)
    monkeypatch.setattr(core.precision, "has_cuda", lambda: True)
    monkeypatch.setattr(core.precision, "_ANNOUNCED", set())  # the fake GPUs' lines stay out of other tests
    monkeypatch.delenv(core.precision.OVERRIDE, raising=False)

    def machine(capability=(8, 9), bf16=True, plugin=True):
        name = {(8, 9): "NVIDIA GeForce RTX 4090", (7, 5): "Tesla T4"}[capability]
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        if plugin:
            bnb = _module("vllm_bnb_plugin.bitsandbytes")
            monkeypatch.setitem(sys.modules, "vllm_bnb_plugin", _module("vllm_bnb_plugin"))
        else:
            bnb = None
            monkeypatch.delitem(sys.modules, "vllm_bnb_plugin", raising=False)
        # What unsloth_zoo resolved at import time: the plugin's module, or nothing to load 4-bit with.
        monkeypatch.setattr(zoo, "_vllm_bnb", bnb)

    return machine


@pytest.fixture
def unsloth_load(monkeypatch):
    """FastLanguageModel.from_pretrained as on a GPU: with fast_inference it calls unsloth_zoo's real
    `load_vllm` with the arguments Unsloth's loader passes (unsloth/models/llama.py), then loads the
    tiny model with transformers. Returns the list of (kwargs, dtype vLLM would start with)."""
    import unsloth
    import unsloth_zoo.vllm_utils as zoo
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    calls = []

    def fake(**kwargs):
        started = None
        if kwargs.get("fast_inference"):
            name = kwargs["model_name"]
            with pytest.raises(EngineWouldStart) as engine:  # anything else load_vllm raises fails the test
                zoo.load_vllm(model_name=name, config=AutoConfig.from_pretrained(name),
                              gpu_memory_utilization=kwargs["gpu_memory_utilization"],
                              max_seq_length=kwargs["max_seq_length"], dtype=kwargs["dtype"], enable_lora=True,
                              max_lora_rank=kwargs["max_lora_rank"], use_bitsandbytes=kwargs["load_in_4bit"])
            started = engine.value.args[0]
        calls.append((kwargs, started))
        model = AutoModelForCausalLM.from_pretrained(kwargs["model_name"], dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(kwargs["model_name"])

    monkeypatch.setattr(unsloth.FastLanguageModel, "from_pretrained", staticmethod(fake))
    return calls


def _margs(tiny_models, **overrides):
    values = dict(model_name_or_path=str(tiny_models / "qwen2"), use_peft=True, load_in_4bit=True,
                  fast_inference=True, dtype="auto", max_seq_length=64, gpu_memory_utilization=0.3)
    values.update(overrides)
    return ModelArguments(**values)


def test_load_vllm_refuses_4bit_without_the_plugin_and_float32(gpu_with_vllm):
    """The installed library's behaviour the loader's checks mirror (fails if unsloth_zoo changes it)."""
    import unsloth_zoo.vllm_utils as zoo
    from transformers import Qwen2Config

    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000)
    run = dict(model_name="m", config=config, max_seq_length=512, gpu_memory_utilization=0.5)
    gpu_with_vllm(plugin=False)
    with pytest.raises(RuntimeError, match="moved bitsandbytes out of tree"):
        zoo.load_vllm(dtype=torch.bfloat16, use_bitsandbytes=True, **run)
    with pytest.raises(EngineWouldStart):  # 16-bit weights need no plugin
        zoo.load_vllm(dtype=torch.bfloat16, use_bitsandbytes=False, **run)
    gpu_with_vllm(plugin=True)
    with pytest.raises(NotImplementedError, match="do not support dtype = torch.float32"):
        zoo.load_vllm(dtype=torch.float32, use_bitsandbytes=True, **run)
    with pytest.raises(EngineWouldStart):
        zoo.load_vllm(dtype=torch.bfloat16, use_bitsandbytes=True, **run)


def test_a_4bit_load_without_the_plugin_never_reaches_load_vllm(gpu_with_vllm, unsloth_load, tiny_models, capsys):
    gpu_with_vllm(plugin=False)
    load_model_and_tokenizer(_margs(tiny_models), for_training=False)
    kwargs, started = unsloth_load[-1]
    assert not kwargs.get("fast_inference") and started is None
    out = capsys.readouterr().out
    assert "needs the vllm-bnb-plugin package" in out and "generation=HF generate" in out


@pytest.mark.parametrize("capability, bf16, dtype", [((8, 9), True, torch.bfloat16), ((7, 5), False, torch.float16)])
def test_a_4bit_load_with_the_plugin_reaches_the_engine(gpu_with_vllm, unsloth_load, tiny_models, capsys,
                                                        capability, bf16, dtype):
    gpu_with_vllm(capability, bf16, plugin=True)
    load_model_and_tokenizer(_margs(tiny_models), for_training=False)
    kwargs, started = unsloth_load[-1]
    assert kwargs["fast_inference"] is True and started == dtype
    assert "generation=vLLM" in capsys.readouterr().out


def test_float32_is_not_handed_to_vllm(gpu_with_vllm, unsloth_load, tiny_models, capsys):
    """On a T4, float32 stays float32 (Unsloth keeps it there), which vLLM refuses: the loader says so
    and generates with HF generate instead of failing inside load_vllm."""
    gpu_with_vllm((7, 5), bf16=False, plugin=True)
    load_model_and_tokenizer(_margs(tiny_models, dtype="float32"), for_training=False)
    kwargs, started = unsloth_load[-1]
    assert kwargs["dtype"] == torch.float32 and not kwargs.get("fast_inference") and started is None
    assert "vLLM computes in bfloat16 or float16, not float32" in capsys.readouterr().out


@pytest.mark.parametrize("capability, bf16, dtype", [((8, 9), True, torch.bfloat16), ((7, 5), False, torch.float16)])
def test_the_gpu_checks_vllm_runs_ask_for_a_dtype_vllm_accepts(gpu_with_vllm, unsloth_load, tiny_models, tmp_path,
                                                                  capability, bf16, dtype):
    """bench/gpu_check.py's vLLM checks, as it builds them (on configs/grpo/tiny.yaml, which says
    float32): parsed by the recipe's own parser, their model options reach load_vllm's engine."""
    import argparse

    from bench.gpu_check import GPUCheck
    from core.config import RunArguments, parse_args

    check = GPUCheck(argparse.Namespace(out=str(tmp_path), work=str(tmp_path / "work"), device="cuda", jobs=1,
                                        budget=600, limit={}, only=None))
    check.env = {"vllm_imports": True, "cuda": True}
    for name in ("vllm_grpo", "grpo_from_adapter_vllm"):
        command = next(c for c in check.checks() if c.name == name).command()
        argv = command[command.index("recipes.grpo") + 1:]
        argv[argv.index("--device") + 1] = "cpu"  # parsed here, where TrainingArguments sees no GPU
        _, _, margs, _ = parse_args([recipes.grpo.GRPOScriptArguments, recipes.grpo.GRPOConfig, ModelArguments,
                                      RunArguments], argv)
        assert margs.fast_inference and margs.load_in_4bit and margs.dtype == "auto", name
        gpu_with_vllm(capability, bf16, plugin=True)
        margs.device, margs.model_name_or_path, margs.max_seq_length = "auto", str(tiny_models / "qwen2"), 64
        load_model_and_tokenizer(margs, for_training=False)
        assert unsloth_load[-1][1] == dtype, name
