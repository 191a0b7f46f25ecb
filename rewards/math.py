"""Answer extraction and GRPO rewards for (Vietnamese) grade-school math.

The toolkit's prompt asks the model to reason step by step and to end with ONE final line
``#### <number>`` (GSM8K style). Gold answers (``hllj/vi_gsm8k``) are canonical numbers as text
("1250000", "3.5", "-3").

`is_correct` is THE answer checker: the training reward `correctness` and the evaluation metric
both call it, so a number the reward accepts is a number the metric counts.

Reward functions follow TRL's contract ``name(completions, **kwargs) -> list[float | None]``:
dataset columns arrive as keyword lists (``answer=[...]``), and ``None`` means "does not apply
to this row". Nothing here catches an exception to turn it into a score: a bug must surface.

Pure Python on purpose (no torch / trl / transformers): rewards run in tests and in evaluation
without a GPU stack.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

ANSWER_PREFIX = "####"

ANSWER_FORMAT_HINT = (
    "Hãy suy luận từng bước. Dòng cuối cùng chỉ ghi đáp số theo dạng: #### <số> "
    "(ví dụ: #### 1250000), không viết gì sau dòng đó."
)

# A #### line needs at least this many non-space characters before it to count as reasoning.
# Small on purpose: "5 + 3 = 8" is valid reasoning for a one-step problem.
MIN_REASONING_CHARS = 5

# --------------------------------------------------------------------------------------------
# Number parsing
# --------------------------------------------------------------------------------------------

_SPACES = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space

# One number token. Alternatives, tried in order:
#   frac   "3/4" (plain integers only)
#   sp     "1 250 000" (1-3 digits, then groups of exactly 3 digits after a space), optional
#          decimal part
#   sep    "1.250.000,5", "3,5", "1250"
#   lead   ".5" (no integer part)
# The sign is a minus glued to the digits and NOT preceded by a word character or a closing
# bracket: "-3" and "= -3" are negative, "10-3" and "x - 3" are subtractions.
_NUMBER_RE = re.compile(
    rf"""
    (?P<sign>(?<![\w)\]])[-\u2212](?=[\d.,]))?
    (?:
        (?P<frac>(?<![\d.,])\d+\s*/\s*\d+(?![\d]|[.,]\d))
      | (?P<sp>(?<![\d.,])\d{{1,3}}(?:[{_SPACES}]\d{{3}})+(?!\d)(?:[.,]\d+)?)
      | (?P<sep>(?<![\d.,])\d+(?:[.,]\d+)*)
      | (?P<lead>(?<![\w.,])[.,]\d+)
    )
    (?P<mult>
        \s*(?:nghìn|ngàn|ngan|nghin|triệu|trieu|trăm|tram|hundred|thousand|million|billion
              |(?:tỷ|tỉ|ty)(?!\s*l[eệ](?![^\W\d_])))(?![^\W\d_])
      | k(?![^\W\d_])
    )?
    """,
    re.VERBOSE | re.IGNORECASE,
)

_MULTIPLIERS = {
    "trăm": 1e2, "tram": 1e2, "hundred": 1e2,
    "nghìn": 1e3, "ngàn": 1e3, "nghin": 1e3, "ngan": 1e3, "thousand": 1e3, "k": 1e3,
    "triệu": 1e6, "trieu": 1e6, "million": 1e6,
    "tỷ": 1e9, "tỉ": 1e9, "ty": 1e9, "billion": 1e9,
}

# LaTeX that models put around numbers: \frac{3}{4}, 1{,}250, 1\,250, \text{...}.
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_LATEX_THIN_RE = re.compile(r"\\[,;:! ]")


def _clean(text: str) -> str:
    """NFC-normalise (Vietnamese may arrive decomposed) and flatten LaTeX number notation."""
    text = unicodedata.normalize("NFC", text)
    if "\\" in text or "{" in text:
        text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
        text = text.replace("{,}", ",").replace("{.}", ".")
        text = _LATEX_THIN_RE.sub("", text)
    return text


def _separated_value(body: str) -> float | None:
    """Value of digits with "." / "," separators (no spaces, no sign); None if malformed."""
    seps = [c for c in body if c in ".,"]
    if not seps:
        return float(body)
    if body[0] in ".,":  # ".5"
        return float("0." + body[1:])
    last = seps[-1]
    groups = re.split(r"[.,]", body)
    if len(set(seps)) == 2:
        # Both kinds: the last separator is the decimal mark and must occur once; the other
        # kind groups thousands. "1.250.000,5" -> 1250000.5, "1,250.75" -> 1250.75.
        if seps.count(last) != 1:
            return None
        int_groups, frac = groups[:-1], groups[-1]
    elif len(seps) > 1:
        # One kind, repeated: thousands groups only. "1.250.000" -> 1250000.
        int_groups, frac = groups, ""
    else:
        head, tail = groups
        # One separator: a thousands group when exactly 3 digits follow and the integer part
        # is 1-3 digits that are not all zeros ("1.250" -> 1250, "1,250" -> 1250); otherwise a
        # decimal mark ("3,5", "2.5", "0,125", "1250.500").
        if len(tail) == 3 and len(head) <= 3 and head.strip("0"):
            int_groups, frac = groups, ""
        else:
            int_groups, frac = [head], tail
    if len(int_groups) > 1 and (len(int_groups[0]) > 3 or any(len(g) != 3 for g in int_groups[1:])):
        return None  # "1.2.3", "12,34,567": not a thousands grouping
    return float("".join(int_groups) + ("." + frac if frac else ""))


def _match_value(m: re.Match[str]) -> float | None:
    if m["frac"]:
        num, den = (int(p) for p in m["frac"].split("/"))
        if den == 0:
            return None
        value = num / den
    elif m["sp"]:
        value = _separated_value(re.sub(f"[{_SPACES}]", "", m["sp"]))
    else:
        value = _separated_value(m["sep"] or m["lead"])
    if value is None:
        return None
    if m["mult"]:
        value *= _MULTIPLIERS[m["mult"].strip().lower()]
    return -value if m["sign"] else value


def _numbers(text: str) -> list[tuple[float, int, int]]:
    """All numbers in already-cleaned text, as (value, start, end); malformed tokens skipped."""
    found = []
    for m in _NUMBER_RE.finditer(text):
        value = _match_value(m)
        if value is not None:
            found.append((value, m.start(), m.end()))
    return found


def parse_number(text: str) -> float | None:
    """Parse the first written number in ``text``; None when there is none.

    Writing conventions (Vietnamese first, English accepted):

    - "." groups thousands and "," is the decimal mark in Vietnamese ("1.250.000" = 1250000,
      "3,5" = 3.5, "1.250,5" = 1250.5); English swaps them ("1,250.75" = 1250.75).
    - Both separators present: the LAST one is the decimal mark (it must occur once), the
      other groups thousands.
    - One kind repeated ("1.250.000", "1,250,000"): thousands groups.
    - A single separator followed by exactly 3 digits, after an integer part of 1-3 digits that
      is not zero, groups thousands: "1.250" = "1,250" = 1250. So an English "2.500" reads as
      2500 - the trade-off for Vietnamese data, where "1.250" is one thousand two hundred fifty.
    - Any other single separator is a decimal mark: "3,5" = "3.5" = 3.5, "0,125" = "0.125" =
      0.125 (integer part 0), "1250.500" = 1250.5 (integer part longer than 3 digits).
    - Spaces (also no-break and thin spaces) group thousands when every group after the first
      has exactly 3 digits: "1 250 000" = 1250000; "2 50" is two numbers.
    - Malformed groupings ("1.2.3", "1.25,5") are not numbers and are skipped.
    - A minus (ASCII "-" or Unicode "−") glued to the digits and not preceded by a letter, digit
      or closing bracket is a sign: "-3", "= −3"; "10-3" is a subtraction.
    - Currency and units around the number are ignored ("1.250.000 đồng", "$12", "12 kg",
      "50%" = 50). Multiplier words right after the number scale it: "15 nghìn" = 15000,
      "1,5 triệu" = 1500000, "2 tỷ", "3 trăm", "15k", "2 million". Compound amounts such as
      "1 triệu 250 nghìn" are not summed (only the first part is read).
    - Fractions of plain integers: "3/4" = 0.75, "\\frac{3}{4}" = 0.75.
    """
    found = _numbers(_clean(text))
    return found[0][0] if found else None


def format_number(value: float) -> str:
    """Canonical text of a number: "1250000", "3.5", "-3" (no ".0", no exponent, 10 decimals max)."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def normalize_answer(text: str) -> str | None:
    """Canonical string of the number written in ``text`` (see `parse_number`); None if none.

    Used to normalise gold answers: "1.250.000" -> "1250000", "3,50" -> "3.5", "−3" -> "-3".
    """
    value = parse_number(text)
    return None if value is None else format_number(value)


