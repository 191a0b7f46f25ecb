"""PPO sentiment steering: the make chain end to end on tiny models, and two learning tests.

The chain (`make lm` -> `make ppo` -> `make eval-sentiment`) runs the entry points a user runs.
One learning test builds TRL's PPOTrainer the way recipes/ppo.py does (full fine-tune, separate
reference) around a toy text reward behind the same `TextRewardAdapter`; the other runs
`python -m recipes.ppo` with configs/ppo/demo.yaml's LoRA policy (reference = the adapter switched
off) against a hand-set classifier. Both check that sampling from the trained policy earns more.
"""

import json
import re

import pytest
import torch
from conftest import recorded, run_entry

from core.noise import noise_lines
from data.students_feedback import FIXTURE, load_prompts

ENV = {"OMP_NUM_THREADS": "1"}


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_make_lm_ppo_eval_chain_tiny(tmp_path, tiny_models):
    lm, ppo, results = tmp_path / "lm", tmp_path / "ppo", tmp_path / "eval"
    run_entry(["make", "-s", "lm", "CONFIG=configs/lm/tiny.yaml", f"ARGS=--output_dir {lm} --num_train_epochs 1"],
              env=ENV)
    lm_metrics = json.loads((lm / "metrics.json").read_text())
    assert lm_metrics["policy"] == str(lm / "model")
    assert lm_metrics["eval_loss"] < lm_metrics["eval_loss_before"]

    # The reward model is the tiny (untrained) classifier: its own tokenizer, no segmentation file.
    classifier = tiny_models / "classifier"
    ppo_args = f"--model_name_or_path {lm / 'model'} --reward_model {classifier} --output_dir {ppo}"
    proc = run_entry(["make", "-s", "ppo", "CONFIG=configs/ppo/tiny.yaml", f"ARGS={ppo_args} --total_episodes 16"],
                     env={**ENV, "TRL_EXPERIMENTAL_SILENCE": ""})
    # One line per update on the console, no metrics dict, no known third-party noise (core/noise.py).
    assert re.findall(r"^\[train\] step (\d)/2: score ", proc.stdout, re.M) == ["1", "2"], proc.stdout[-3000:]
    assert "{'" not in proc.stdout and not noise_lines(proc.stdout + proc.stderr)
    summary = json.loads((ppo / "metrics.json").read_text())
    assert summary["updates"] == 2 and summary["episodes"] == 16
    assert (ppo / "model" / "model.safetensors").is_file()
    steps = [row for row in _jsonl(ppo / "metrics.jsonl") if "objective/scores" in row]
    assert len(steps) == 2 and all("objective/kl" in row for row in steps)
    for row in steps:  # where each update's time went (core/timing.py)
        # Each phase is recorded and sits inside the one that contains it (4-decimal rounding aside).
        assert all(recorded(row[key]) for key in ("time/generation", "time/reward", "time/rollout",
                                                  "time/optimizer", "time/update", "time/step"))
        assert row["time/generation"] + row["time/reward"] <= row["time/rollout"] + 2e-4
        assert row["time/optimizer"] <= row["time/update"] + 1e-4
        assert row["time/rollout"] + row["time/update"] == pytest.approx(row["time/step"], abs=2e-3)

    # Logged sample rewards are the classifier's scores of prompt + response (reward_text: full).
    samples = _jsonl(ppo / "samples.jsonl")
    assert {row["step"] for row in samples} == {1, 2} and len(samples) == 8
    from rewards.sentiment import SentimentScorer

    scorer = SentimentScorer(str(classifier), device="cpu")
    expected = scorer([row["prompt"] + row["response"] for row in samples])
    assert [row["reward"] for row in samples] == pytest.approx(expected, abs=1e-4)

    eval_args = (f"{ppo_args} --num_prompts 3 --samples_per_prompt 2 --results_dir {results} "
                 f"--eval_output_dir {results / 'sentiment'}")
    run_entry(["make", "-s", "eval-sentiment", "CONFIG=configs/ppo/tiny.yaml", f"ARGS={eval_args}"], env=ENV)
    sentiment_rows = json.loads((results / "results.json").read_text())["sentiment"]
    assert set(sentiment_rows) == {"ppo-before", "ppo-after"}
    for name, metrics in sentiment_rows.items():
        assert metrics["n_samples"] == 6
        assert abs(metrics["negative_share"] + metrics["neutral_share"] + metrics["positive_share"] - 1) < 1e-9
        assert 0 <= metrics["distinct_2"] <= 1 and metrics["perplexity"] > 1
        rows = _jsonl(results / "sentiment" / name / "predictions.jsonl")
        assert len(rows) == 6 and rows[0]["reward"] == pytest.approx(scorer([rows[0]["scored_text"]])[0], abs=1e-4)
    assert sentiment_rows["ppo-after"]["model"] == str(ppo / "model")
    assert "## sentiment" in (results / "comparison.md").read_text()


