"""recipes.dpo: `make dpo` end to end on the tiny model, resume, user errors, and a learning test."""

import json
import random
import re
import shutil

import pytest

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core.cli import UserError
from core.noise import noise_lines
from data.preference import FIXTURE
from recipes import dpo
from tests.conftest import ROOT, run_entry

TINY = "configs/dpo/tiny.yaml"
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def losses(path):
    return {row["step"]: row for row in read_jsonl(path) if "loss" in row and "train_runtime" not in row}


def test_make_dpo_tiny_with_sft_pass_writes_the_run_and_resumes_exactly(tmp_path):
    out, results = tmp_path / "run", tmp_path / "eval"
    proc = run_entry(["make", "dpo", f"CONFIG={TINY}",
                      f"ARGS=--output_dir {out} --results_dir {results} --sft_first_steps 2"], env=ENV)
    # The console: the SFT pass's 2 steps, then DPO's 4, one short line each (the dicts are in metrics.jsonl).
    steps = re.findall(r"^\[train\] step (\d)/(\d): loss [\d.]+, (token|reward) accuracy ", proc.stdout, re.M)
    assert steps == [("1", "2", "token"), ("2", "2", "token")] + [(str(i), "4", "reward") for i in (1, 2, 3, 4)]
    assert "{'" not in proc.stdout and not noise_lines(proc.stdout + proc.stderr)

    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert {"config.yaml", "run_info.json", "preference_generations.md"} <= {p.name for p in out.iterdir()}
    steps = losses(out / "metrics.jsonl")
    assert sorted(steps) == [1, 2, 3, 4]
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen"} <= set(steps[4])
    assert len(losses(out / "sft" / "metrics.jsonl")) == 2  # the SFT pass logs on its own

    # Held-out rows: the base, the SFT reference, and the DPO result scored against that reference.
    evaluated = json.loads((out / "preference_eval.json").read_text(encoding="utf-8"))
    assert evaluated["states"] == {"qwen2": "base", "run-sft": "reference", "run": "policy"}
    table = json.loads((results / "results.json").read_text(encoding="utf-8"))["preference"]
    assert list(table) == ["qwen2", "run-sft", "run"] and table["run"]["pairs"] == 12
    assert "reward_accuracy" in table["run"] and "reward_accuracy" not in table["run-sft"]
    assert table["run"]["dataset"] == f"{FIXTURE.relative_to(ROOT)} held-out (test_size 0.25, seed 0)"

    # `make eval-preference` of the same model on other held-out pairs, into the same table: the
    # recipe's rows stay, the new ones are added beside them.
    from evaluate import preference as pe

    pe.main(["--model_name_or_path", str(out / "adapter"), "--dataset_name", str(FIXTURE), "--test_size", "4",
             "--results_dir", str(results), "--generations", "0", "--system_prompt", "en"])
    table = json.loads((results / "results.json").read_text(encoding="utf-8"))["preference"]
    assert list(table) == ["qwen2", "run-sft", "run", "qwen2 (2)", "run (2)"]
    assert table["run"]["pairs"] == 12 and table["run (2)"]["pairs"] == 4

    # Resume from the step-2 checkpoint: steps 3-4 must repeat the uninterrupted run exactly. (TRL keeps
    # the SFT adapter as a second "ref" adapter; transformers 5.17 alone would restart the trained one.)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copytree(out / "sft", resumed / "sft")
    proc = run_entry(["python", "-m", "recipes.dpo", "--config", TINY, "--output_dir", str(resumed), "--resume",
                      "--sft_first_steps", "2", "--eval_held_out", "false"], env=ENV)
    assert "restored the trained adapter" in proc.stdout and "[sft]" not in proc.stdout
    again = losses(resumed / "metrics.jsonl")
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        assert again[step]["loss"] == pytest.approx(steps[step]["loss"], abs=1e-6)
        assert again[step]["rewards/margins"] == pytest.approx(steps[step]["rewards/margins"], abs=1e-6)


def toy_pairs(path, n=64, seed=0):
    """Chosen = rejected + " Cảm ơn bạn." : a preference the tiny model can learn from its context."""
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            source = rows[i % len(rows)]
            answer = " ".join(source["chosen"].split()[: rng.randint(3, 8)])
            fh.write(json.dumps({"id": f"toy-{i}", "question": source["question"][:60],
                                 "chosen": answer + " Cảm ơn bạn.", "rejected": answer}, ensure_ascii=False) + "\n")
    return str(path)