# --------------------------------------------------------------------------------------------
# Answer extraction
# --------------------------------------------------------------------------------------------

_HASH_RE = re.compile(r"(?<!#)####(?!#)[ \t]*([^\n]*)")
_HASH_LINE_RE = re.compile(r"^[ \t]*(?<!#)####(?!#)[ \t]*([^\n]*?)[ \t]*$", re.MULTILINE)
# "### 42" alone on a line: the SFT data of the reproduced work used three hashes.
_HASH3_LINE_RE = re.compile(r"^[ \t]*###[ \t]+([^\n]*?)[ \t]*$", re.MULTILINE)
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
# A marker word, then a colon / "là" / "is" / "=" so that "Kết quả của phép nhân 3 x 4 là 12"
# is not read as a marker followed by 3.
_MARKER_RE = re.compile(
    r"(?<![^\W\d_])(?:đáp\s+án|đáp\s+số|dap\s+an|dap\s+so|kết\s+quả|ket\s+qua|trả\s+lời|answer)"
    r"(?:\s+cuối(?:\s+cùng)?|\s+cuoi(?:\s+cung)?)?[\s*_]*(?::|：|=|là(?![^\W\d_])|is(?![^\W\d_]))",
    re.IGNORECASE,
)
_BOLD_RE = re.compile(r"\*\*([^*\n]+?)\*\*")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# In "5 + 3 = 8" the answer is after the last of these.
_RESULT_SPLIT_RE = re.compile(r"=>|[=≈⇒→]")


