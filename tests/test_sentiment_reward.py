"""The classifier reward: preprocessing, score kinds, the TRL reward function, and the PPO adapter.

The adapter test goes through `trl.experimental.utils.get_reward`, the function PPOTrainer calls
on its reward model, with a policy tokenizer that differs from the classifier's.
"""

import shutil

import pytest
import torch

from rewards.sentiment import (
    SentimentScorer,
    TextRewardAdapter,
    label_scores,
    make_sentiment_reward,
    preprocess,
    save_preprocessing,
)

SENTENCE = "Thầy dạy rất nhiệt tình , sinh viên rất thích môn học này ."


def test_word_segmentation_on_and_off():
    # PhoBERT was pre-trained on segmented text: multi-syllable words joined by "_".
    on = preprocess(SENTENCE, word_segmentation=True)
    off = preprocess(SENTENCE, word_segmentation=False)
    assert "nhiệt_tình" in on and "sinh_viên" in on and "môn_học" in on
    assert off == "Thầy dạy rất nhiệt tình, sinh viên rất thích môn học này."
    assert "_" not in off
    assert preprocess("   ", word_segmentation=True) == ""


LOGITS = torch.tensor([[2.0, 1.0, -1.0],    # predicted negative
                       [0.5, 3.0, 1.0]])   # predicted neutral


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("logit", [2.0, 0.5]),
        ("prob", LOGITS.softmax(-1)[:, 0].tolist()),
        ("logit_if_predicted", [2.0, 0.0]),  # row 2 does not predict "negative": nothing
        ("margin", [1.0, -2.5]),             # own logit minus the best other one
    ],
)
def test_label_scores(kind, expected):
    assert label_scores(LOGITS, 0, kind).tolist() == pytest.approx(expected)


def test_label_scores_rejects_unknown_kind():
    with pytest.raises(ValueError, match="score must be one of"):
        label_scores(LOGITS, 0, "rank")


def test_scorer_reads_saved_segmentation_and_labels(tiny_models, tmp_path):
    model_dir = tmp_path / "classifier"
    shutil.copytree(tiny_models / "classifier", model_dir)
    plain = SentimentScorer(str(model_dir), device="cpu")
    assert not plain.word_segmentation and plain.label == "negative" and plain.label_id == 0
    save_preprocessing(model_dir, word_segmentation=True, max_length=64)
    segmented = SentimentScorer(str(model_dir), label="positive", score="prob", device="cpu")
    assert segmented.word_segmentation and segmented.max_length == 64 and segmented.label_id == 2
    assert segmented.prepare([SENTENCE]) == [preprocess(SENTENCE, True)]
    probs = segmented([SENTENCE, "phòng học nóng"])
    assert len(probs) == 2 and all(0.0 < p < 1.0 for p in probs)
    with pytest.raises(ValueError, match="not one of the classifier's labels"):
        SentimentScorer(str(model_dir), label="angry", device="cpu")


def test_reward_function_contract_and_registry(tiny_models):
    from rewards import get_reward_func

    model_dir = str(tiny_models / "classifier")
    reward = make_sentiment_reward(model_dir, label="negative", device="cpu")
    assert reward.__name__ == "sentiment_negative"
    texts = ["cô dạy hay", "phòng máy hỏng"]
    expected = reward.scorer(texts)
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    assert reward(completions=texts) == pytest.approx(expected)
    assert reward(completions=chat, prompts=[[{"role": "user", "content": "?"}]] * 2) == pytest.approx(expected)
    continued = make_sentiment_reward(model_dir, include_prompt=True, device="cpu")
    assert continued(completions=[" dạy hay"], prompts=["cô"]) == pytest.approx(reward.scorer(["cô dạy hay"]))
    registered = get_reward_func(f"sentiment:{model_dir},label=positive,score=prob")
    assert registered.__name__ == "sentiment_positive"
    positive_probs = reward.scorer.logits(texts).softmax(-1)[:, 2].tolist()
    assert registered(completions=texts) == pytest.approx(positive_probs, abs=1e-6)


def _other_tokenizer(texts):
    """A small byte-level BPE unlike the classifier's: the policy side of the adapter."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


PROMPTS = ["thầy dạy", "phòng học nóng nực quá,", "cô"]
RESPONSES = [" rất hay và dễ hiểu.", " máy chiếu thì hỏng", " nhiệt tình"]


def _query_responses(tok, with_eos: bool):
    """PPO's layout: prompts left-padded to one width, responses right-padded (after an eos)."""
    pad = tok.pad_token_id
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    response_ids = [tok(r)["input_ids"] + ([tok.eos_token_id] if with_eos else []) for r in RESPONSES]
    width = max(map(len, prompt_ids)) + 1  # one extra pad column: every prompt is padded
    length = max(map(len, response_ids)) + 2
    rows = [[pad] * (width - len(p)) + p + r + [pad] * (length - len(r)) for p, r in zip(prompt_ids, response_ids, strict=True)]
    return torch.tensor(rows), width


@pytest.mark.parametrize("text", ["full", "response"])
@pytest.mark.parametrize("with_eos", [False, True])
def test_adapter_matches_scorer_through_trl_get_reward(tiny_models, text, with_eos):
    from trl.experimental.utils import get_reward

    from data.students_feedback import FIXTURE, load_feedback

    tok = _other_tokenizer(list(load_feedback(str(FIXTURE), "all")["sentence"]) + PROMPTS + RESPONSES)
    scorer = SentimentScorer(str(tiny_models / "classifier"), device="cpu")
    assert tok.get_vocab() != scorer.tokenizer.get_vocab()
    query_responses, width = _query_responses(tok, with_eos)
    adapter = TextRewardAdapter(scorer, tok, text=text, context_length=width)

    logits, scores, lengths = get_reward(adapter, query_responses, tok.pad_token_id, width)

    texts = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)] if text == "full" else [r.strip() for r in RESPONSES]
    assert scores.tolist() == pytest.approx(scorer(texts), abs=1e-5)
    assert logits.shape == (*query_responses.shape, 1)
    assert len(set(scorer(texts))) == 3  # the rows really differ, so a mix-up would show


def test_adapter_ignores_ids_under_a_zero_mask(tiny_models):
    scorer = SentimentScorer(str(tiny_models / "classifier"), device="cpu")
    tok = scorer.tokenizer
    ids = tok("máy chiếu hỏng")["input_ids"]
    junk = tok("rất tuyệt vời")["input_ids"]
    adapter = TextRewardAdapter(scorer, tok)
    input_ids = torch.tensor([junk + ids])
    mask = torch.tensor([[0] * len(junk) + [1] * len(ids)])
    assert adapter.backbone.texts(input_ids, mask) == ["máy chiếu hỏng"]
    assert adapter(input_ids, mask).tolist() == pytest.approx(scorer(["máy chiếu hỏng"]), abs=1e-5)


def test_adapter_response_mode_needs_context_length(tiny_models):
    scorer = SentimentScorer(str(tiny_models / "classifier"), device="cpu")
    with pytest.raises(ValueError, match="context_length"):
        TextRewardAdapter(scorer, scorer.tokenizer, text="response")
    adapter = TextRewardAdapter(scorer, scorer.tokenizer, text="response", context_length=5)
    with pytest.raises(ValueError, match="hold no response"):
        adapter(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long))
