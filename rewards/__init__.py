"""Reward functions for GRPO, by name.

A YAML config lists rewards as strings (weights live next to them in the YAML, as TRL's
``reward_weights``); `get_reward_funcs` turns each string into a callable with TRL's contract
``f(completions, **kwargs) -> list[float | None]``. One string is one of:

- a registry name: ``"correctness"``, ``"format"``, ... (see ``sorted(REWARDS)``);
- a parameterised reward, ``"<factory>:<arg>,<arg>,<key>=<value>"`` with the arguments passed to
  the factory in `FACTORIES`: ``"length_penalty:800"`` -> ``make_length_penalty(800)``, named
  ``length_penalty_800``; ``"length_penalty:800,-0.5"``; ``"repetition_penalty:ngram_size=3"``.
  Arguments are read as int, then float, then true/false, else kept as text;
- a dotted import path to your own function: ``"my_pkg.my_rewards:brevity"`` or
  ``"my_pkg.my_rewards.brevity"``.

This package stays pure Python: rewards that need torch (a classifier) are registered in
`FACTORIES` as a dotted-path string and only imported when a config asks for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from rewards.language import vietnamese
from rewards.math import (
    correctness,
    correctness_strict,
    format_soft,
    format_strict,
    make_length_penalty,
    make_repetition_penalty,
    repetition_penalty,
    tag_count,
)

DEFAULT_MAX_CHARS = 1500

REWARDS: dict[str, Callable[..., list[float | None]]] = {
    "correctness": correctness,
    "correctness_strict": correctness_strict,
    # The default format reward gives partial credit (0.5 for "Đáp số: 42", \boxed{}...): an
    # untrained model rarely writes "####" and a 0/1 signal would give GRPO nothing to compare.
    "format": format_soft,
    "format_soft": format_soft,
    "format_strict": format_strict,
    "tag_count": tag_count,
    "repetition_penalty": repetition_penalty,
    "length_penalty": make_length_penalty(DEFAULT_MAX_CHARS),
    # Share of the completion's words that are Vietnamese (rewards/language.py): against drifting
    # into Chinese or English mid-reasoning.
    "vietnamese": vietnamese,
}

# Factories for parameterised rewards ("name:args"). A value given as a "module:function" string
# is imported only when used, so heavy dependencies stay out of `import rewards`.
FACTORIES: dict[str, Callable[..., Callable[..., list[float | None]]] | str] = {
    "length_penalty": make_length_penalty,
    "repetition_penalty": make_repetition_penalty,
    # ---- classifier rewards (rewards/sentiment.py imports torch: register it as a string) ----
    # "sentiment:<classifier dir>,label=negative,score=logit" (see rewards/sentiment.py)
    "sentiment": "rewards.sentiment:make_sentiment_reward",
}


def _parse_arg(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _import_callable(path: str) -> Callable[..., Any]:
    """``"pkg.module:function"`` or ``"pkg.module.function"`` -> the function."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward {path!r}: cannot import module {module_name!r} ({err})") from err
    func = vars(module).get(attr)
    if not callable(func):
        raise ValueError(f"reward {path!r}: module {module_name!r} has no callable {attr!r}")
    return func


def _unknown(name: str) -> ValueError:
    params = ", ".join(f"{k}:<args>" for k in sorted(FACTORIES))
    return ValueError(
        f"unknown reward {name!r}; known rewards: {sorted(REWARDS)}; parameterised: {params}; "
        "or a dotted path 'package.module:function'"
    )


def get_reward_func(name: str | Callable[..., Any]) -> Callable[..., list[float | None]]:
    """One reward callable from a name (see the module docstring); a callable passes through."""
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a reward is given by name (str), got {type(name).__name__}: {name!r}")
    name = name.strip()
    if name in REWARDS:
        return REWARDS[name]
    base, sep, arg_text = name.partition(":")
    if base in FACTORIES:
        factory = FACTORIES[base]
        if isinstance(factory, str):
            factory = _import_callable(factory)
        args, kwargs = [], {}
        for part in filter(None, (p.strip() for p in arg_text.split(","))):
            key, eq, value = part.partition("=")
            if eq:
                kwargs[key.strip()] = _parse_arg(value.strip())
            else:
                args.append(_parse_arg(part))
        try:
            return factory(*args, **kwargs)
        except TypeError as err:
            raise ValueError(f"reward {name!r}: bad arguments for {base!r} ({err})") from err
    if "." in base:
        return _import_callable(name)
    raise _unknown(name)


def get_reward_funcs(names: list[str | Callable[..., Any]]) -> list[Callable[..., list[float | None]]]:
    """Reward callables for a list of names, in order (for ``GRPOTrainer(reward_funcs=...)``).

    Raises ValueError with one line listing the known names when a name is unknown.
    """
    return [get_reward_func(name) for name in names]
