"""Seeded Vietnamese arithmetic word problems in the ``hllj/vi_gsm8k`` schema.

The offline demo trains a 135M model on the CPU, so the problems are short, the numbers small and
the explanation (the SFT target) one equation per step on the running result::

    {"question": "Lan có 12 quả táo. Lan được mẹ cho thêm 7 quả táo. Sau đó, Lan ăn mất 5 quả táo.
                  Hỏi Lan còn lại bao nhiêu quả táo?",
     "explanation": "12 + 7 = 19; 19 - 5 = 14", "answer": "14", "steps": 2}

Rules the generator keeps:

- 1 to 3 steps; each step applies one of ``+ - * /`` to the running result. The explanation writes
  them ``+ - x :`` as Vietnamese schools do; it carries no ``#### answer`` line (the toolkit adds it).
- Numbers: a first ``+``/``-`` uses operands 2-50; a first ``x``/``:`` stays inside the 10 x 10 table
  (a 1-step problem is therefore never harder than that). Later steps add or subtract 2-50, multiply
  by 2-5 or divide by 2-10. Division is exact, subtraction leaves at least 1, every intermediate
  result is at most 1000.
- About `MONEY_RATE` of the problems are about money: the same arithmetic in thousands of đồng,
  written the Vietnamese way in the question ("15.000 đồng") and as plain digits in the explanation
  and answer ("15000 + 7000 = 22000", "22000").

Out of distribution (`make_ood`, ``--n_test_ood``): a second test set with the same templates but
number ranges the other splits never draw (`OOD_RANGES`): ``+``/``-`` operands 51-99, a first
``x``/``:`` outside the 10 x 10 table (11-15), later factors 6-9 and divisors 11-15 (so chains with
two divisions are rarer there: most cannot be built from those numbers). Whether a
trained policy carries its arithmetic over to numbers it never saw is a question about
generalisation; train, test and dev do not change when it is written.

Command line (refuses to overwrite existing files without ``--overwrite``)::

    python -m data.synthetic --n_train 400 --n_test 200 --seed 0 --out DIR [--n_dev 64] [--n_test_ood 200]
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.cli import ArgumentParser
from core.files import write_jsonl_atomic
from data.common import DataError

OPS = ("+", "-", "*", "/")
SYMBOLS = {"+": "+", "-": "-", "*": "x", "/": ":"}
MAX_STEPS = 3
MAX_VALUE = 1000  # bound on every running result (in thousands of đồng for money problems)
SMALL = 50  # largest operand of an addition or subtraction
TABLE = 10  # a first x or : stays inside the 10 x 10 table; later divisors too
LATER_FACTOR = 5  # a later x multiplies by at most this
MONEY_RATE = 0.1
MONEY_UNIT = 1000  # money problems do their arithmetic in thousands of đồng


@dataclass(frozen=True)
class NumberRanges:
    """Where a problem's numbers are drawn from (inclusive bounds; money in thousands of đồng).

    Fields: ``add`` the operand of a ``+``/``-`` (and the start value before one), ``table`` both
    numbers of a first ``x`` (and the divisor and quotient of a first ``:``), ``later_factor`` and
    ``later_divisor`` a later step's ``x`` and ``:``, ``max_value`` the bound on every running result.
    """

    add: tuple[int, int] = (2, SMALL)
    table: tuple[int, int] = (2, TABLE)
    later_factor: tuple[int, int] = (2, LATER_FACTOR)
    later_divisor: tuple[int, int] = (2, TABLE)
    max_value: int = MAX_VALUE


TRAINING_RANGES = NumberRanges()  # train, test and dev
# Every operand outside what TRAINING_RANGES can draw, kept as close to it as that allows: two-digit
# additions, the times table just past 10. Results stay below 5000 (money: 5 million đồng).
OOD_RANGES = NumberRanges(add=(SMALL + 1, 99), table=(TABLE + 1, 15), later_factor=(LATER_FACTOR + 1, 9),
                          later_divisor=(TABLE + 1, 15), max_value=5000)


@dataclass(frozen=True)
class _T:
    """One sentence template. Fields: {h} holder, {g} giver, {f} friend, {r} division recipient,
    {o} counted object ("quả táo"), {u} unit, {n} noun, {amt} "số táo", {box} container,
    {good} something to buy ("một quyển vở"), {a} start value, {b} this step's operand."""

    text: str
    kinds: tuple[str, ...] | None = None  # object kinds it fits; None: every kind
    last_only: bool = False  # only as the final step: it leaves no one to act in a later step
    joinable: bool = True  # may take a connector such as "sau đó, " (False: has its own)
    holder: str = "mỗi {r}"  # division only: who holds the result afterwards
    person: bool = False  # questions only: needs a person as the holder


