"""recipes/sft.py end to end through `make sft` on the tiny model: outputs, refusal, resume."""

import json
import re

import pytest

from core.noise import noise_lines
from tests.conftest import ROOT, run_entry

THREADS = {"OMP_NUM_THREADS": "1"}


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def make_sft(args, check=True):
    return run_entry(["make", "sft", "CONFIG=configs/sft/tiny.yaml", "ARGS=" + " ".join(args)],
                     env=THREADS, check=check)


def test_sft_trains_refuses_a_used_dir_and_resumes(tmp_path):
    run_dir = tmp_path / "sft"
    first = make_sft(["--output_dir", str(run_dir), "--max_steps", "2", "--save_steps", "1"])
    # One short console line per step (SFT: the loss and the token accuracy), no dict, no known noise.
    console = first.stdout + first.stderr
    lines = re.findall(r"^\[train\] step (\d)/2: loss [\d.]+, token accuracy [\d.]+, [\d.]+ s/step$", first.stdout, re.M)
    assert lines == ["1", "2"] and "{'" not in console and not noise_lines(console), first.stdout[-3000:]

    # Completion-only loss: the answers carry the loss, the prompts do not.
    share_line = next(line for line in first.stdout.splitlines() if line.startswith("[data] loss on"))
    share = int(share_line.split("loss on ")[1].split("%")[0])
    assert 20 <= share <= 90, share_line

    adapter = run_dir / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (adapter / name).is_file(), name
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    for name in ("config.yaml", "run_info.json", "checkpoint-1", "checkpoint-2"):
        assert (run_dir / name).exists(), name
    rows = [r for r in metrics_rows(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in rows)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["recipe"] == "sft" and info["train_rows"] == 60

    # The same command again must not touch the finished run. (--backend hf: the refusal comes
    # before any model work, so skip Unsloth's import time.)
    adapter_bytes = (adapter / "adapter_model.safetensors").read_bytes()
    again = make_sft(["--output_dir", str(run_dir), "--backend", "hf"], check=False)
    assert again.returncode == 2 and "recipes.sft" in again.stdout
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "already holds a run" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in again.stderr
    assert (adapter / "adapter_model.safetensors").read_bytes() == adapter_bytes

    # Resume continues the global step from checkpoint-2 instead of starting over.
    resumed = make_sft(["--output_dir", str(run_dir), "--max_steps", "4", "--save_steps", "1", "--resume"])
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    rows = [r for r in metrics_rows(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (adapter / "adapter_model.safetensors").read_bytes() != adapter_bytes


def test_sft_configs_parse_and_hold_the_published_settings():
    import yaml

    import recipes.sft as sft
    from core.config import ModelArguments, RunArguments, parse_args

    path = ROOT / "configs/sft/qwen2.5-3b.yaml"
    # What a GPU user gets (on this CPU machine Unsloth swaps the 8-bit optimizer, so read the YAML).
    config = yaml.safe_load(path.read_text())
    published = {"model_name_or_path": "unsloth/Qwen2.5-3B-Instruct", "load_in_4bit": True, "lora_r": 32,
                 "lora_alpha": 32, "use_rslora": True, "learning_rate": 1e-4, "per_device_train_batch_size": 6,
                 "gradient_accumulation_steps": 2, "num_train_epochs": 2, "lr_scheduler_type": "cosine",
                 "warmup_steps": 10, "optim": "paged_adamw_8bit", "max_length": 1536}
    assert {k: config.get(k) for k in published} == published
    for name in ("qwen2.5-3b.yaml", "tiny.yaml"):  # every key is known and every value valid
        script, train, model, _ = parse_args(
            [sft.SFTScriptArguments, sft.SFTConfig, ModelArguments, RunArguments],
            ["--config", str(ROOT / "configs/sft" / name)],  # precision: decided per device
        )
        assert model.max_seq_length >= train.max_length
    assert script.dataset_name.endswith("vi_gsm8k_sample.jsonl") and model.model_name_or_path == "runs/tiny/qwen2"


@pytest.mark.parametrize("flag, value", [("target_value", "0.9"), ("target_patience", "3")])
def test_a_target_without_dev_problems_is_one_line(tmp_path, flag, value):
    proc = make_sft(["--output_dir", str(tmp_path / "sft"), "--backend", "hf", f"--{flag}", value], check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and f"{flag} needs target_dataset_name" in errors[0]
    assert "Traceback" not in proc.stderr
