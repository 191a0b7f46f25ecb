"""How much of a text is Vietnamese: a syllable-structure heuristic, a GRPO reward and drift metrics.

Chat models answering Vietnamese prompts drift into Chinese or English mid-reasoning. This module
measures it without a word list or a model: every Vietnamese word is one written syllable, and a
written syllable has a rigid shape -

    [initial consonant] + [medial o/u] + vowel nucleus + [final: c ch m n ng nh p t, or a glide]

with at most one tone mark (grave, acute, hook above, tilde, dot below) and the letters
ă â ê ô ơ ư đ. A syllable ending in c, ch, p or t carries an acute or a dot-below tone; "k", "gh"
and "ngh" stand only before i, e, ê (y); there is no f, j, w or z. English words mostly break
these rules ("and", "is", "that", "first", "answer", "-ing"), Chinese characters are counted one
word each, and Vietnamese written correctly carries marks on most words.

Each word of a text falls in one class:
- ``vietnamese``: a well-formed syllable with a Vietnamese mark ("số", "tiền", "được", "đi");
- ``foreign``: a Latin-script word that is not a Vietnamese syllable ("total", "answer"), a word
  in another script (Cyrillic, Thai, ...), or one CJK character (Han, kana, Hangul);
- ``ambiguous``: a well-formed syllable without marks ("anh", "con", "hai", but also "the",
  "can", "so"). These count as Vietnamese in the proportion of the decided words: in a text
  that is otherwise 90 % Vietnamese, 90 % of them do;
- not counted: numbers and formulas, words with digits ("cm2", "x1"), single unmarked letters
  (variables), words without a vowel ("kg", "km", "ml"), abbreviations in capitals ("USD"),
  LaTeX commands ("\\frac"), function names before "(" ("cos(x)"), and foreign words that occur in
  the prompt (the names and terms of the question: "Janet có 16 quả trứng").

`vietnamese_share` is the share of counted words that are Vietnamese (None when nothing is
counted); a completion *drifts* when it contains a CJK character or less than half of its words
are Vietnamese. The GRPO reward `vietnamese` and the evaluation metrics (`drift_metrics`) call
the same `analyze`.

Pure Python (no torch / trl): it runs in tests, in evaluation and as a reward without a GPU stack.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rewards.math import completion_text

# ------------------------------------------------------------------------------ letters and marks
_TONES = {"\u0300": "grave", "\u0301": "acute", "\u0309": "hook", "\u0303": "tilde", "\u0323": "dot"}
# Vowel-quality marks: base letter + combining mark -> the Vietnamese letter.
_QUALITY = {("a", "\u0306"): "ă", ("a", "\u0302"): "â", ("e", "\u0302"): "ê", ("o", "\u0302"): "ô",
            ("o", "\u031b"): "ơ", ("u", "\u031b"): "ư"}
_VOWELS = set("aăâeêioôơuưy")
_MARKED_LETTERS = set("ăâêôơưđ")
_LATIN = set("abcdefghijklmnopqrstuvwxyzđ")

# Initial consonants, longest first so that "ngh" is tried before "ng" and "n".
_INITIALS = ("ngh", "ng", "nh", "ch", "gh", "gi", "kh", "ph", "qu", "th", "tr",
             "b", "c", "d", "đ", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "x", "")
_FRONT = ("i", "e", "ê", "y")  # "k", "gh", "ngh" only before these; "c", "g", "ng" never before e/ê/i

# Nuclei that end a syllable by themselves (a vowel, or a vowel + glide written as i/y/o/u).
_OPEN = {
    "a", "e", "ê", "i", "y", "o", "ô", "ơ", "u", "ư",
    "ai", "ao", "au", "ay", "âu", "ây", "eo", "êu", "ia", "iu", "oi", "ôi", "ơi", "ui", "ưi", "ưu", "ua", "ưa",
    "oa", "oe", "uê", "uy", "uơ", "iêu", "yêu", "uôi", "ươi", "ươu", "oai", "oay", "oao", "oeo", "uây", "uya",
    "uyu",
}
# Nuclei before a final consonant, with the finals each takes ("-ing", "-ec" after ê... are not Vietnamese).
_CLOSED = {
    "a": "c ch m n ng nh p t", "ă": "c m n ng p t", "â": "c m n ng p t", "e": "c m n ng p t",
    "ê": "ch m n nh p t", "i": "ch m n nh p t", "y": "ch n nh t", "o": "c m n ng p t", "oo": "c ng",
    "ô": "c m n ng p t", "ơ": "m n p t", "u": "c m n ng p t", "ư": "c n ng t", "iê": "c m n ng p t",
    "yê": "m n t", "uô": "c m n ng t", "ươ": "c m n ng p t", "oa": "c ch m n ng nh p t",
    "oă": "c m n ng t", "oe": "n t", "uâ": "n ng t", "uê": "ch nh", "uy": "ch n nh t", "uyê": "n t",
}
_CLOSED = {nucleus: set(finals.split()) for nucleus, finals in _CLOSED.items()}
_STOP_FINALS = {"c", "ch", "p", "t"}  # syllables ending in these take only the acute or dot-below tone

# Scripts written without spaces: one character is one word.
_CJK_RE = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
    "\U00020000-\U0002fa1f]"
)
_TOKEN_RE = re.compile(r"\w+")
DRIFT_THRESHOLD = 0.5  # a completion with less than half of its words Vietnamese has drifted


def has_cjk(text: str) -> bool:
    """True when the text contains a Han, kana or Hangul character."""
    return _CJK_RE.search(text) is not None


def _split_marks(word: str) -> tuple[str, list[str], bool] | None:
    """(toneless skeleton with ă â ê ô ơ ư đ, the tone marks, whether a Vietnamese mark is there),
    or None for a word with letters or marks Vietnamese does not use (f, j, w, z, ü, ç, ...)."""
    skeleton: list[str] = []
    tones: list[str] = []
    for ch in unicodedata.normalize("NFD", word.lower()):
        if ch in _TONES:
            tones.append(_TONES[ch])
        elif unicodedata.combining(ch):
            if not skeleton or (skeleton[-1], ch) not in _QUALITY:
                return None
            skeleton[-1] = _QUALITY[(skeleton[-1], ch)]
        elif ch in _LATIN and ch not in "fjwz":
            skeleton.append(ch)
        else:
            return None
    text = "".join(skeleton)
    return text, tones, bool(tones) or any(c in _MARKED_LETTERS for c in text)


def _rhyme_ok(rest: str, stop_tone: bool) -> bool:
    """Is ``rest`` (the syllable after its initial consonant) a nucleus and an allowed final?"""
    i = 0
    while i < len(rest) and rest[i] in _VOWELS:
        i += 1
    nucleus, final = rest[:i], rest[i:]
    if not nucleus:
        return False
    if not final:
        return nucleus in _OPEN
    if final not in _CLOSED.get(nucleus, ()):
        return False
    # "cát", "học", "thích": a stop final takes the acute or the dot-below tone, never none
    return final not in _STOP_FINALS or stop_tone


def is_vietnamese_syllable(word: str) -> bool:
    """True when ``word`` is spelled like one Vietnamese syllable (with marks or without)."""
    split = _split_marks(word)
    if split is None:
        return False
    skeleton, tones, _ = split
    if len(tones) > 1:
        return False
    stop_tone = tones in (["acute"], ["dot"])
    for initial in _INITIALS:
        rest = skeleton[len(initial):]
        if not skeleton.startswith(initial) or not rest:
            continue
        # Spelling rules: k/gh/ngh before i e ê y only; c/g/ng never before e ê; c/ng never before i y.
        if initial in ("k", "gh", "ngh") and not rest.startswith(_FRONT):
            continue
        if (initial in ("c", "g", "ng") and rest[0] in "eê") or (initial in ("c", "ng") and rest[0] in "iy"):
            continue
        if initial == "qu" and rest[0] in "uo":
            continue
        if _rhyme_ok(rest, stop_tone):
            return True
    return False


# ------------------------------------------------------------------------------- text analysis
@dataclass(frozen=True)
class LanguageCounts:
    """Words of a text by class (see the module docstring)."""

    vietnamese: int = 0
    foreign: int = 0
    ambiguous: int = 0
    cjk: int = 0  # CJK characters, also counted in `foreign`

    @property
    def counted(self) -> int:
        return self.vietnamese + self.foreign + self.ambiguous

    @property
    def vietnamese_share(self) -> float | None:
        """Share of counted words that are Vietnamese, unmarked syllables counted in the
        proportion of the decided words (all of them when no word is decided); None for a text
        with no counted word."""
        if self.counted == 0:
            return None
        decided = self.vietnamese + self.foreign
        ambiguous_vi = self.ambiguous * (self.vietnamese / decided if decided else 1.0)
        return (self.vietnamese + ambiguous_vi) / self.counted

    def drifts(self, threshold: float = DRIFT_THRESHOLD) -> bool:
        """A CJK character, or less than ``threshold`` of the counted words Vietnamese (a text of
        numbers and formulas does not drift)."""
        share = self.vietnamese_share
        return self.cjk > 0 or (share is not None and share < threshold)


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def _context_words(context: str | None) -> set[str]:
    if not context:
        return set()
    text = unicodedata.normalize("NFC", context)
    return {w.lower() for w, _, _ in _words(_CJK_RE.sub(" ", text))}


def analyze(text: str, context: str | None = None) -> LanguageCounts:
    """Count the words of ``text`` by class. ``context`` (the prompt) lists words that are not held
    against the text when they are not Vietnamese: names and terms the question itself uses."""
    text = unicodedata.normalize("NFC", text)
    cjk = len(_CJK_RE.findall(text))
    rest = _CJK_RE.sub(" ", text)
    known = _context_words(context)
    vi = foreign = ambiguous = 0
    for word, start, end in _words(rest):
        if any(c.isdigit() or c == "_" for c in word):
            continue  # "cm2", "x1", "GSM8K", snake_case: formulas and code
        if (start > 0 and rest[start - 1] == "\\") or rest[end:end + 1] == "(":
            continue  # a LaTeX command (\frac), a function name (cos(x), max(a, b))
        lower = word.lower()
        if not all(unicodedata.normalize("NFD", c)[0] in _LATIN for c in lower):
            if len(word) > 1 and lower not in known:
                foreign += 1  # another script: Cyrillic, Greek, Thai, Arabic...
            continue
        if len(word) > 1 and word.isupper() and word.isascii():
            continue  # an abbreviation: USD, VND, ABC (a marked capital word such as ĐÁP is a word)
        split = _split_marks(word)
        if split is None:  # f, j, w, z or an accent Vietnamese does not use
            if len(word) > 1 and lower not in known:
                foreign += 1
            continue
        skeleton, _, marked = split
        if not marked and (len(word) == 1 or not any(c in _VOWELS for c in skeleton)):
            continue  # a variable (x, a), a unit (kg, km, ml)
        if is_vietnamese_syllable(word):
            if marked:
                vi += 1
            else:
                ambiguous += 1
        elif lower not in known:
            foreign += 1
    return LanguageCounts(vietnamese=vi, foreign=foreign + cjk, ambiguous=ambiguous, cjk=cjk)


def vietnamese_share(text: str, context: str | None = None) -> float | None:
    """Share of the counted words of ``text`` that are Vietnamese (None: nothing to count)."""
    return analyze(text, context).vietnamese_share


def drifts(text: str, context: str | None = None, threshold: float = DRIFT_THRESHOLD) -> bool:
    """A completion drifts when it contains a CJK character or less than ``threshold`` of its
    counted words are Vietnamese (a text of numbers and formulas does not drift)."""
    return analyze(text, context).drifts(threshold)


def drift_metrics(completions: Sequence[str], contexts: Sequence[str | None] | None = None) -> dict[str, float]:
    """Evaluation metrics over completions (one context, e.g. the question, per completion):

    - ``vi_word_share``: mean Vietnamese share over the completions that have counted words;
    - ``drift_rate``: share of completions that drift (CJK characters or mostly non-Vietnamese);
    - ``cjk_rate``: share of completions containing a CJK character.
    """
    if contexts is None:
        contexts = [None] * len(completions)
    shares, drifting, cjk = [], 0, 0
    for text, context in zip(completions, contexts, strict=True):
        counts = analyze(text, context)
        share = counts.vietnamese_share
        if share is not None:
            shares.append(share)
        drifting += counts.drifts()
        cjk += counts.cjk > 0
    n = max(1, len(completions))
    return {"vi_word_share": sum(shares) / len(shares) if shares else 1.0, "drift_rate": drifting / n,
            "cjk_rate": cjk / n}


# ------------------------------------------------------------------------------------ the reward
def prompt_text(prompt: str | Sequence[dict[str, Any]] | None) -> str:
    """All text of a prompt: a string, or every message's content of a chat prompt."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(completion_text(message) for message in prompt)


def vietnamese(completions: Sequence[Any], prompts: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
    """GRPO reward: the share of the completion's words that are Vietnamese, 0.0-1.0.

    Numbers and formulas do not count, nor do foreign words that the prompt uses (names); a
    completion with no counted word (``#### 42``) scores 1.0: nothing in it is another language.
    Chinese characters count one word each, so a reasoning that switches to Chinese loses about
    as much as one that switches to English.
    """
    contexts = [prompt_text(p) for p in prompts] if prompts is not None else [None] * len(completions)
    scores = []
    for c, context in zip(completions, contexts, strict=True):
        share = vietnamese_share(completion_text(c), context)
        scores.append(1.0 if share is None else share)
    return scores