def letter_a_share(texts):
    """Toy reward: 10 x the share of characters that are "a" (dense, varied: PPO can climb it)."""
    return [10 * sum(ch == "a" for ch in t) / max(1, len(t)) for t in texts]


def test_ppo_raises_a_toy_text_reward(tiny_models, tmp_path):
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from evaluate.sentiment import sample_responses
    from rewards.sentiment import TextRewardAdapter

    torch.manual_seed(0)
    path = tiny_models / "gpt2"
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(path)
    prompts = list(load_prompts(str(FIXTURE), "all")["prompt"])
    ids = tokenizer(prompts)["input_ids"]
    width = max(map(len, ids))

    def mean_reward(model):
        groups = sample_responses(model, tokenizer, prompts[:32], 4, 8, 1.0, None, 32, seed=0)
        return sum(sum(letter_a_share(g)) for g in groups) / 128

    before = mean_reward(policy)
    args = PPOConfig(
        output_dir=str(tmp_path / "ppo"), total_episodes=192, response_length=8, temperature=1.0, kl_coef=0.01,
        learning_rate=1e-2, per_device_train_batch_size=16, num_ppo_epochs=4, num_mini_batches=1,
        num_sample_generations=0, bf16=False, gradient_checkpointing=False, report_to=[], seed=0,
        save_strategy="no", disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=AutoModelForCausalLM.from_pretrained(path),
        reward_model=TextRewardAdapter(letter_a_share, tokenizer, text="response", context_length=width),
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        value_model=AutoModelForSequenceClassification.from_pretrained(path, num_labels=1),
        data_collator=DataCollatorWithPadding(tokenizer, padding="max_length", max_length=width),
    )
    trainer.train()
    after = mean_reward(policy)
    # Measured: about 0.22 before and 1.3 after 12 updates; a broken reward path stays near 0.22.
    assert after > 2 * before, (before, after)


def letter_classifier(out, tokenizer_dir, letter: str = "a", scale: float = 10.0):
    """A sequence classifier, set by hand, whose "negative" logit is `scale` x the mean count of
    `letter` per token of the text: a reward with variance that a policy can learn to raise.

    A one-layer GPT-2 (it reads the last real token, as TRL's reward models do): each token's
    embedding is (count, -count, 0, 0); query and key weights are 0, so attention averages the
    values over the whole text, and the value path copies the count into dimensions 2-3; a layer
    norm epsilon of 1e6 with weight 1e3 makes every layer norm x - mean(x), linear here because
    the pairs (c, -c) have mean 0; the MLP is zero; the head reads dimension 2.
    """
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from rewards.sentiment import save_preprocessing

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eps = 1e6
    labels = ["negative", "neutral", "positive"]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=4, n_layer=1, n_head=1, n_inner=4,
                        layer_norm_epsilon=eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        pad_token_id=tokenizer.pad_token_id, num_labels=3, id2label=dict(enumerate(labels)),
                        label2id={name: i for i, name in enumerate(labels)})
    model = GPT2ForSequenceClassification(config)
    counts = torch.tensor([tokenizer.decode([i]).count(letter) for i in range(len(tokenizer))], dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.transformer.wte.weight[:, 0] = counts
        model.transformer.wte.weight[:, 1] = -counts
        block = model.transformer.h[0]
        for norm in (block.ln_1, block.ln_2, model.transformer.ln_f):
            norm.weight.fill_(eps ** 0.5)
        block.attn.c_attn.weight[0, 2 * 4 + 2] = 1.0  # c_attn maps x to [query | key | value]
        block.attn.c_attn.weight[1, 2 * 4 + 3] = 1.0
        block.attn.c_proj.weight.copy_(torch.eye(4))
        model.score.weight[0, 2] = scale
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_preprocessing(out, word_segmentation=False, max_length=256)
    return tokenizer


def test_ppo_with_the_demo_lora_policy_raises_a_classifier_reward(tiny_models, tmp_path):
    """configs/ppo/demo.yaml's path - a LoRA policy whose reference is the adapter switched off,
    scored by a classifier through the cross-tokenizer adapter - on the tiny Qwen2 (the demo's
    SmolLM2 is a Llama, the same layer names). Overridden for a toy problem: the reward model, a
    larger constant step, 16 episodes x 4 PPO epochs per update, 8-token responses, and LoRA also
    on lm_head: the random tiny model's output layer barely responds to its hidden states (logits
    within about +-1 of uniform), so LoRA on the projections alone did not move its samples in 16
    updates at lr 1e-2 or 3e-2 (measured: sample reward 0.39 -> 0.29, 0.20 -> 0.14)."""
    from rewards.sentiment import SentimentScorer

    classifier = tmp_path / "letter-a"
    tokenizer = letter_classifier(classifier, tiny_models / "tokenizer")
    scorer = SentimentScorer(str(classifier), label="negative", score="logit", device="cpu")
    texts = ["aaaa aaaa", "thầy dạy hay lắm", "xyz b c"]
    expected = [10 * sum(tokenizer.decode([i]).count("a") for i in ids) / len(ids)
                for ids in tokenizer(texts)["input_ids"]]
    assert scorer(texts) == pytest.approx(expected, abs=1e-3) and expected[0] > expected[1] > expected[2] == 0

    out = tmp_path / "ppo"
    proc = run_entry(["python", "-m", "recipes.ppo", "--config", "configs/ppo/demo.yaml",
                      "--model_name_or_path", str(tiny_models / "qwen2"), "--reward_model", str(classifier),
                      "--output_dir", str(out), "--total_episodes", "192", "--per_device_train_batch_size", "16",
                      "--gradient_accumulation_steps", "1", "--num_ppo_epochs", "4", "--response_length", "8",
                      "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--kl_coef", "0.01",
                      "--sample_every", "4", "--sample_prompts", "16", "--lora_target_modules", "q_proj", "k_proj",
                      "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"], env=ENV)
    assert "reference: the policy with its LoRA adapter disabled" in proc.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "model").exists()

    steps = [row for row in _jsonl(out / "metrics.jsonl") if "objective/scores" in row]
    assert len(steps) == 12
    # The first rollout comes before any update: policy and reference (adapter off) agree exactly.
    # Afterwards they part: a reference that followed the adapter would keep the KL at 0.
    assert abs(steps[0]["objective/kl"]) < 1e-4 and steps[-1]["objective/kl"] > 1.0
    summary = json.loads((out / "metrics.json").read_text())
    # Measured: sampled reward on 16 held-out prompts 0.30 -> 2.96, PPO's scores (3 updates' mean)
    # 0.35 -> 1.90; with a broken reward path or a frozen adapter they stay within noise of the start.
    assert summary["sample_reward_last"] > 3 * summary["sample_reward_first"], summary
    early = sum(row["objective/scores"] for row in steps[:3]) / 3
    late = sum(row["objective/scores"] for row in steps[-3:]) / 3
    assert late > 2 * early, (early, late)