def _segment_value(segment: str) -> float | None:
    """The answer number in a marked segment: first number after the last "=" if any, else the
    first number ("Đáp số: 5 + 3 = 8" -> 8, "#### 42 quả (40 + 2)" -> 42)."""
    parts = _RESULT_SPLIT_RE.split(segment)
    if len(parts) > 1:
        found = _numbers(parts[-1])
        if found:
            return found[0][0]
    found = _numbers(segment)
    return found[0][0] if found else None


def _line_at(text: str, start: int) -> tuple[str, int]:
    """The text from ``start`` to the end of its line, and where the next line starts."""
    end = text.find("\n", start)
    return (text[start:], len(text)) if end < 0 else (text[start:end], end + 1)


def _after_marker(text: str, end: int) -> float | None:
    """Number on the rest of the line after a marker, else on the next non-empty line
    ("Đáp số:\n42")."""
    line, next_start = _line_at(text, end)
    value = _segment_value(line)
    if value is None and not line.strip("*_ \t:"):
        while next_start < len(text) and text[next_start] in " \t\r\n":
            next_start += 1
        value = _segment_value(_line_at(text, next_start)[0])
    return value


# A boxed answer is short: scanning at most this far keeps a runaway "\boxed{\boxed{..." cheap.
_BOXED_MAX_CHARS = 500
_BOXED_MAX_COUNT = 20


def _boxed_contents(text: str) -> list[str]:
    """Contents of the last `_BOXED_MAX_COUNT` \\boxed{...}, braces balanced, in text order."""
    contents = []
    for m in list(_BOXED_RE.finditer(text))[-_BOXED_MAX_COUNT:]:
        depth, i, stop = 1, m.end(), min(len(text), m.end() + _BOXED_MAX_CHARS)
        while i < stop and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        contents.append(text[m.end() : i - 1] if depth == 0 else text[m.end() : i])
    return contents


def _strict_hash_value(text: str) -> float | None:
    """Strict reading: the LAST line that starts with #### must hold exactly one number
    (units allowed: "#### 1.250.000 đồng")."""
    lines = _HASH_LINE_RE.findall(text)
    if not lines:
        return None
    found = _numbers(lines[-1])
    return found[0][0] if len(found) == 1 else None


def _marked_value(text: str) -> tuple[float | None, str | None]:
    """Flexible reading of explicit answer markers, as (value, which marker); see extract_answer."""
    for m in reversed(list(_HASH_RE.finditer(text))):
        value = _after_marker(text, m.start(1))
        if value is not None:
            return value, "####"
    for line in reversed(_HASH3_LINE_RE.findall(text)):
        found = _numbers(line)
        if len(found) == 1 and found[0][1] == 0 and found[0][2] == len(line):
            return found[0][0], "###"
    for content in reversed(_boxed_contents(text)):
        value = _segment_value(content)
        if value is not None:
            return value, "boxed"
    for content in reversed(_ANSWER_TAG_RE.findall(text)):
        value = _segment_value(content)
        if value is not None:
            return value, "answer_tag"
    for m in reversed(list(_MARKER_RE.finditer(text))):
        value = _after_marker(text, m.end())
        if value is not None:
            return value, "marker"
    return None, None


