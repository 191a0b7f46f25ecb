"""Every shipped YAML in configs/ parses with the parser of the recipe that reads it.

A key that no dataclass of the recipe knows would stop a user's run before it starts; this
catches it here instead. The accelerate launch configs are checked by accelerate's own loader
in tests/test_accelerate_configs.py.
"""

import dataclasses
import enum
import importlib
from pathlib import Path

import pytest
import yaml

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core.cli import UserError
from core.config import parse_args

ROOT = Path(__file__).resolve().parent.parent
# configs/<dir>/ -> the module whose ARGUMENT_TYPES parse it.
READERS = {
    "sft": "recipes.sft",
    "grpo": "recipes.grpo",
    "dpo": "recipes.dpo",
    "ppo": "recipes.ppo",
    "lm": "recipes.lm",
    "reward_model": "recipes.reward_model",
    "eval": "evaluate.gsm8k",
}
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*/*.yaml")
                 if p.parent.name != "accelerate")


def argument_types(module_name: str) -> list[type]:
    module = importlib.import_module(module_name)
    return module.argument_types() if hasattr(module, "argument_types") else module.ARGUMENT_TYPES


def test_every_config_directory_has_a_reader():
    dirs = {Path(c).parts[1] for c in CONFIGS}
    assert dirs <= set(READERS), f"configs without a known recipe: {sorted(dirs - set(READERS))}"


def as_written(key, value):
    """A parsed value in the YAML's terms: enums by their value, and the few values the parser is
    meant to change mapped back (each with the reason)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if key == "report_to" and isinstance(value, list) and len(value) <= 1:
        return value[0] if value else "none"  # transformers keeps a list; `none` is the empty one
    return value


# Keys whose parsed value may differ from the YAML on this machine, by design.
DECIDED_HERE = {
    "bf16", "fp16",  # core/precision.py decides them per device
    "device",        # `auto` resolves to the device this machine has
    "optim",         # Unsloth's CPU backend swaps 8-bit/paged optimizers (GPU-only) for adamw_torch_fused
}


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses_and_every_key_arrives(config):
    """Each key of the YAML reaches the recipe's dataclasses with the YAML's value: a key that
    parsed but landed nowhere, or was overwritten by a default, would fail here."""
    parsed = parse_args(argument_types(READERS[Path(config).parts[1]]), ["--config", str(ROOT / config)])
    written = yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))
    for key, value in written.items():
        owners = [p for p in parsed if key in {f.name for f in dataclasses.fields(p)}]
        assert owners, f"{config}: {key} reached no dataclass"
        if key in DECIDED_HERE:
            continue
        for owner in owners:
            assert as_written(key, getattr(owner, key)) == value, (config, key, type(owner).__name__)


def test_a_typo_in_a_shipped_config_would_be_caught(tmp_path):
    """The check above can fail: the same parse rejects a shipped config with one key misspelt."""
    source = (ROOT / "configs" / "grpo" / "tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(source.replace("learning_rate:", "learnig_rate:"))
    with pytest.raises(UserError, match="learnig_rate"):
        parse_args(argument_types("recipes.grpo"), ["--config", str(bad)])


@pytest.mark.parametrize("config", [c for c in CONFIGS if Path(c).name == "demo.yaml" and "/ppo/" not in c])
def test_demo_configs_name_the_embedded_model(config):
    """The name travels with the file: a copied and renamed demo config still runs on the embedded model."""
    import yaml

    assert yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))["model_name_or_path"] == "embedded"