@dataclass(frozen=True)
class _Object:
    unit: str
    noun: str
    box: str
    amount: str
    kind: str


# (name, adult): adults get other givers, friends and division recipients.
NAMES = (
    ("Lan", False), ("Minh", False), ("Hùng", False), ("Mai", False), ("An", False),
    ("Bình", False), ("Hoa", False), ("Nam", False), ("Linh", False), ("Tuấn", False),
    ("Hà", False), ("Dũng", False), ("Thảo", False), ("Khoa", False), ("Ngọc", False),
    ("Phúc", False), ("bà Tư", True), ("chú Ba", True), ("cô Hạnh", True), ("ông Năm", True),
    ("bác Sáu", True), ("anh Quân", True), ("chị Yến", True),
)
GIVERS = {False: ("mẹ", "bố", "bà", "ông", "cô giáo", "anh trai", "chị gái"),
          True: ("hàng xóm", "người quen", "con trai", "con gái")}
FRIENDS = {False: ("bạn", "em", "bạn cùng lớp"), True: ("hàng xóm", "người quen", "cháu")}
RECIPIENTS = {False: (("bạn", False), ("em", False)), True: (("cháu", False), ("người", True))}
CONNECTORS = ("sau đó, ", "tiếp theo, ", "hôm sau, ", "buổi chiều, ")

OBJECTS = (
    _Object("quả", "táo", "túi", "số táo", "fruit"),
    _Object("quả", "cam", "giỏ", "số cam", "fruit"),
    _Object("viên", "kẹo", "gói", "số kẹo", "food"),
    _Object("cái", "bánh", "hộp", "số bánh", "food"),
    _Object("cái", "bút", "hộp", "số bút", "item"),
    _Object("quyển", "vở", "thùng", "số vở", "item"),
    _Object("viên", "bi", "túi", "số bi", "item"),
    _Object("con", "gà", "chuồng", "số gà", "animal"),
    _Object("con", "vịt", "chuồng", "số vịt", "animal"),
    _Object("kg", "gạo", "bao", "số gạo", "grain"),
    _Object("lít", "nước", "can", "số lít nước", "liquid"),
    _Object("bông", "hoa", "bó", "số hoa", "flower"),
)
# (unit, noun) of things bought in money problems: "một quyển vở", "3 vé xem phim".
GOODS = (
    ("quyển", "vở"), ("cái", "bút"), ("hộp", "sữa"), ("cái", "bánh mì"), ("vé", "xem phim"),
    ("quyển", "truyện"), ("kg", "táo"),
)

_PERSONAL_Q = {
    "+": (_T("hỏi {h} có tất cả bao nhiêu {o}?"), _T("hỏi lúc này {h} có bao nhiêu {o}?"),
          _T("hỏi bây giờ {h} có bao nhiêu {o}?"), _T("hỏi cuối cùng {h} có bao nhiêu {o}?")),
    "-": (_T("hỏi {h} còn lại bao nhiêu {o}?"), _T("hỏi {h} còn bao nhiêu {o}?"),
          _T("hỏi lúc này {h} còn bao nhiêu {o}?"), _T("hỏi cuối cùng {h} còn lại bao nhiêu {o}?")),
    "*": (_T("hỏi {h} có tất cả bao nhiêu {o}?"), _T("hỏi bây giờ {h} có bao nhiêu {o}?"),
          _T("hỏi lúc này {h} có bao nhiêu {o}?")),
    "/": (_T("hỏi {h} có bao nhiêu {o}?"), _T("hỏi {h} được bao nhiêu {o}?", person=True),
          _T("hỏi {h} nhận được bao nhiêu {o}?", person=True)),
}

