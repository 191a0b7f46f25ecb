"""`make reward-model` end to end on the tiny classifier and the fixture: it must learn something,
and the reward must see sentences exactly as training did."""

import json

import pytest
import torch
from conftest import run_entry

from data.students_feedback import FIXTURE, LABELS, load_feedback


@pytest.fixture(scope="module")
def classifier_with_cls(tiny_models, tmp_path_factory):
    """The tiny classifier's role, a bit bigger (hidden 128) and with a leading <s>-like token.

    RoBERTa's head reads position 0. PhoBERT's tokenizer puts <s> there; the tiny tokenizer puts
    the sentence's first word, and with that the 64-wide tiny classifier only just beats the
    majority class on the fixture. Prepending a special token, as PhoBERT does, fixes it.
    """
    from tokenizers import processors
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    out = tmp_path_factory.mktemp("classifier") / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "tokenizer")
    cls = "<|im_start|>"
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A", pair=f"{cls} $A $B", special_tokens=[(cls, tokenizer.convert_tokens_to_ids(cls))])
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer) + 2, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=260, num_labels=3, pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_make_reward_model_beats_majority_and_reward_reproduces_it(tmp_path, classifier_with_cls):
    out = tmp_path / "rm"
    run_entry(["make", "-s", "reward-model", "CONFIG=configs/reward_model/tiny.yaml",
               f"ARGS=--output_dir {out} --model_name_or_path {classifier_with_cls} --learning_rate 3e-4"], env={"OMP_NUM_THREADS": "1"})

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_eval"] == 36 and metrics["word_segmentation"] is True
    # Measured 0.67 against 0.47 for the majority class (seeded split); shuffled labels or a
    # broken preprocessing land at or below the majority.
    assert metrics["accuracy"] > metrics["majority_accuracy"] + 0.1, metrics
    assert metrics["f1_weighted"] > 0.55, metrics
    model_dir = out / "model"
    saved = json.loads((model_dir / "text_preprocessing.json").read_text())
    assert saved["word_segmentation"] is True
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert (out / "config.yaml").is_file() and (out / "run_info.json").is_file()
    assert (out / "metrics.jsonl").read_text().strip()

    # The reward (SentimentScorer) reads the saved segmentation choice and so reproduces the
    # recipe's held-out accuracy; scoring unsegmented text would be a silent train/reward mismatch.
    from rewards.sentiment import SentimentScorer

    held = load_feedback(str(FIXTURE), "validation")
    scorer = SentimentScorer(str(model_dir), device="cpu")
    assert scorer.word_segmentation
    predicted = scorer.logits(list(held["sentence"])).argmax(-1).tolist()
    accuracy = sum(p == y for p, y in zip(predicted, held["label"], strict=True)) / len(held)
    assert abs(accuracy - metrics["accuracy"]) < 1e-9
