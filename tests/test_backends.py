"""`backend: hf` and `backend: unsloth` give every recipe the same run directory: the same files
(adapter or model, metrics.jsonl, config.yaml, run_info.json, checkpoints) and the same metric
names. Ten short runs through `make`, so the test is marked slow."""

import json

import pytest

from tests.conftest import run_entry

THREADS = {"OMP_NUM_THREADS": "1"}
# recipe -> extra arguments for a short run of its tiny config.
RECIPES = {
    "grpo": ["--max_steps", "2", "--eval_every_save", "false"],
    "dpo": ["--max_steps", "2", "--eval_held_out", "false"],
    "sft": ["--max_steps", "2"],
    "lm": ["--max_steps", "2"],
    # PPO straight from the tiny GPT-2 and the untrained tiny classifier (no lm/reward-model run first).
    "ppo": ["--model_name_or_path", "runs/tiny/gpt2", "--reward_model", "runs/tiny/classifier"],
}


def layout(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def metric_names(run_dir):
    names = set()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        names.update(json.loads(line))
    return names - {"time", "step_seconds"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_backends_write_the_same_run_directory(tmp_path, recipe):
    dirs = {}
    for backend in ("unsloth", "hf"):
        dirs[backend] = tmp_path / backend
        args = ["--output_dir", str(dirs[backend]), "--backend", backend, *RECIPES[recipe]]
        proc = run_entry(["make", recipe, f"CONFIG=configs/{recipe}/tiny.yaml", "ARGS=" + " ".join(args)],
                         env=THREADS)
        assert f"backend={backend}" in proc.stdout
    assert layout(dirs["hf"]) == layout(dirs["unsloth"])
    assert metric_names(dirs["hf"]) == metric_names(dirs["unsloth"])
    assert any(name in ("adapter", "model") for name in (p.name for p in dirs["hf"].iterdir()))
