"""Shared test fixtures: offline settings and tiny models built once per session."""

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


def run_entry(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run a user entry point (`python -m ...` or `make ...`) the way a user would, offline."""
    full_env = dict(os.environ)
    # Under `make test` these would make a nested `make` behave unlike a user's top-level one.
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
        full_env.pop(name, None)
    full_env.update(env or {})
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
