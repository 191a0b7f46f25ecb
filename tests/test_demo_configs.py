"""Every configs/*/demo.yaml runs as shipped on the real embedded SmolLM2-135M-Instruct (slow).

Each test runs the command a user runs (`make <target> CONFIG=configs/<recipe>/demo.yaml
ARGS=...`) and overrides only the run length, the evaluation sizes and where the run reads and
writes; every other setting is the shipped one - max_length, max_seq_length and the data above
all, so the length budget each run meets at start is the one a user meets. The recipes print that
budget as `[length] ...` lines; a row that does not fit would stop the run (exit 2) or, with
--on_long_rows drop/cut, say so, and the tests check that neither happened.

The demo data of configs/{sft,grpo,eval}/demo.yaml (runs/demo/data/*.jsonl) is what `make demo`
writes first: data.synthetic with the demo's settings (recipes/demo.py DATA_DEFAULTS).
Measured wall times (2 shared cores, OMP_NUM_THREADS=1) are in each test's docstring.
"""

import json
import shlex

import pytest

from tests.conftest import run_entry

pytestmark = pytest.mark.slow

ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def make(target: str, config: str, args: str):
    """`make -s <target> CONFIG=<config> ARGS=<args>`, offline; returns the finished process."""
    return run_entry(["make", "-s", target, f"CONFIG={config}", f"ARGS={args}"], env=ENV, timeout=1200)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def budget_lines(stdout: str) -> list[str]:
    """The length budget's report; a dropped or cut row would add a line saying so."""
    lines = [line for line in stdout.splitlines() if line.startswith("[length]")]
    assert lines and not [line for line in lines if "dropped" in line or "cut there" in line], lines
    return lines


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """train/test/dev.jsonl as `make demo` writes them (runs/demo/data)."""
    from recipes.demo import DATA_DEFAULTS

    out = tmp_path_factory.mktemp("demo") / "data"
    run_entry(["python", "-m", "data.synthetic", "--n_train", str(DATA_DEFAULTS["n_train"]),
               "--n_test", str(DATA_DEFAULTS["n_test"]), "--n_dev", str(DATA_DEFAULTS["n_dev"]),
               "--seed", str(DATA_DEFAULTS["seed"]), "--out", str(out), *shlex.split(DATA_DEFAULTS["data_args"])])
    return out


def test_dpo_demo(tmp_path):
    """configs/dpo/demo.yaml, 2 of its 24 steps; 4 of the 12 held-out pairs scored, 1 generation."""
    out, results = tmp_path / "dpo-demo", tmp_path / "eval"
    proc = make("dpo", "configs/dpo/demo.yaml",
                f"--output_dir {out} --results_dir {results} --max_steps 2 --eval_max_pairs 4 "
                "--eval_generations 1 --eval_max_new_tokens 16")
    assert budget_lines(proc.stdout) == [
        "[length] training pairs (prompt + longer answer): median 215, p90 252, p99 270, longest 270 (row 30) "
        "tokens; budget 320",
        "[length] held-out pairs (prompt + longer answer): median 178, p90 257, p99 264, longest 264 (row 11) "
        "tokens; budget 320",
    ]
    assert "36 pairs, reference: the base model (adapter off)" in proc.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    final = read_jsonl(out / "metrics.jsonl")[-1]
    assert final["step"] == 2 and final["train_loss"] > 0
    evaluated = json.loads((out / "preference_eval.json").read_text(encoding="utf-8"))
    assert evaluated["states"] == {"embedded": "base", "dpo-demo": "policy"}
    after = evaluated["metrics"]["dpo-demo"]
    assert after["pairs"] == evaluated["metrics"]["embedded"]["pairs"] == 4
    assert {"reward_accuracy", "reward_margin", "preference_accuracy"} <= set(after)
    assert "dpo-demo" in json.loads((results / "results.json").read_text(encoding="utf-8"))["preference"]