@pytest.mark.parametrize(
    "texts, n, expected",
    [
        (["rất hay rất hay"], 1, 2 / 4),
        (["rất hay rất hay"], 2, 2 / 3),      # "rất hay", "hay rất", "rất hay"
        (["rất hay", "rất hay"], 2, 1 / 2),   # the same response twice: half the bigrams repeat
        (["một"], 2, 0.0),                    # no bigram at all
        ([], 1, 0.0),
    ],
)
def test_distinct_n(texts, n, expected):
    from evaluate.sentiment import distinct_n

    assert distinct_n(texts, n) == pytest.approx(expected)


def test_summarize_shares_and_rewards():
    from evaluate.sentiment import summarize

    rows = [{"response": "a b", "reward": 1.0, "predicted": "negative"},
            {"response": "a c", "reward": 3.0, "predicted": "negative"},
            {"response": "d", "reward": -2.0, "predicted": "positive"}]
    metrics = summarize(rows, ["negative", "neutral", "positive"], perplexity=12.5)
    assert metrics["negative_share"] == pytest.approx(2 / 3) and metrics["neutral_share"] == 0.0
    assert metrics["mean_reward"] == pytest.approx(2 / 3) and metrics["median_reward"] == 1.0
    assert metrics["distinct_1"] == pytest.approx(4 / 5) and metrics["perplexity"] == 12.5


def test_too_few_prompts_for_one_update_is_one_line_not_a_silent_spin(tiny_models, tmp_path):
    """TRL's rollout loop repeats a drop_last DataLoader forever; with fewer prompts than one update
    takes it yielded nothing and the run spun at 0 % (the fixture's 101 training prompts under the
    published 16 x 8 = 128 per update did). The recipe now stops before loading any model."""
    from core.cli import UserError
    from recipes import ppo

    argv = ["--config", "configs/ppo/tiny.yaml", "--model_name_or_path", str(tiny_models / "gpt2"),
            "--reward_model", str(tiny_models / "classifier"), "--output_dir", str(tmp_path / "ppo"),
            "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "8"]
    with pytest.raises(UserError) as err:
        ppo.main(argv)
    message = str(err.value)
    assert "16 x 8 x 1 = 128 distinct prompts" in message and "gives 101 training prompts" in message
    assert "\n" not in message