def test_dpo_learns_a_toy_preference_on_held_out_pairs(tiny_models, tmp_path):
    out = tmp_path / "toy"
    dpo.main(["--config", TINY, "--model_name_or_path", str(tiny_models / "qwen2"),
              "--dataset_name", toy_pairs(tmp_path / "toy.jsonl"), "--test_size", "16", "--output_dir", str(out),
              "--max_steps", "30", "--learning_rate", "5e-3", "--lr_scheduler_type", "constant",
              "--per_device_train_batch_size", "8", "--save_strategy", "no", "--eval_generations", "0",
              "--results_dir", str(tmp_path / "eval")])
    metrics = json.loads((out / "preference_eval.json").read_text(encoding="utf-8"))["metrics"]
    before, after = metrics["qwen2"], metrics["toy"]
    assert before["pairs"] == after["pairs"] == 16
    # Untrained, the extra words only cost log-probability; after DPO the held-out margin rose by
    # several nats and every held-out pair has a positive implicit reward margin.
    assert after["mean_margin"] > before["mean_margin"] + 5.0
    assert after["reward_accuracy"] >= 0.9 and after["reward_margin"] > 0.5
    assert before["preference_accuracy_per_token"] <= 0.25 and after["preference_accuracy_per_token"] >= 0.75


@pytest.mark.parametrize("argv,message", [
    (["--loss_type", "dpo"], "unknown loss_type ['dpo']; TRL 1.12 offers: sigmoid, hinge, ipo"),
    (["--sft_first_steps", "3", "--use_peft", "false"], "sft_first_steps needs use_peft: true"),
])
def test_user_errors_stop_before_loading_the_model(argv, message, tmp_path):
    with pytest.raises(UserError) as err:
        dpo.main(["--config", TINY, "--output_dir", str(tmp_path / "x")] + argv)
    assert message in str(err.value)
    assert not (tmp_path / "x").exists()


def test_every_trl_loss_type_is_accepted_by_dpo_config():
    from trl import DPOConfig

    for name in dpo.LOSS_TYPES:
        assert DPOConfig(output_dir="unused", loss_type=name).loss_type == [name]


def test_the_demo_config_names_its_model_so_a_renamed_copy_keeps_it(tmp_path):
    """The loader resolves `model_name_or_path: embedded`; make adds nothing and never runs core.embedded."""
    import yaml

    copy = tmp_path / "my-pairs.yaml"  # no "demo" in the name
    copy.write_text((ROOT / "configs" / "dpo" / "demo.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert yaml.safe_load(copy.read_text(encoding="utf-8"))["model_name_or_path"] == "embedded"
    for config in ("configs/dpo/demo.yaml", str(copy)):
        dry = run_entry(["make", "-n", "dpo", f"CONFIG={config}", "PY=/nonexistent/python"], env=ENV)
        assert f"recipes.dpo --config {config}" in dry.stdout and "--model_name_or_path" not in dry.stdout
        assert "nonexistent" not in dry.stderr


@pytest.mark.parametrize("name", ["qwen2.5-3b", "qwen2.5-1.5b", "demo", "tiny"])
def test_shipped_configs_parse_into_the_recipe_options(name):
    from trl import DPOConfig

    from core.config import ModelArguments, RunArguments, parse_args

    pargs, targs, margs, _ = parse_args([dpo.PreferenceArguments, DPOConfig, ModelArguments, RunArguments],
                                        ["--config", str(ROOT / "configs" / "dpo" / f"{name}.yaml")])
    dpo.check_loss(targs)
    assert margs.use_peft and targs.max_length <= margs.max_seq_length
    if name.startswith("qwen"):  # the published setting
        assert (margs.lora_r, targs.learning_rate, targs.max_length, margs.load_in_4bit) == (16, 3e-5, 512, True)
        assert targs.per_device_train_batch_size * targs.gradient_accumulation_steps == 24
        assert pargs.sft_first_steps > 0 and pargs.dataset_name == "thainq107/Vi-Alpaca-Preference"
