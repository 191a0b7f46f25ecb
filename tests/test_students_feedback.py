"""The students' feedback loader: cleaning, seeded splits of a single file, PPO prompts, bad rows."""

import json

import pytest

from data.common import DataError
from data.students_feedback import (
    FIXTURE,
    clean_sentence,
    load_feedback,
    load_prompts,
    load_texts,
    make_prompt,
)


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("thầy dạy nhiệt tình , dễ hiểu .", "thầy dạy nhiệt tình, dễ hiểu."),
        ("môn học hay !", "môn học hay!"),
        ("sao lại thế ?", "sao lại thế?"),
        ("điểm 9 / 10 ( rất tốt )", "điểm 9 / 10 ( rất tốt)"),  # only spaces BEFORE punctuation go
        ("  nhiều   khoảng\ttrắng  ", "nhiều khoảng trắng"),
        ("đã sạch, không đổi.", "đã sạch, không đổi."),
        ("phòng học nóng : 35 % độ ẩm", "phòng học nóng: 35% độ ẩm"),
    ],
)
def test_clean_sentence(raw, cleaned):
    assert clean_sentence(raw) == cleaned


def test_fixture_splits_are_seeded_disjoint_and_complete():
    train = load_feedback(str(FIXTURE), "train")
    held = load_feedback(str(FIXTURE), "validation")
    everything = load_feedback(str(FIXTURE), "all")
    assert train.column_names == ["sentence", "label", "topic"]
    assert len(train) + len(held) == len(everything) == 180
    assert len(held) == 36
    assert not set(train["sentence"]) & set(held["sentence"])
    assert set(everything["label"]) == {0, 1, 2}
    assert all(" ," not in s and " ." not in s for s in everything["sentence"])
    assert list(load_feedback(str(FIXTURE), "validation")["sentence"]) == list(held["sentence"])
    other = load_feedback(str(FIXTURE), "validation", seed=7)
    assert list(other["sentence"]) != list(held["sentence"])
    assert list(load_texts(str(FIXTURE), "train")["text"]) == list(train["sentence"])


def test_prompts_are_2_to_8_word_prefixes_of_long_sentences():
    prompts = load_prompts(str(FIXTURE), "all")
    cleaned = load_feedback(str(FIXTURE), "all")["sentence"]
    assert len(prompts) == sum(len(s) > 50 for s in cleaned) > 100
    lengths = set()
    for prompt, sentence in zip(prompts["prompt"], prompts["sentence"], strict=True):
        assert len(sentence) > 50
        assert sentence.startswith(prompt) and len(prompt) < len(sentence)
        lengths.add(len(prompt.split()))
    assert lengths == set(range(2, 9))
    assert list(load_prompts(str(FIXTURE), "all")["prompt"]) == list(prompts["prompt"])
    assert list(load_prompts(str(FIXTURE), "all", seed=1)["prompt"]) != list(prompts["prompt"])
    assert len(load_prompts(str(FIXTURE), "all", limit=5)) == 5


def test_make_prompt_leaves_at_least_one_word():
    import random

    assert make_prompt("hai từ", random.Random(0), 2, 8) == "hai"


def test_bad_rows_skip_or_fail(tmp_path):
    path = tmp_path / "feedback.jsonl"
    rows = [
        {"sentence": "thầy dạy hay", "sentiment": 2, "topic": 0},
        {"sentence": "", "sentiment": 0, "topic": 0},
        {"sentence": "phòng nóng", "sentiment": 5, "topic": 2},
        {"sentence": "cô nhiệt tình", "sentiment": 2},  # topic is optional
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    good = load_feedback(str(path), "all", on_bad_rows="skip")
    assert list(good["sentence"]) == ["thầy dạy hay", "cô nhiệt tình"]
    assert list(good["topic"]) == [0, -1]
    with pytest.raises(DataError, match="feedback.jsonl line 2: sentence is missing"):
        load_feedback(str(path), "all", on_bad_rows="fail")
    with pytest.raises(DataError, match="split must be one of"):
        load_feedback(str(path), "dev")
    with pytest.raises(DataError, match="longer than 50"):
        load_prompts(str(path), "all")


def test_label_column_is_accepted_for_sentiment(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text('{"sentence": "cô dạy hay", "label": 2}\n{"sentence": "phòng nóng", "label": 0}\n',
                    encoding="utf-8")
    assert list(load_feedback(str(path), "all")["label"]) == [2, 0]
