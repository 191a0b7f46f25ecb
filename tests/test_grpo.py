"""recipes/grpo.py through `make grpo` on the tiny model: outputs and metrics, refusal, resume,
user errors, the shipped configs, and a learning test."""

import json
import re
from pathlib import Path

import pytest

from core.noise import noise_lines
from tests.conftest import ROOT, run_entry

THREADS = {"OMP_NUM_THREADS": "1"}
REWARD_KEYS = ["rewards/correctness/mean", "rewards/format_soft/mean", "rewards/tag_count/mean",
               "rewards/length_penalty_40/mean"]


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_rows(run_dir):
    return [r for r in metrics_rows(run_dir) if "reward" in r]


def make_grpo(args, check=True):
    return run_entry(["make", "grpo", "CONFIG=configs/grpo/tiny.yaml", "ARGS=" + " ".join(args)],
                     env=THREADS, check=check)


def test_grpo_trains_logs_rewards_refuses_a_used_dir_and_resumes(tmp_path):
    run_dir = tmp_path / "grpo"
    # beta > 0 here so the KL term is exercised and logged (the tiny config has beta 0).
    common = ["--output_dir", str(run_dir), "--save_steps", "1", "--beta", "0.04"]
    first = make_grpo(common + ["--max_steps", "2"])
    assert "[rewards] correctness x 1, format_soft x 0.2, tag_count x 0.1, length_penalty_40 x 0.5" in first.stdout
    # The console: no known third-party noise, and one short line per logged step instead of the
    # metrics dict (which goes, whole, to metrics.jsonl: checked below).
    console = first.stdout + first.stderr
    assert not noise_lines(console), noise_lines(console)
    steps = re.findall(r"\[train\] step (\d+)/2: reward -?[\d.e+-]+, [\d.]+ s/step$", first.stdout, re.M)
    assert steps == ["1", "2"], first.stdout[-3000:]
    assert re.findall(r"\[eval\] step (\d): accuracy ", first.stdout) == ["1", "2"]
    assert "'loss'" not in console and "{'" not in console
    assert f"every metric is in {run_dir / 'metrics.jsonl'}" in first.stdout

    adapter = run_dir / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (adapter / name).is_file(), name
    for name in ("config.yaml", "run_info.json", "checkpoint-1", "checkpoint-2"):
        assert (run_dir / name).exists(), name
    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in REWARD_KEYS + ["reward", "reward_std", "kl", "completions/mean_length", "frac_reward_zero_std",
                                  "entropy", "grad_norm", "learning_rate", "time/generation", "step_seconds"]:
            assert isinstance(row[key], float), key
        assert 0 < row["completions/mean_length"] <= 24  # max_completion_length of the tiny config
    # The length penalty varies between completions of a random model: real gradients flowed.
    assert any(r["grad_norm"] > 0 for r in rows)
    # Training-time eval (eval_every_save in the tiny config) at each checkpoint.
    evals = [r for r in metrics_rows(run_dir) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert len((run_dir / "train_eval.jsonl").read_text().splitlines()) == 2
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["reward_names"] == ["correctness", "format_soft", "tag_count", "length_penalty_40"]
    assert info["generation"] == "HF generate"
    # The G samples of a prompt share one pass over it (recipes/grpo_prefix.py), checked on first use.
    assert "[grpo] shared prompt: loss and generation encode each prompt once per group of 4" in first.stdout
    sharing = info["shared_prefix"]
    assert sharing["loss"] and sharing["generation"] and sharing["first_use_max_abs_logprob_diff"] < 1e-4

    adapter_bytes = (adapter / "adapter_model.safetensors").read_bytes()
    again = make_grpo(["--output_dir", str(run_dir), "--backend", "hf"], check=False)
    assert again.returncode == 2
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "already holds a run" in errors[0] and "Traceback" not in again.stderr
    assert (adapter / "adapter_model.safetensors").read_bytes() == adapter_bytes

    resumed = make_grpo(common + ["--max_steps", "4", "--resume"])
    assert "checkpoint-2" in resumed.stdout
    assert [r["step"] for r in train_rows(run_dir)] == [1, 2, 3, 4]
    state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (adapter / "adapter_model.safetensors").read_bytes() != adapter_bytes


def test_grpo_learns_a_toy_reward(tmp_path):
    """The policy moves toward what the reward pays for: here the share of digits in the text.

    Full finetuning, because the tiny random model's logits are capped: its tied embeddings are
    ~0.02 in scale behind a final RMSNorm, so LoRA on the projections alone cannot move the
    output distribution measurably in a few steps (measured: entropy stayed at ln(vocab) even at
    lr 0.1), while updating the embeddings can.
    """
    run_dir = tmp_path / "learn"
    make_grpo(["--output_dir", str(run_dir), "--reward_funcs", "tests.grpo_toy_rewards:digit_share",
               "--reward_weights", "1.0", "--use_peft", "false", "--learning_rate", "0.01", "--max_steps", "30",
               "--save_strategy", "no", "--eval_every_save", "false", "--seed", "0"])
    rows = train_rows(run_dir)
    assert len(rows) == 30
    rewards = [r["rewards/digit_share/mean"] for r in rows]
    start, end = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    # Measured: ~0.03 at the start, ~0.7 at the end. A sign error in the advantage would push
    # digits out instead.
    assert end > start + 0.2 and end > 3 * start, rewards
    assert all("kl" not in r for r in rows)  # beta 0: no KL term, nothing logged for it
    assert (run_dir / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reward_funcs", "correctnes", "format"], "unknown reward 'correctnes'; known rewards: ["),
        (["--reward_funcs", "correctness", "--reward_weights", "1.0", "0.2"], "reward_weights has 2 values for 1"),
        (["--use_vllm", "true"], "use_vllm needs a CUDA GPU"),
    ],
)
def test_user_mistakes_fail_before_any_work(tmp_path, args, message, no_gpu):
    """In-process (the command-line wrapper that turns UserError into one line and exit code 2 is
    exercised by the refusal above); nothing may be created before the mistake is reported. `no_gpu`:
    the use_vllm refusal is the CPU path's, so a GPU machine hides its GPU here."""
    import recipes.grpo as grpo
    from core.cli import UserError

    run_dir = tmp_path / "never"
    with pytest.raises(UserError) as err:
        grpo.main(["--config", str(ROOT / "configs/grpo/tiny.yaml"), "--output_dir", str(run_dir)] + args)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not run_dir.exists()


SINGLE_GPU_CONFIGS = ["qwen2.5-3b.yaml", "qwen2.5-1.5b.yaml", "qwen2.5-0.5b.yaml"]
GRPO_CONFIGS = sorted(p.name for p in (ROOT / "configs" / "grpo").glob("*.yaml"))


@pytest.mark.parametrize("name", GRPO_CONFIGS)
def test_shipped_grpo_configs_are_consistent(name):
    import yaml

    import recipes.grpo as grpo
    from core.config import ModelArguments, RunArguments, parse_args
    from rewards import get_reward_funcs

    script, train, model, _ = parse_args(
        [grpo.GRPOScriptArguments, grpo.GRPOConfig, ModelArguments, RunArguments],
        ["--config", str(ROOT / "configs" / "grpo" / name)],  # precision: decided per device
    )
    funcs = get_reward_funcs(script.reward_funcs)
    assert train.reward_weights is not None and len(train.reward_weights) == len(funcs)
    assert train.generation_batch_size % train.num_generations == 0
    # Room for the prompt: ~510 tokens for vi_gsm8k's longest in Qwen2.5's tokens (configs' comments).
    room = {"tiny.yaml": 128, "demo.yaml": 128}.get(name, 512)
    assert model.max_seq_length >= train.max_completion_length + room
    assert Path(train.output_dir).parts[0] == "runs"
    if name in SINGLE_GPU_CONFIGS:  # the one-GPU reference settings (STACK.md)
        assert model.load_in_4bit or "0.5b" in name
        assert model.fast_inference and not train.use_vllm  # Unsloth's vLLM; the recipe sets use_vllm
        assert train.max_grad_norm == 0.1 and train.num_generations == 8
        # (read from the YAML: on this CPU machine Unsloth swaps the 8-bit optimizer for a torch one)
        assert yaml.safe_load((ROOT / "configs" / "grpo" / name).read_text())["optim"] == "adamw_8bit"
        assert train.beta == 0.0 and train.save_steps <= 100 and script.eval_every_save