def extract_answer(completion: str, strict: bool = False) -> float | None:
    """The final numeric answer of a completion, or None.

    strict=True: only the LAST line starting with ``####``; it must hold exactly one number
    (currency/units around it are fine). An earlier #### line never rescues a bad last one.

    strict=False (flexible), first hit wins:

    1. ``####`` anywhere (the last occurrence holding a number; "####\\n42" reads the next line);
    2. a line that is only ``### <number>``;
    3. the last ``\\boxed{...}``;
    4. the last ``<answer>...</answer>`` (an unclosed tag runs to the end);
    5. the last marker "Đáp án" / "Đáp số" / "Kết quả" / "Trả lời" / "Answer" followed by ":",
       "là", "is" or "=" (case-insensitive, markdown bold allowed: "**Đáp số: 42**",
       "**Đáp số:** 42", "The answer is 42");
    6. the last bold ``**...**`` holding a number on the final non-empty line;
    7. the last number in the text.

    Inside a marked segment (1-5) the answer is the first number after the last "=" (or "≈",
    "→"), else the first number: "Đáp số: 5 + 3 = 8" gives 8. Numbers are read by
    `parse_number`.
    """
    text = _clean(completion)
    if strict:
        return _strict_hash_value(text)
    value, _ = _marked_value(text)
    if value is not None:
        return value
    last_line = text.rstrip().rpartition("\n")[2]
    for bold in reversed(_BOLD_RE.findall(last_line)):
        found = _numbers(bold)
        if found:
            return found[-1][0]
    found = _numbers(text)
    return found[-1][0] if found else None


def answers_match(
    pred: float | None, gold: float | str | None, rel_tol: float = 1e-4, abs_tol: float = 1e-6
) -> bool:
    """Whether a predicted number equals the gold answer within tolerance.

    ``pred`` None or ``gold`` None gives False. A gold string is read with `parse_number`; a gold
    string with no number raises ValueError (a data bug must not become a silent 0 reward).
    """
    if pred is None or gold is None:
        return False
    if isinstance(gold, str):
        gold_value = parse_number(gold)
        if gold_value is None:
            raise ValueError(f"gold answer {gold!r} is not a number")
    else:
        gold_value = float(gold)
    return math.isclose(pred, gold_value, rel_tol=rel_tol, abs_tol=abs_tol)


def completion_text(completion: str | Sequence[dict[str, Any]] | dict[str, Any]) -> str:
    """Text of a completion: a plain string, or TRL's conversational form (a list of
    ``{"role", "content"}`` messages, where the last assistant message is the answer).

    Content given as a list of parts (``[{"type": "text", "text": ...}]``) is joined.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        message = completion
    else:
        assistant = [m for m in completion if m.get("role") == "assistant"]
        if not assistant:
            raise ValueError(f"completion has no assistant message: {completion!r:.200}")
        message = assistant[-1]
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def is_correct(completion: str | Sequence[dict[str, Any]], gold: float | str | None, strict: bool = False) -> bool:
    """THE answer checker shared by the training reward and the evaluation metric."""
    return answers_match(extract_answer(completion_text(completion), strict=strict), gold)


# --------------------------------------------------------------------------------------------
# Rewards (TRL contract)
# --------------------------------------------------------------------------------------------


def make_correctness(strict: bool = False) -> Callable[..., list[float | None]]:
    """Correctness reward: 1.0 when `is_correct` (with this ``strict``), else 0.0; rows whose
    ``answer`` is None get None.

    Deliberately binary and about the value only: the format is rewarded by `format_soft` /
    `format_strict` / `tag_count`, so the YAML weights choose how much format matters instead of
    a half-credit rule hidden in here.
    """

    def reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return [
            None if gold is None else float(is_correct(c, gold, strict=strict))
            for c, gold in zip(completions, answer, strict=True)
        ]

    reward.__name__ = reward.__qualname__ = "correctness_strict" if strict else "correctness"
    return reward


correctness = make_correctness(strict=False)
correctness_strict = make_correctness(strict=True)


def _is_bare_number(text: str) -> bool:
    found = _numbers(text)
    return len(found) == 1 and found[0][1] == 0 and found[0][2] == len(text)


def _has_reasoning(text: str) -> bool:
    return len(re.sub(r"\s", "", text)) >= MIN_REASONING_CHARS


def _format_is_strict(text: str) -> bool:
    text = _clean(text)
    if text.count(ANSWER_PREFIX) != 1:
        return False
    body = text.rstrip()
    before, _, last_line = body.rpartition("\n")
    last_line = last_line.strip()
    if not last_line.startswith(ANSWER_PREFIX) or last_line.startswith(ANSWER_PREFIX + "#"):
        return False
    return _is_bare_number(last_line[len(ANSWER_PREFIX) :].strip()) and _has_reasoning(before)


def format_strict(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the completion ends with its only ``#### <number>`` line (nothing but whitespace
    after, nothing but the number on it) and has at least `MIN_REASONING_CHARS` non-space
    characters of reasoning before it; else 0.0."""
    return [float(_format_is_strict(completion_text(c))) for c in completions]


