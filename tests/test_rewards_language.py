"""Vietnamese drift: the syllable heuristic, the `vietnamese` reward and the evaluation metrics
(rewards/language.py)."""

import pytest

from rewards import get_reward_func
from rewards.language import (
    analyze,
    drift_metrics,
    drifts,
    has_cjk,
    is_vietnamese_syllable,
    vietnamese,
    vietnamese_share,
)

# Syllables chosen to cover every part of the grammar: stop finals with their tones, the
# k/gh/ngh and qu/gi spellings, triphthongs, "oo" and the rarer rhymes.
VIETNAMESE_SYLLABLES = (
    "thích học tiếng Việt nghiêng khuỷu quyết định giường gìn giữ nghĩa xoong khuya rượu thuở huỳnh "
    "ngoặt khuếch quýt hoàng loét oẳn uống ươm yếm kẻ ghế nghe đường thuyền chuyện ở à ừ"
).split()
# Unmarked syllables are still syllables (they count as "ambiguous", not as foreign).
UNMARKED_SYLLABLES = "anh em con hai ba cho mua bao nhanh trong the can so".split()
NOT_SYLLABLES = [
    "and", "is", "that", "first", "answer", "thing",  # finals Vietnamese lacks (-nd, -s, -ng after i)
    "cat", "hot", "hoc",        # a stop final without the acute/dot-below tone
    "ke" + "\u0300" + "\u0301",  # two tone marks
    "ka", "ghe" + "a", "ge",    # k/gh before a back vowel, g before e
    "with", "fun", "jam",       # w, f, j
    "für", "garçon",            # marks Vietnamese does not use
]


@pytest.mark.parametrize("word", VIETNAMESE_SYLLABLES + UNMARKED_SYLLABLES)
def test_vietnamese_syllables_parse(word):
    assert is_vietnamese_syllable(word)


@pytest.mark.parametrize("word", NOT_SYLLABLES)
def test_non_syllables_do_not(word):
    assert not is_vietnamese_syllable(word)


QUESTION = "Janet có 16 quả trứng. Mỗi ngày Janet ăn 3 quả. Hỏi còn lại bao nhiêu quả?"


@pytest.mark.parametrize(
    ("text", "share", "drifting"),
    [
        # Vietnamese reasoning with numbers, units and the answer line: all Vietnamese.
        ("Số tiền mua thịt là: 2,5 x 120.000 = 300.000 (đồng).\n#### 300000", 1.0, False),
        # Unmarked Vietnamese syllables follow the marked words around them.
        ("Tôi có hai con mèo và anh ấy có ba con chó.", 1.0, False),
        # English: every decided word is foreign, the unmarked syllables ("so", "the") follow them.
        ("The total cost is 5 dollars, so the answer is 5.", 0.0, True),
        # Chinese: one word per character; any CJK character is drift.
        ("首先，我们计算总数。", 0.0, True),
        ("Số trứng còn lại là 16 - 3 = 13 个。", 5 / 6, True),
        # Mixed: 4 Vietnamese words (đầu tiên tính lại), 3 English (we multiply dollars); the
        # unmarked "ta" and "then" count as Vietnamese in the same proportion, 4/7: (4 + 2 x 4/7) / 9.
        ("Đầu tiên, ta tính lại: 16 - 3 - 4 = 9. Then we multiply 9 * 2 = 18 dollars.", 4 / 7, False),
        # Mostly English: 3 Vietnamese, 5 English, 4 unmarked (ta then the by): (3 + 4 x 3/8) / 12.
        ("Đầu tiên ta tính: Then we multiply all the apples by 2 = 18 dollars.", 0.375, True),
        # A name from the question is not held against the answer.
        ("Janet còn lại 16 - 3 = 13 quả trứng.", 1.0, False),
        # Formulas, LaTeX, units, variables, function names, abbreviations: nothing to count.
        ("x^2 + 2x + 1 = 0; \\frac{3}{4} = 0,75; cos(x) = 1; 5 kg, 10 km, 20 USD", None, False),
        ("#### 42", None, False),
        ("", None, False),
        # Another script is foreign too.
        ("Привет мир", 0.0, True),
    ],
)
def test_share_and_drift_table(text, share, drifting):
    got = vietnamese_share(text, context=QUESTION)
    assert got == (None if share is None else pytest.approx(share))
    assert drifts(text, context=QUESTION) is drifting


def test_counts_separate_cjk_and_ambiguous_words():
    counts = analyze("Ta có 3 quả táo, 苹果 two apples")
    assert counts.cjk == 2 and counts.foreign == 2 + 2  # 苹 果 + "two" "apples"
    assert counts.vietnamese == 3 and counts.ambiguous == 1  # có quả táo + "ta"
    assert has_cjk("答案是 42") and not has_cjk("Đáp số: 42")


def test_context_only_forgives_foreign_words_it_contains():
    text = "Janet bought the apples"  # "Janet" is in the question, the English words are not
    assert vietnamese_share(text, context=QUESTION) == 0.0
    assert analyze(text, context=QUESTION).foreign == 2  # bought, apples ("the" is ambiguous)
    assert analyze(text).foreign == 3


def test_reward_reads_chat_completions_and_prompts_through_the_registry():
    reward = get_reward_func("vietnamese")
    assert reward is vietnamese and reward.__name__ == "vietnamese"
    prompts = [[{"role": "system", "content": "Giải toán."}, {"role": "user", "content": QUESTION}]] * 4
    completions = [[{"role": "assistant", "content": text}] for text in (
        "Janet còn 16 - 3 = 13 quả.\n#### 13",
        "Janet has 16 - 3 = 13 eggs left.\n#### 13",
        "珍妮特还剩 13 个。",
        "#### 13",
    )]
    scores = reward(completions, prompts=prompts, answer=["13"] * 4)
    assert scores[0] == 1.0 and scores[1] == 0.0 and scores[2] == 0.0
    assert scores[3] == 1.0  # nothing but the answer line: no other language in it
    assert reward(["Số táo là 5."]) == [1.0]  # prompts are optional


def test_drift_metrics_over_completions():
    completions = ["Số táo là 5.", "The answer is 5.", "答案是 5。", "#### 5"]
    metrics = drift_metrics(completions, [QUESTION] * 4)
    assert metrics["drift_rate"] == pytest.approx(2 / 4)
    assert metrics["cjk_rate"] == pytest.approx(1 / 4)
    # "#### 5" has no counted word: it is left out of the mean share, and does not drift.
    assert metrics["vi_word_share"] == pytest.approx(1 / 3)
    assert drift_metrics([]) == {"vi_word_share": 1.0, "drift_rate": 0.0, "cjk_rate": 0.0}