def test_lm_demo_then_ppo_demo_on_its_output(tmp_path, tiny_models):
    """configs/lm/demo.yaml for 2 steps (the first has learning rate 0: warmup), the tiny reward
    model (configs/reward_model/tiny.yaml, 1 epoch), then configs/ppo/demo.yaml - the LoRA policy -
    for 1 update of 8 episodes on that LM."""
    lm, classifier, ppo = tmp_path / "lm", tmp_path / "reward_model", tmp_path / "ppo"
    proc = make("lm", "configs/lm/demo.yaml", f"--output_dir {lm} --max_steps 2")
    assert budget_lines(proc.stdout) == [
        "[length] training sentences: median 46, p90 60, p99 75, longest 75 (row 18) tokens; "
        "budget 80 = up to 79 + 1 reserved",
        "[length] held-out sentences: median 44, p90 58, p99 62, longest 62 (row 1) tokens; "
        "budget 80 = up to 79 + 1 reserved",
    ]
    metrics = json.loads((lm / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["n_train"], metrics["n_eval"], metrics["policy"]) == (144, 36, str(lm / "model"))
    assert metrics["eval_loss"] < metrics["eval_loss_before"]  # one full-finetune step at lr > 0
    assert (lm / "model" / "model.safetensors").is_file()

    # configs/reward_model/tiny.yaml's classifier is runs/tiny/classifier: the same tiny model here.
    run_entry(["python", "-m", "recipes.reward_model", "--config", "configs/reward_model/tiny.yaml",
               "--model_name_or_path", str(tiny_models / "classifier"), "--output_dir", str(classifier),
               "--num_train_epochs", "1"], env=ENV)
    assert (classifier / "model" / "text_preprocessing.json").is_file()

    proc = make("ppo", "configs/ppo/demo.yaml", f"--model_name_or_path {lm / 'model'} "
                f"--reward_model {classifier / 'model'} --output_dir {ppo} --total_episodes 8")
    assert "reference: the policy with its LoRA adapter disabled" in proc.stdout
    summary = json.loads((ppo / "metrics.json").read_text(encoding="utf-8"))
    assert (summary["updates"], summary["episodes"], summary["reward_label"]) == (1, 8, "negative")
    assert summary["policy"] == str(ppo / "adapter")
    assert (ppo / "adapter" / "adapter_model.safetensors").is_file() and not (ppo / "model").exists()
    steps = [row for row in read_jsonl(ppo / "metrics.jsonl") if "objective/scores" in row]
    assert len(steps) == 1 and abs(steps[0]["objective/kl"]) < 1e-4  # before any update: policy = reference
    samples = read_jsonl(ppo / "samples.jsonl")
    assert len(samples) == 6 and {row["step"] for row in samples} == {1}  # sample_prompts: 6

    # The logged rewards are the classifier's scores of prompt + response (reward_text: full).
    from rewards.sentiment import SentimentScorer

    scorer = SentimentScorer(str(classifier / "model"), device="cpu")
    assert [row["reward"] for row in samples] == pytest.approx(
        scorer([row["prompt"] + row["response"] for row in samples]), abs=1e-4)


def test_sft_demo(tmp_path, demo_data):
    """configs/sft/demo.yaml, 2 of its 30 steps, on the demo's training problems; merged model saved."""
    out = tmp_path / "sft"
    proc = make("sft", "configs/sft/demo.yaml", f"--dataset_name {demo_data / 'train.jsonl'} "
                f"--target_dataset_name {demo_data / 'dev.jsonl'} --output_dir {out} --max_steps 2")
    lines = budget_lines(proc.stdout)
    assert len(lines) == 1 and lines[0].startswith("[length] SFT rows (prompt + answer): ")
    assert lines[0].endswith("tokens; budget 256")
    steps = [row for row in read_jsonl(out / "metrics.jsonl") if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "config.json").is_file()  # save_merged: GRPO's starting model in `make demo`


def test_grpo_demo(tmp_path, demo_data):
    """configs/grpo/demo.yaml on the untrained embedded model (as `make grpo` runs it), 1 step of 2
    problems x 8 samples, the held-out evaluation at a step-1 checkpoint on 4 problems."""
    out = tmp_path / "grpo"
    proc = make("grpo", "configs/grpo/demo.yaml", f"--dataset_name {demo_data / 'train.jsonl'} "
                f"--eval_dataset_name {demo_data / 'test.jsonl'} --output_dir {out} --max_steps 1 "
                "--save_steps 1 --eval_limit 4")
    lines = budget_lines(proc.stdout)
    assert [line.split(":")[0] for line in lines] == ["[length] GRPO prompts", "[length] held-out prompts"]
    assert all(line.endswith("budget 512 = up to 480 + 32 reserved") for line in lines)
    steps = [row for row in read_jsonl(out / "metrics.jsonl") if "reward" in row]
    assert [row["step"] for row in steps] == [1]
    assert "rewards/correctness/mean" in steps[0] and any(k.startswith("rewards/format") for k in steps[0])
    evals = read_jsonl(out / "train_eval.jsonl")
    assert len(evals) == 1 and evals[0]["step"] == 1
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_eval_demo(tmp_path, demo_data):
    """configs/eval/demo.yaml on the untrained embedded model, 8 of the demo's test problems."""
    results = tmp_path / "eval"
    make("eval", "configs/eval/demo.yaml", f"--dataset_name {demo_data / 'test.jsonl'} --run_name base "
         f"--results_dir {results} --limit 8")
    metrics = json.loads((results / "base" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["run_name"] == "base" and metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1
    assert len(read_jsonl(results / "base" / "predictions.jsonl")) == 8
    assert "base" in (results / "comparison.md").read_text(encoding="utf-8")