# Counted things (and kg / litres). "*first" opens the story with boxes: {a} per box, {b} boxes.
COUNT_TEMPLATES: dict[str, tuple[_T, ...]] = {
    "intro": (
        _T("{h} có {a} {o}."), _T("lúc đầu {h} có {a} {o}."), _T("ban đầu {h} có {a} {o}."),
        _T("{h} đang có {a} {o}."), _T("hôm qua {h} có {a} {o}."), _T("sáng nay {h} có {a} {o}."),
    ),
    "*first": (
        _T("mỗi {box} có {a} {o}. {h} có {b} {box} như vậy."),
        _T("{h} có {b} {box} {n}, mỗi {box} có {a} {o}."),
        _T("{h} mua {b} {box} {n}, mỗi {box} có {a} {o}."),
        _T("mỗi {box} đựng {a} {o}. {h} mua {b} {box} như thế."),
        _T("{g} tặng {h} {b} {box} {n}, mỗi {box} có {a} {o}."),
        _T("{h} xếp {n} vào {b} {box}, mỗi {box} {a} {u}.", kinds=("fruit", "food", "item", "animal")),
        _T("một {box} có {a} {o}. {h} có {b} {box} giống nhau như thế."),
        _T("{h} có {b} {box}, trong mỗi {box} có {a} {o}."),
        _T("có {b} {box} {n}, mỗi {box} có {a} {o}. tất cả là của {h}."),
    ),
    "+": (
        _T("{h} mua thêm {b} {o}."),
        _T("{h} được {g} cho thêm {b} {o}."),
        _T("{h} nhận thêm {b} {o} từ {g}."),
        _T("{g} cho {h} thêm {b} {o}."),
        _T("{h} có thêm {b} {o}."),
        _T("{h} được tặng thêm {b} {o}."),
        _T("{g} mua cho {h} thêm {b} {o}."),
        _T("{h} ra cửa hàng mua thêm {b} {o}."),
        _T("{h} hái thêm {b} {o}.", kinds=("fruit", "flower")),
        _T("{h} làm thêm {b} {o}.", kinds=("food",)),
        _T("{h} nuôi thêm {b} {o}.", kinds=("animal",)),
        _T("{h} đổ thêm {b} {o} vào bể.", kinds=("liquid",)),
    ),
    "-": (
        _T("{h} cho {f} {b} {o}."),
        _T("{h} tặng {f} {b} {o}."),
        _T("{h} bán đi {b} {o}."),
        _T("{h} đem cho {f} {b} {o}."),
        _T("{h} đã bán {b} {o}."),
        _T("{h} dùng hết {b} {o}.", kinds=("fruit", "food", "item", "grain", "liquid", "flower")),
        _T("{h} ăn mất {b} {o}.", kinds=("fruit", "food")),
        _T("{h} làm rơi mất {b} {o}.", kinds=("fruit", "food", "item")),
        _T("{h} làm mất {b} {o}.", kinds=("item",)),
        _T("{b} {o} của {h} chạy mất.", kinds=("animal",)),
        _T("{h} nấu hết {b} {o}.", kinds=("grain",)),
        _T("{h} tưới cây hết {b} {o}.", kinds=("liquid",)),
        _T("{h} đổ đi {b} {o}.", kinds=("liquid",)),
        _T("{b} {o} của {h} bị héo nên phải bỏ đi.", kinds=("flower",)),
    ),
    "*": (
        _T("{amt} của {h} tăng lên gấp {b} lần."),
        _T("{h} mua thêm, nên {amt} tăng lên gấp {b} lần."),
        _T("{g} cho thêm, nên {amt} của {h} gấp {b} lần lúc trước."),
        _T("cuối tuần, {amt} của {h} nhiều gấp {b} lần trước đó.", joinable=False),
        _T("{amt} của {h} được nhân lên gấp {b} lần."),
        _T("sau một tháng, {amt} của {h} đã gấp {b} lần lúc trước.", joinable=False),
        _T("{h} làm cho {amt} của mình tăng gấp {b} lần."),
        _T("nhờ được tặng thêm, {amt} của {h} gấp {b} lần trước đó.", joinable=False),
        _T("đàn {n} của {h} sinh sôi, tăng lên gấp {b} lần.", kinds=("animal",)),
    ),
    "/": (
        _T("{h} chia đều {amt} cho {b} {r}."),
        _T("{h} chia đều {amt} của mình cho {b} {r}."),
        _T("{h} đem {amt} chia đều cho {b} {r}."),
        _T("{amt} của {h} được chia đều cho {b} {r}."),
        _T("{h} phát đều {amt} cho {b} {r}."),
        _T("{h} chia đều {amt} cho {b} {r}, ai cũng được như nhau."),
        _T("{h} muốn chia đều {amt} cho {b} {r}.", last_only=True),
        _T("{h} chia {amt} thành {b} phần bằng nhau.", last_only=True, holder="mỗi phần"),
        _T("{h} chia đều {amt} vào {b} {box}.", last_only=True, holder="mỗi {box}"),
    ),
    **{"?" + op: qs for op, qs in _PERSONAL_Q.items()},
}

