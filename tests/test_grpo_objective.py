"""One YAML, one objective: every shipped GRPO config states the keys that define the loss, and
TRL's GRPOConfig and Unsloth's GPU-path GRPOConfig hand the trainer the same values for it.

Unsloth's patched config class is built by its GPU code (`unsloth.models.rl`), which runs on a CPU
too; tests/grpo_objective_probe.py parses the configs with each class in its own process.
"""

import json
import os

import pytest
import yaml

import core.boot  # noqa: F401
from recipes.grpo import LOSS_KEYS, report_objective
from tests.conftest import ROOT, run_entry

CONFIGS = sorted((ROOT / "configs" / "grpo").glob("*.yaml"))


def test_every_shipped_grpo_config_states_its_objective():
    for path in CONFIGS:
        stated = set(yaml.safe_load(path.read_text()))
        missing = [k for k in LOSS_KEYS if k not in stated]
        assert not missing, f"{path.name} leaves {missing} to the backend's defaults"


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """GRPOConfig values per config, from TRL's class and from Unsloth's; plus a config that leaves
    the objective unstated, to show the comparison can fail."""
    tmp = tmp_path_factory.mktemp("objective")
    unstated = yaml.safe_load((ROOT / "configs/grpo/tiny.yaml").read_text())
    for key in LOSS_KEYS:
        if key != "loss_type":
            unstated.pop(key, None)
    (tmp / "unstated.yaml").write_text(yaml.safe_dump(unstated))
    paths = [str(p) for p in CONFIGS] + [str(tmp / "unstated.yaml")]
    env = {"UNSLOTH_COMPILE_LOCATION": str(tmp / "unsloth_cache"), "OMP_NUM_THREADS": "1"}
    proc = run_entry(["python", "tests/grpo_objective_probe.py", *paths], env=env, timeout=900)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("VALUES "))
    return json.loads(line[len("VALUES "):]), str(tmp / "unstated.yaml")


# Fields whose values differ between the two classes without changing what is optimised or
# sampled, each with the reason; any other difference fails the test.
EQUIVALENT = {
    # How activations are recomputed: Unsloth's GPU checkpointing runs reentrant, the CPU side's
    # non-reentrant value comes from Unsloth's CPU backend. Memory and speed, not the objective.
    "gradient_checkpointing_kwargs": {("{'use_reentrant': False}", "{'use_reentrant': True}")},
    # "No top-k" in HF generate's spelling (0) and vLLM's (-1), with use_vllm: the same sampling.
    "top_k": {("0", "-1")},
}


def test_both_backends_hand_the_trainer_the_same_values(probes):
    out, unstated = probes
    assert "unsloth_num_chunks" in out["unsloth"][unstated]  # the probe really used Unsloth's class
    for path in map(str, CONFIGS):
        trl, unsloth = out["trl"][path], out["unsloth"][path]
        assert {k: trl[k] for k in LOSS_KEYS} == {k: unsloth[k] for k in LOSS_KEYS}
        differ = {k: (trl[k], unsloth[k]) for k in trl
                  if trl[k] != unsloth[k] and (trl[k], unsloth[k]) not in EQUIVALENT.get(k, ())}
        assert not differ, f"{os.path.basename(path)}: TRL vs Unsloth {differ}"


def test_an_unstated_objective_is_what_unsloth_changes(probes):
    """The comparison above can fail: leave the keys out and Unsloth's class fills DAPO's
    clip-higher where TRL keeps the symmetric clip."""
    out, unstated = probes
    assert out["trl"][unstated]["epsilon_high"] == "None"
    assert out["unsloth"][unstated]["epsilon_high"] == "0.28"


def test_a_run_names_objective_values_its_config_did_not_state(capsys):
    from trl import GRPOConfig

    args = GRPOConfig(output_dir="unused", epsilon_high=0.28, mask_truncated_completions=True, use_cpu=True)
    objective = report_objective(args, explicit={"loss_type", "mask_truncated_completions"})
    out = capsys.readouterr().out
    assert objective["epsilon_high"] == 0.28 and "[grpo] objective: loss_type=dapo" in out
    named = next(x for x in out.splitlines() if x.startswith("[grpo] not in your config"))
    assert "epsilon_high=0.28 (TRL: None)" in named and "mask_truncated" not in named
