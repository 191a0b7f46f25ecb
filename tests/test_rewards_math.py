"""Answer extraction, normalisation and math rewards (pure Python, fast)."""

import pytest

from rewards.math import (
    ANSWER_FORMAT_HINT,
    ANSWER_PREFIX,
    answers_match,
    completion_text,
    correctness,
    correctness_strict,
    extract_answer,
    format_soft,
    format_strict,
    is_correct,
    make_correctness,
    make_length_penalty,
    make_repetition_penalty,
    normalize_answer,
    parse_number,
    repetition_penalty,
    tag_count,
)

GOOD = "Mỗi hộp có 12 cái bánh. 3 hộp có 3 x 12 = 36 cái bánh.\n#### 36"


def chat(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # plain and signed
        ("42", 42.0),
        ("-3", -3.0),
        ("−3", -3.0),  # Unicode minus sign
        ("x = -3", -3.0),
        ("10-3", 10.0),  # a subtraction, not -3: first number is 10
        ("+7", 7.0),
        # Vietnamese writing: "." groups thousands, "," is the decimal mark
        ("1.250.000", 1250000.0),
        ("3,5", 3.5),
        ("1.250,5", 1250.5),
        ("1.250.000,75", 1250000.75),
        ("1.250", 1250.0),  # single separator + exactly 3 digits -> thousands
        # English writing
        ("1,250", 1250.0),  # same rule as "1.250"
        ("1,250,000", 1250000.0),
        ("2.5", 2.5),
        ("1,250.75", 1250.75),  # both kinds: the last one is the decimal mark
        ("0,125", 0.125),  # integer part 0 -> decimal even with 3 digits after
        ("0.125", 0.125),
        ("1250.500", 1250.5),  # integer part of 4 digits cannot start a thousands grouping
        ("3,50", 3.5),
        (".5", 0.5),
        # spaces as thousands separators
        ("1 250 000", 1250000.0),
        ("1\u00a0250\u00a0000", 1250000.0),  # no-break spaces
        ("2 50", 2.0),  # group of 2 digits: two numbers, first is 2
        # currency, units, percent, multipliers
        ("1.250.000 đồng", 1250000.0),
        ("$12", 12.0),
        ("$1,250.50", 1250.5),
        ("12 kg", 12.0),
        ("5 km", 5.0),  # "k" in "km" is not a multiplier
        ("50%", 50.0),
        ("15 nghìn", 15000.0),
        ("15 ngàn đồng", 15000.0),
        ("1,5 triệu", 1500000.0),
        ("2 tỷ", 2e9),
        ("30 tỉ lệ", 30.0),  # "tỉ lệ" means ratio, not billion
        ("15k", 15000.0),
        ("3 trăm", 300.0),
        # fractions
        ("3/4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("1{,}250", 1250.0),  # LaTeX thousands separator
        # not numbers
        ("", None),
        ("không có số nào", None),
        ("1.2.3", None),  # malformed grouping is skipped, not guessed
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_parse_number_nfd_input():
    import unicodedata

    assert parse_number(unicodedata.normalize("NFD", "15 nghìn")) == 15000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1250000", "1250000"),
        ("1.250.000", "1250000"),
        ("3,5", "3.5"),
        ("3.50", "3.5"),
        ("-3", "-3"),
        ("−3,0", "-3"),
        ("42.0", "42"),
        ("1/3", "0.3333333333"),
        ("-0", "0"),
        ("abc", None),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("completion", "flexible", "strict"),
    [
        (GOOD, 36.0, 36.0),
        ("Lời giải...\n#### 1.250.000", 1250000.0, 1250000.0),
        ("Lời giải...\n#### 1.250.000 đồng", 1250000.0, 1250000.0),  # units allowed in strict
        ("Lời giải...\n#### -3", -3.0, -3.0),
        ("Lời giải...\n#### 3,5", 3.5, 3.5),
        ("Lời giải...\n####42", 42.0, 42.0),
        ("#### 5\nsửa lại\n#### 7", 7.0, 7.0),  # the last #### wins
        ("#### 5\n#### ", 5.0, None),  # strict: the last #### line has no number
        ("Lời giải\n#### 20 - 5 = 15", 15.0, None),  # strict wants exactly one number
        ("Vậy đáp số là #### 42 quả", 42.0, None),  # strict: #### must start the line
        ("Lời giải\n####\n42", 42.0, None),  # flexible reads the next line
        ("Lời giải\n### 42", 42.0, None),  # three hashes: flexible only
        ("### Bước 1\nTa có 7 quả", 7.0, None),  # a heading is not an answer line
        ("Ta có \\boxed{36} cái bánh.", 36.0, None),
        ("\\boxed{1{,}250}", 1250.0, None),
        ("\\boxed{\\frac{3}{4}}", 0.75, None),
        ("Vì 2 + 2 = 4 nên \\boxed{x = 5}", 5.0, None),
        ("<answer>36</answer>", 36.0, None),
        ("<answer>\nVậy 5 + 3 = 8\n</answer> thêm 100", 8.0, None),
        ("<answer> 12", 12.0, None),  # unclosed tag runs to the end
        ("Đáp án: 42", 42.0, None),
        ("Đáp số: 5 + 3 = 8", 8.0, None),  # first number after the last "="
        ("ĐÁP SỐ: 1.250.000 đồng. Chúc bạn học tốt 100%", 1250000.0, None),
        ("**Đáp số: 42**", 42.0, None),
        ("**Đáp số:** 42 quả táo", 42.0, None),
        ("Đáp số:\n42", 42.0, None),
        ("Kết quả: -7", -7.0, None),
        ("Kết quả của phép nhân 3 x 4 là 12", 12.0, None),  # not a marker: last number
        ("Final Answer: 12.5", 12.5, None),
        ("The answer is 1,250.", 1250.0, None),
        ("Ta có 3 hộp.\nVậy An có **42** quả táo.", 42.0, None),
        ("Ta có **3** hộp.\nMỗi hộp 12 cái, tổng 36", 36.0, None),  # bold not on the last line
        ("Mỗi hộp có 12 cái. 3 hộp có 36 cái.", 36.0, None),  # last number
        ("#### 42 và \\boxed{7}", 42.0, None),  # #### comes first; strict: two numbers on the line
        ("\\boxed{7}\nĐáp số: 9", 7.0, None),  # boxed before the marker words
        ("", None, None),
        ("Tôi không biết.", None, None),
    ],
)
def test_extract_answer(completion, flexible, strict):
    assert extract_answer(completion) == flexible
    assert extract_answer(completion, strict=True) == strict


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        (1250000.0, "1250000", True),
        (1250000.0, "1.250.000", True),
        (3.5, "3.5", True),
        (3.5, 3.5, True),
        (-3.0, "-3", True),
        (0.33333, "0.3333333", True),  # relative tolerance
        (35.0, "36", False),
        (None, "36", False),
        (36.0, None, False),
    ],
)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_answers_match_rejects_non_numeric_gold():
    with pytest.raises(ValueError, match="not a number"):
        answers_match(1.0, "không rõ")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain", "plain"),
        (chat("xin chào"), "xin chào"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
          {"role": "assistant", "content": "a2"}], "a2"),
        ([{"role": "assistant", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}]}],
         "abc"),
        ({"role": "assistant", "content": "one message"}, "one message"),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