def format_soft(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when ``#### <number>`` appears anywhere; 0.5 for another explicit answer marker with a
    number (\\boxed{}, <answer>, "Đáp số:", "### 42", ...); else 0.0. A bold or a bare last
    number is not a marker."""
    scores = []
    for c in completions:
        _, marker = _marked_value(_clean(completion_text(c)))
        scores.append(1.0 if marker == "####" else 0.5 if marker else 0.0)
    return scores


def _tag_score(text: str) -> float:
    text = _clean(text)
    hashes = list(_HASH_RE.finditer(text))
    if not hashes:
        return 0.0
    score = 0.0
    if len(hashes) == 1:
        score += 0.25
    if _has_reasoning(text[: hashes[0].start()]):
        score += 0.25
    if _is_bare_number(hashes[-1].group(1).strip()):
        score += 0.25
    if not text[hashes[-1].end() :].strip():
        score += 0.25
    return score


def tag_count(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Partial credit for the parts of the expected format, 0.25 each, 0.0 without any ``####``:
    ``####`` occurs exactly once; reasoning before the first ``####``; the last ``####`` holds a
    bare number; nothing but whitespace after that line."""
    return [_tag_score(completion_text(c)) for c in completions]


def repeated_ngram_fraction(text: str, n: int = 5) -> float:
    """Share of whitespace-token n-grams that repeat an earlier one (0.0 for short texts)."""
    words = text.lower().split()
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not ngrams:
        return 0.0
    return 1.0 - len(set(ngrams)) / len(ngrams)


def make_repetition_penalty(
    ngram_size: int = 5, threshold: float = 0.2, max_penalty: float = -1.0
) -> Callable[..., list[float]]:
    """Penalty against looping text: 0.0 while the repeated n-gram fraction is at most
    ``threshold`` (normal reasoning repeats a few phrases), then linear down to ``max_penalty``
    when every n-gram is a repeat. Tokens are whitespace-separated (Vietnamese syllables).

    Why 5 and 0.2: translated GSM8K reasoning repeats noun phrases ("số quả táo của Minh"), which
    puts 4-syllable n-grams near 0.16 repeated; with 5-grams such text stays under 0.1 while a
    loop ("Số táo là 5. " x 20) is at 0.95.
    """
    if ngram_size < 1 or not 0.0 <= threshold < 1.0:
        raise ValueError(f"need ngram_size >= 1 and 0 <= threshold < 1, got {ngram_size}, {threshold}")

    def reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        scores = []
        for c in completions:
            frac = repeated_ngram_fraction(completion_text(c), ngram_size)
            excess = max(0.0, frac - threshold) / (1.0 - threshold)
            scores.append(max_penalty * excess if excess > 0 else 0.0)
        return scores

    reward.__name__ = reward.__qualname__ = "repetition_penalty"
    return reward


repetition_penalty = make_repetition_penalty()


def make_length_penalty(max_chars: int, penalty: float = -1.0) -> Callable[..., list[float]]:
    """Reward named ``length_penalty_<max_chars>``: 0.0 up to ``max_chars`` characters, then
    linear to ``penalty`` at twice that length, and ``penalty`` beyond."""
    if not isinstance(max_chars, int) or max_chars <= 0:
        raise ValueError(f"length_penalty needs a positive integer max_chars, got {max_chars!r}")

    def reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        scores = []
        for c in completions:
            over = len(completion_text(c)) - max_chars
            scores.append(penalty * min(1.0, over / max_chars) if over > 0 else 0.0)
        return scores

    reward.__name__ = reward.__qualname__ = f"length_penalty_{max_chars}"
    return reward
