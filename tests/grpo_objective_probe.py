"""Print, as JSON, the GRPOConfig values each given GRPO config hands the trainer, first through
TRL's GRPOConfig (the CPU path), then through Unsloth's GPU-path GRPOConfig.

    python tests/grpo_objective_probe.py configs/grpo/*.yaml

Importing `unsloth.models.rl` builds Unsloth's patched trainer and config classes (its GPU code
path) and installs them as `trl.GRPOConfig`, even on a CPU machine; the second set of values is
what that class's __init__ makes of the same parsed options. Used by tests/test_grpo_objective.py.
"""

import dataclasses
import json
import sys

import core.boot  # noqa: F401  (Unsloth's CPU backend, as in every entry point)

# isort: split
import trl

from core.config import ModelArguments, RunArguments, parse_args
from recipes.grpo import GRPOScriptArguments


def values_with(config_class) -> dict:
    values = {}
    for path in sys.argv[1:]:
        _, targs, _, _ = parse_args([GRPOScriptArguments, config_class, ModelArguments, RunArguments],
                                    ["--config", path, "--output_dir", "probe-out"])
        values[path] = {f.name: repr(getattr(targs, f.name)) for f in dataclasses.fields(targs) if f.init}
    return values


plain = trl.GRPOConfig
result = {"trl": values_with(plain)}
import unsloth.models.rl  # noqa: E402,F401  (patches trl.GRPOConfig with Unsloth's class)

assert trl.GRPOConfig is not plain, "importing unsloth.models.rl did not install Unsloth's GRPOConfig"
result["unsloth"] = values_with(trl.GRPOConfig)
print("VALUES " + json.dumps(result))