_MONEY_DIVIDE = (
    _T("{h} chia đều {amt} cho {b} {r}."),
    _T("{h} chia đều {amt} của mình cho {b} {r}."),
    _T("{h} đem {amt} chia đều cho {b} {r}."),
    _T("{h} phát đều {amt} cho {b} {r}."),
)

# Money the holder has: {a} and {b} of + and - are amounts written "15.000 đồng".
MONEY_HELD_TEMPLATES: dict[str, tuple[_T, ...]] = {
    "intro": (
        _T("{h} có {a}."), _T("lúc đầu {h} có {a}."), _T("{h} để dành được {a}."),
        _T("trong ví của {h} có {a}."), _T("{g} cho {h} {a}."), _T("{h} có {a} tiền tiết kiệm."),
    ),
    "+": (
        _T("{h} được {g} cho thêm {b}."), _T("{g} cho {h} thêm {b}."), _T("{h} để dành thêm được {b}."),
        _T("{h} được thưởng thêm {b}."), _T("{h} nhận thêm {b} tiền mừng tuổi."),
        _T("{h} bán giấy vụn được thêm {b}."), _T("{h} tiết kiệm thêm {b}."), _T("{g} gửi cho {h} thêm {b}."),
    ),
    "-": (
        _T("{h} mua {good} hết {b}."), _T("{h} mua {good} giá {b}."), _T("{h} tiêu hết {b}."),
        _T("{h} đóng góp {b} vào quỹ từ thiện."), _T("{h} dùng {b} để mua {good}."),
        _T("{h} cho {f} mượn {b}."), _T("{h} ủng hộ các bạn vùng lũ {b}."), _T("{h} trả {b} tiền ăn sáng."),
    ),
    "*": (
        _T("{amt} của {h} tăng lên gấp {b} lần."),
        _T("{h} để dành tiếp, {amt} tăng lên gấp {b} lần."),
        _T("sau một tháng, {amt} tiết kiệm của {h} đã gấp {b} lần lúc trước.", joinable=False),
        _T("nhờ được thưởng, {amt} của {h} gấp {b} lần trước đó.", joinable=False),
    ),
    "/": _MONEY_DIVIDE,
    "?+": (_T("hỏi {h} có tất cả bao nhiêu tiền?"), _T("hỏi lúc này {h} có bao nhiêu tiền?")),
    "?-": (_T("hỏi {h} còn lại bao nhiêu tiền?"), _T("hỏi {h} còn bao nhiêu tiền?")),
    "?*": (_T("hỏi lúc này {h} có bao nhiêu tiền?"), _T("hỏi bây giờ {h} có bao nhiêu tiền?")),
    "?/": (_T("hỏi {h} có bao nhiêu tiền?"), _T("hỏi {h} được bao nhiêu tiền?", person=True)),
}

# Money the holder must pay, opened by a purchase: {a} the price of one {u} {n}, {b} how many.
_PAY_Q = (_T("hỏi {h} phải trả tất cả bao nhiêu tiền?"), _T("hỏi {h} phải trả bao nhiêu tiền?"),
          _T("hỏi {h} cần trả bao nhiêu tiền?"))