def test_completion_text_without_assistant_raises():
    with pytest.raises(ValueError, match="assistant"):
        completion_text([{"role": "user", "content": "q"}])


def test_is_correct_strict_vs_flexible():
    text = "Mỗi hộp 12 cái, 3 hộp là 36 cái.\nĐáp số: 36"
    assert is_correct(text, "36")
    assert not is_correct(text, "36", strict=True)
    assert is_correct(chat(GOOD), "36", strict=True)


def test_answer_format_constants():
    assert ANSWER_PREFIX == "####"
    assert ANSWER_PREFIX in ANSWER_FORMAT_HINT
    # The example in the hint must itself be read back by the strict checker.
    assert extract_answer("Lời giải\n" + ANSWER_FORMAT_HINT.split("ví dụ: ")[1].split(")")[0], strict=True)


# ---- rewards ----------------------------------------------------------------------------------


def test_correctness_values_and_none_passthrough():
    completions = [chat(GOOD), chat("Đáp số: 36"), chat("#### 35"), chat("không biết"), chat(GOOD)]
    answers = ["36", "36", "36", "36", None]
    assert correctness(completions, answer=answers, prompts=["p"] * 5) == [1.0, 1.0, 0.0, 0.0, None]
    assert correctness_strict(completions, answer=answers) == [1.0, 0.0, 0.0, 0.0, None]
    assert correctness.__name__ == "correctness"
    assert make_correctness(strict=True).__name__ == "correctness_strict"