MONEY_COST_TEMPLATES: dict[str, tuple[_T, ...]] = {
    "*first": (
        _T("mỗi {u} {n} giá {a}. {h} mua {b} {u}."),
        _T("{h} mua {b} {u} {n}, mỗi {u} giá {a}."),
        _T("một {u} {n} có giá {a}. {h} mua {b} {u} như vậy."),
        _T("{h} mua {b} {u} {n}, giá mỗi {u} là {a}."),
        _T("{h} cần mua {b} {u} {n}. mỗi {u} giá {a}."),
    ),
    "+": (
        _T("{h} mua thêm {good} giá {b}."), _T("{h} mua thêm {good} hết {b}."),
        _T("{h} còn phải trả thêm {b} tiền gửi xe."),
    ),
    "-": (
        _T("{h} được giảm giá {b}."), _T("cửa hàng bớt cho {h} {b}."), _T("{h} dùng phiếu giảm giá {b}."),
    ),
    "*": (
        _T("{h} mua như vậy trong {b} ngày."), _T("{h} mua như thế {b} lần."),
        _T("tuần này {h} mua như vậy {b} lần.", joinable=False),
    ),
    "/": (
        _T("{h} chia đều số tiền phải trả cho {b} người.", holder="mỗi người"),
        _T("số tiền đó được chia đều cho {b} người cùng trả.", holder="mỗi người"),
        _T("{h} rủ bạn, cả nhóm {b} người chia đều số tiền phải trả.", holder="mỗi người"),
    ),
    "?+": _PAY_Q, "?-": _PAY_Q, "?*": _PAY_Q, "?/": _PAY_Q,
}


def vi_number(value: int) -> str:
    """Vietnamese digit grouping: 1250000 -> "1.250.000" ("." groups thousands)."""
    return f"{value:,}".replace(",", ".")