def test_correctness_length_mismatch_raises():
    with pytest.raises(ValueError):
        correctness([GOOD, GOOD], answer=["36"])


def test_correctness_bad_gold_raises_instead_of_zero():
    with pytest.raises(ValueError):
        correctness([GOOD], answer=["n/a"])


@pytest.mark.parametrize(
    ("completion", "strict", "soft", "tags"),
    [
        (GOOD, 1.0, 1.0, 1.0),
        (GOOD + "\n\n  ", 1.0, 1.0, 1.0),  # trailing whitespace is fine
        ("#### 36", 0.0, 1.0, 0.75),  # no reasoning
        (GOOD + "\nCảm ơn!", 0.0, 1.0, 0.75),  # text after the answer line
        ("Lời giải dài.\n#### 30\n#### 36", 0.0, 1.0, 0.75),  # repeated #### lines
        ("Lời giải dài.\n#### 36 cái bánh", 0.0, 1.0, 0.75),  # not a bare number
        ("Lời giải dài.\n##### 36", 0.0, 0.0, 0.0),  # five hashes is not the marker
        ("Lời giải dài.\nĐáp số: 36", 0.0, 0.5, 0.0),
        ("Lời giải dài. \\boxed{36}", 0.0, 0.5, 0.0),
        ("Lời giải dài.\n### 36", 0.0, 0.5, 0.0),
        ("Vậy có **36** cái.", 0.0, 0.0, 0.0),  # bold is not a marker
        ("", 0.0, 0.0, 0.0),
    ],
)
def test_format_rewards(completion, strict, soft, tags):
    assert format_strict([completion]) == [strict]
    assert format_soft([chat(completion)]) == [soft]
    assert tag_count([completion]) == [tags]


def test_repetition_penalty():
    normal = (
        "Số quả táo của Lan là 12 quả. Số quả táo của Minh gấp đôi số quả táo của Lan, vậy số quả táo "
        "của Minh là 12 x 2 = 24 quả. Số quả táo của Hoa ít hơn số quả táo của Minh 5 quả, vậy số quả "
        "táo của Hoa là 24 - 5 = 19 quả.\n#### 19"
    )
    looping = "Số táo là 5. " * 30
    half = "Lan có 12 quả, Minh có 24 quả. " + "Vậy đáp số là 24 quả. " * 6
    scores = repetition_penalty([normal, looping, half, "ngắn", ""], answer=[None] * 5)
    assert scores[0] == 0.0
    assert scores[1] < -0.9
    assert scores[1] < scores[2] < 0.0
    assert scores[3] == scores[4] == 0.0
    assert make_repetition_penalty(max_penalty=-2.0)([looping])[0] < -1.8


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (100, 0.0), (150, -0.5), (200, -1.0), (500, -1.0)],
)
def test_length_penalty(length, expected):
    reward = make_length_penalty(100)
    assert reward.__name__ == "length_penalty_100"
    assert reward([chat("a" * length)]) == pytest.approx([expected])


def test_length_penalty_custom_penalty_and_validation():
    assert make_length_penalty(10, penalty=-0.5)(["a" * 15]) == pytest.approx([-0.25])
    with pytest.raises(ValueError):
        make_length_penalty(0)


def test_rewards_return_one_score_per_completion():
    completions = [chat(GOOD)] * 7
    for reward in (format_strict, format_soft, tag_count, repetition_penalty, make_length_penalty(50)):
        assert len(reward(completions, answer=["36"] * 7)) == 7
    assert len(correctness(completions, answer=["36"] * 7)) == 7