def _pick_numbers(rng: random.Random, ops_seq: Sequence[str],
                  ranges: NumberRanges = TRAINING_RANGES) -> tuple[int, list[int]] | None:
    """Start value and one operand per step (money in thousands), or None when a draw hits a bound.

    With `TRAINING_RANGES` the draws are the ones this generator has always made (same calls on
    `rng`), so a seed gives the same problems as before number ranges were an option."""
    first = ops_seq[0]
    add_lo, add_hi = ranges.add
    divisor = 0
    if first == "*":
        start = rng.randint(*ranges.table)
    elif first == "/":
        divisor = rng.randint(*ranges.table)
        start = divisor * rng.randint(*ranges.table)
    else:
        start = rng.randint(add_lo + 1 if first == "-" else add_lo, add_hi)
    value, operands = start, []
    for i, op in enumerate(ops_seq):
        if op == "+":
            hi = min(add_hi, ranges.max_value - value)
            if hi < add_lo:
                return None
            b = rng.randint(add_lo, hi)
            value += b
        elif op == "-":
            hi = min(add_hi, value - 1)  # never below 1: "còn lại 0" stories stall the next step
            if hi < add_lo:
                return None
            b = rng.randint(add_lo, hi)
            value -= b
        elif op == "*":
            lo, hi = ranges.table if i == 0 else (ranges.later_factor[0],
                                                  min(ranges.later_factor[1], ranges.max_value // value))
            if hi < lo:
                return None
            b = rng.randint(lo, hi)
            value *= b
        else:
            if i == 0:
                b = divisor
            else:
                lo, hi = ranges.later_divisor
                choices = [d for d in range(lo, hi + 1) if value % d == 0 and value // d >= 2]
                if not choices:
                    return None
                b = rng.choice(choices)
            value //= b
        operands.append(b)
    return start, operands


def _explain(start: int, ops_seq: Sequence[str], operands: Sequence[int], scale: int) -> tuple[str, int]:
    """The equation chain "a op b = c; c op d = e" and its final value (in đồng for money)."""
    value, parts = start, []
    for op, b in zip(ops_seq, operands, strict=True):
        if op == "+":
            new = value + b
        elif op == "-":
            new = value - b
        elif op == "*":
            new = value * b
        else:
            new = value // b
        right = b * scale if op in "+-" else b  # counts and divisors are not money
        parts.append(f"{value * scale} {SYMBOLS[op]} {right} = {new * scale}")
        value = new
    return "; ".join(parts), value * scale


def _capitalise(text: str) -> str:
    """Upper-case the first letter of every sentence (names inside stay as written: "bà Tư")."""
    return re.sub(r"(^|[.?!] )(\w)", lambda m: m.group(1) + m.group(2).upper(), text)


def _render(rng: random.Random, ops_seq: Sequence[str], start: int, operands: Sequence[int], money: bool) -> str:
    """Write the story for a number chain: an opening, one sentence per step, a question."""
    name, adult = rng.choice(NAMES)
    if money:
        cost = ops_seq[0] == "*"
        templates = MONEY_COST_TEMPLATES if cost else MONEY_HELD_TEMPLATES
        unit, noun = rng.choice(GOODS)
        kind, words = "money", {"u": unit, "n": noun, "o": "tiền", "amt": "số tiền", "box": ""}
        other_goods = [g for g in GOODS if g != (unit, noun)] if cost else list(GOODS)
    else:
        templates = COUNT_TEMPLATES
        obj = rng.choice(OBJECTS)
        kind = obj.kind
        words = {"u": obj.unit, "n": obj.noun, "o": f"{obj.unit} {obj.noun}", "amt": obj.amount, "box": obj.box}

    def show(value: int, is_amount: bool) -> str:
        return f"{vi_number(value * MONEY_UNIT)} đồng" if money and is_amount else str(value)

    def pick(key: str, last: bool = False, person: bool = True) -> _T:
        pool = [t for t in templates[key]
                if (t.kinds is None or kind in t.kinds) and (last or not t.last_only) and (person or not t.person)]
        return rng.choice(pool)

    holder, person, recipient = name, True, ""

    def fill(template: _T, b: str = "") -> str:
        good_unit, good_noun = rng.choice(other_goods) if money else ("", "")
        return template.text.format(
            h=holder, g=rng.choice(GIVERS[adult]), f=rng.choice(FRIENDS[adult]), r=recipient,
            a=show(start, True), b=b, good=f"một {good_unit} {good_noun}", **words,
        )

    sentences, used_connectors = [], []
    if ops_seq[0] == "*":
        sentences.append(fill(pick("*first"), show(operands[0], False)))
        first_step = 1
    else:
        sentences.append(fill(pick("intro")))
        first_step = 0
    for i in range(first_step, len(ops_seq)):
        op, last = ops_seq[i], i == len(ops_seq) - 1
        template = pick(op, last=last)
        if op == "/":
            choices = [rp for rp in RECIPIENTS[adult] if f"mỗi {rp[0]}" != holder]
            recipient, next_adult = rng.choice(choices)
        sentence = fill(template, show(operands[i], op in "+-"))
        if template.joinable and rng.random() < 0.4:
            connector = rng.choice([c for c in CONNECTORS if c not in used_connectors])
            used_connectors.append(connector)
            sentence = connector + sentence
        sentences.append(sentence)
        if op == "/":
            holder = template.holder.format(r=recipient, box=words["box"])
            person = holder == f"mỗi {recipient}" or holder == "mỗi người"
            adult = next_adult if person else adult
    sentences.append(fill(pick("?" + ops_seq[-1], last=True, person=person)))
    return " ".join(_capitalise(s) for s in sentences)


def _check_steps_ops(steps: int, ops: Sequence[str]) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise DataError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    bad = [op for op in ops if op not in OPS]
    if not ops or bad:
        raise DataError(f"ops must be a non-empty selection of {OPS}, got {tuple(ops)!r}")


def generate_problem(
    rng: random.Random, steps: int, ops: tuple[str, ...] = OPS, money: bool = False,
    ranges: NumberRanges = TRAINING_RANGES,
) -> dict:
    """One problem of `steps` operations drawn uniformly from `ops`, using only `rng`.

    Returns ``{"question", "explanation", "answer", "steps"}``; ``money=True`` tells the story in
    đồng (values in thousands, grouped "15.000 đồng" in the question, plain digits elsewhere);
    `ranges` says where the numbers come from.
    """
    _check_steps_ops(steps, ops)
    ops_seq = [rng.choice(ops) for _ in range(steps)]
    for _ in range(1000):  # a chain like ": : :" needs a lucky start; bounded retries keep it exact
        picked = _pick_numbers(rng, ops_seq, ranges)
        if picked is not None:
            break
    else:
        raise DataError(f"could not build a problem for the steps {ops_seq} within the value bounds")
    start, operands = picked
    scale = MONEY_UNIT if money else 1
    explanation, answer = _explain(start, ops_seq, operands, scale)
    question = _render(rng, ops_seq, start, operands, money)
    return {"question": question, "explanation": explanation, "answer": str(answer), "steps": steps}


def number_key(row: dict) -> tuple[int, ...]:
    """The underlying numbers of a problem, read off its explanation: start value, then each operand.

    Two problems with the same key are the same arithmetic in other words; splits keep keys apart.
    """
    equations = re.findall(r"(\d+) [-+x:] (\d+) =", row["explanation"])
    if not equations:
        raise DataError(f"no equation chain in explanation {row['explanation']!r}")
    return (int(equations[0][0]),) + tuple(int(right) for _, right in equations)


def _generate(
    rng: random.Random,
    n: int,
    min_steps: int = 1,
    max_steps: int = MAX_STEPS,
    step_weights: list[float] | None = None,
    ops: tuple[str, ...] = OPS,
    money_rate: float = MONEY_RATE,
    avoid: tuple[set[str], set[tuple[int, ...]]] | None = None,
    ranges: NumberRanges = TRAINING_RANGES,
) -> list[dict]:
    """`n` problems with distinct questions from `rng`, skipping the questions and number keys in `avoid`."""
    if not isinstance(n, int) or n < 0:
        raise DataError(f"the number of problems must be a non-negative integer, got {n!r}")
    if not (isinstance(min_steps, int) and isinstance(max_steps, int) and 1 <= min_steps <= max_steps <= MAX_STEPS):
        raise DataError(f"need 1 <= min_steps <= max_steps <= {MAX_STEPS}, got {min_steps} and {max_steps}")
    _check_steps_ops(min_steps, ops)
    levels = list(range(min_steps, max_steps + 1))
    if step_weights is None:
        step_weights = [1.0] * len(levels)
    if len(step_weights) != len(levels) or any(w < 0 for w in step_weights) or sum(step_weights) <= 0:
        raise DataError(
            f"step_weights needs {len(levels)} non-negative weights (steps {min_steps}..{max_steps}) "
            f"with a positive sum, got {step_weights}"
        )
    if not 0.0 <= money_rate <= 1.0:
        raise DataError(f"money_rate must lie in [0, 1], got {money_rate}")
    avoid_questions, avoid_keys = avoid if avoid is not None else (set(), set())
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(50 * n + 1000):
        if len(rows) == n:
            return rows
        steps = rng.choices(levels, weights=step_weights)[0]
        money = rng.random() < money_rate
        try:
            row = generate_problem(rng, steps, ops, money=money, ranges=ranges)
        except DataError:
            if ranges == TRAINING_RANGES:
                raise
            continue  # OOD numbers cannot build every chain (": :" needs a quotient >= 11): draw another
        question = row["question"]
        if question in seen or question in avoid_questions or number_key(row) in avoid_keys:
            continue
        seen.add(question)
        rows.append(row)
    if len(rows) == n:
        return rows
    raise DataError(f"could only make {len(rows)} distinct problems of the {n} asked; widen ops or steps")


def generate(
    n: int,
    seed: int = 0,
    min_steps: int = 1,
    max_steps: int = MAX_STEPS,
    step_weights: list[float] | None = None,
    ops: tuple[str, ...] = OPS,
    money_rate: float = MONEY_RATE,
) -> list[dict]:
    """`n` problems with distinct question text, deterministic for `seed`.

    Args:
        n: how many problems.
        seed: seeds the one `random.Random` every draw comes from.
        min_steps, max_steps: the difficulty levels (operations per problem), 1 to 3.
        step_weights: relative frequency of each level from min_steps to max_steps (default equal).
        ops: the operations allowed, a selection of ``("+", "-", "*", "/")``.
        money_rate: fraction of problems told in đồng.
    """
    return _generate(random.Random(seed), n, min_steps, max_steps, step_weights, ops, money_rate)


def make_splits(n_train: int, n_test: int, seed: int = 0, n_dev: int = 0,
                **kwargs) -> tuple[list[dict], list[dict]] | tuple[list[dict], list[dict], list[dict]]:
    """Train and test problems (and dev ones when ``n_dev > 0``), disjoint by question text and by
    `number_key`.

    Each split has its own seed stream, ``Random(f"synthetic-test-{seed}")``,
    ``Random(f"synthetic-dev-{seed}")`` and ``Random(f"synthetic-train-{seed}")`` (string seeds hash
    the same in every process). Test is drawn first and never looks at the others, so it depends
    only on (seed, n_test, kwargs) and does not move when n_train or n_dev change; a larger n_test
    extends a smaller one. Dev skips test's problems; train skips test's and dev's, and a larger
    n_train extends a smaller one. Returns (train, test), or (train, test, dev) when n_dev > 0.
    `kwargs` are `generate`'s options (min_steps, max_steps, step_weights, ops, money_rate).
    """
    test = _generate(random.Random(f"synthetic-test-{seed}"), n_test, **kwargs)
    avoid = ({row["question"] for row in test}, {number_key(row) for row in test})
    dev: list[dict] = []
    if n_dev:
        dev = _generate(random.Random(f"synthetic-dev-{seed}"), n_dev, avoid=avoid, **kwargs)
        avoid = (avoid[0] | {row["question"] for row in dev}, avoid[1] | {number_key(row) for row in dev})
    train = _generate(random.Random(f"synthetic-train-{seed}"), n_train, avoid=avoid, **kwargs)
    return (train, test, dev) if n_dev else (train, test)


def make_ood(n: int, seed: int = 0, **kwargs) -> list[dict]:
    """`n` out-of-distribution test problems: the templates and step counts of `make_splits`, the
    numbers from `OOD_RANGES`, which no train, test or dev problem draws from.

    Its own seed stream, ``Random(f"synthetic-ood-{seed}")``: writing it changes no other split.
    `kwargs` are `generate`'s options (min_steps, max_steps, step_weights, ops, money_rate).
    """
    return _generate(random.Random(f"synthetic-ood-{seed}"), n, ranges=OOD_RANGES, **kwargs)


def _summary(rows: list[dict]) -> str:
    counts = [sum(row["steps"] == s for row in rows) for s in range(1, MAX_STEPS + 1)]
    money = sum("đồng" in row["question"] for row in rows)
    return f"{len(rows)} problems (1/2/3 steps: {'/'.join(map(str, counts))}; money: {money})"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = ArgumentParser(
        prog="python -m data.synthetic", description="Write seeded Vietnamese arithmetic problems as JSONL."
    )
    parser.add_argument("--n_train", type=int, default=400, help="training problems (default 400)")
    parser.add_argument("--n_test", type=int, default=200, help="held-out problems (default 200)")
    parser.add_argument("--n_dev", type=int, default=0,
                        help="development problems, apart from both, for choosing settings (default 0: no dev.jsonl)")
    parser.add_argument("--n_test_ood", type=int, default=0,
                        help="out-of-distribution test problems, numbers no other split uses (default 0: "
                             "no test_ood.jsonl)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both split streams (default 0)")
    parser.add_argument("--out", required=True, help="directory for train.jsonl and test.jsonl")
    parser.add_argument("--min_steps", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS)
    parser.add_argument("--step_weights", type=float, nargs="+", default=None,
                        help="relative weight of each level from min_steps to max_steps, e.g. 0.6 0.4 0")
    parser.add_argument("--ops", default="".join(OPS),
                        help="operations as one string, e.g. --ops='+-' (default '+-*/')")
    parser.add_argument("--money_rate", type=float, default=MONEY_RATE, help="fraction of money problems")
    parser.add_argument("--overwrite", action="store_true", help="replace existing train/test files")
    args = parser.parse_args(argv)

    out = Path(args.out)
    paths = {"train": out / "train.jsonl", "test": out / "test.jsonl"}
    if args.n_dev:
        paths["dev"] = out / "dev.jsonl"
    if args.n_test_ood:
        paths["test_ood"] = out / "test_ood.jsonl"
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        print(f"error: {existing[0]} already exists; pass --overwrite to replace it or choose another --out",
              file=sys.stderr)
        return 1
    options = dict(min_steps=args.min_steps, max_steps=args.max_steps, step_weights=args.step_weights,
                   ops=tuple(args.ops), money_rate=args.money_rate)
    try:
        splits = dict(zip(("train", "test", "dev"),
                          make_splits(args.n_train, args.n_test, seed=args.seed, n_dev=args.n_dev, **options),
                          strict=False))
        if args.n_test_ood:
            splits["test_ood"] = make_ood(args.n_test_ood, seed=args.seed, **options)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_jsonl_atomic(paths[split], rows)
        print(f"{paths[split]}: {_summary(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
