"""Third-party output known to be harmless here, filtered once at startup; `VIRL_VERBOSE=1` shows it.

Every command used to open with lines that are not the user's problem: a torch deprecation aimed
at torchao's authors, a bitsandbytes kernel that only 4-bit on a CPU would use, Unsloth's "training
on CPU" banner in front of `make chat`. A newcomer reads them as errors, and real warnings drown
in them. So each harmless line is named here once - where it comes from and what it says - and
filtered at startup: `core.boot` (every training, evaluation and chat command, before Unsloth is
imported) and `core.cli.run_cli` (every other command) call `quiet_known_noise`.

A rule never silences a whole library or a whole warning category: a logging rule drops only the
records of one logger whose message matches, a print rule only matching lines printed while one
module is imported, an env rule sets the library's own switch for exactly that notice. Anything
new still reaches the terminal, and tests/test_noise.py fails when a known-noise line reappears
in an entry point's output, so new noise shows up in review rather than in a user's terminal.

`VIRL_VERBOSE=1` turns all of it off: every line of every library, and the trainers' full metric
dicts on the console (core/runs.py), as they print them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    """One known-harmless line.

    Fields:
        kind (`str`): how it is emitted: `log` (a `logging` record), `print` (written to stdout
            while `source` is imported) or `env` (the library has a switch for this notice).
        source (`str`): the logger name, the imported module, or the environment variable.
        pattern (`str`): a regular expression searched in the line; tests scan outputs with it.
        why (`str`): why it is harmless here.
        example (`str`): the line as the library writes it (tests feed it through the rule).
    """

    kind: str
    source: str
    pattern: str
    why: str
    example: str


KNOWN_NOISE: tuple[Noise, ...] = (
    Noise("log", "torch.utils._pytree",
          r"is an Enum subclass and is now natively supported by torch\.compile",
          "torchao (imported by transformers) registers two enums the old way; torch announces a future "
          "change to torchao's authors, nothing in this project calls it",
          "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an "
          "opaque value type. Calling register_constant() on Enum subclasses is deprecated and will be an error "
          "in a future release."),
    Noise("log", "bitsandbytes.backends.cpu.ops",
          r"Failed to load CPU gemm_4bit_forward from kernels-community",
          "an optional faster kernel for 4-bit matmuls on a CPU (the `kernels` package); bitsandbytes uses "
          "its own, and 4-bit on a CPU is opt-in",
          "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make "
          "sure you already `pip install kernels` and the kernels >= 0.11.1"),
    Noise("print", "unsloth",
          r"^Unsloth \S+: no GPU found, training on CPU",
          "printed on import by every command, inference too; the project's own [model] and [precision] "
          "lines say where and how the model runs",
          "Unsloth 2026.10.9: no GPU found, training on CPU (x86_64, 1 threads, bfloat16 = True). CPU training "
          "is much slower than GPU training; supported: text LoRA / full finetuning with SFTTrainer. Set "
          "UNSLOTH_DISABLE_CPU_FALLBACK=1 to raise instead."),
    Noise("log", "transformers.trainer_utils",
          r"mtime may not be reliable on this filesystem",
          "checkpoints are then ordered by their step number, which is what resuming relies on anyway",
          "mtime may not be reliable on this filesystem, falling back to numerical ordering"),
    Noise("log", "transformers.generation.utils",
          r"Passing `generation_config` together with generation-related arguments=\(\{'(output_scores|"
          r"return_dict_in_generate)', '(output_scores|return_dict_in_generate)'\}\)",
          "TRL's PPO rollout (batch_generation) passes these two next to its generation config; only that "
          "call's pair of arguments is matched, so the same warning about the project's own calls still shows",
          "Passing `generation_config` together with generation-related arguments=({'output_scores', "
          "'return_dict_in_generate'}) is deprecated and will be removed in future versions. Please pass either "
          "a `generation_config` object OR all generation parameters explicitly, but not both."),
    Noise("env", "TRL_EXPERIMENTAL_SILENCE",
          r"You are importing from 'trl\.experimental'",
          "PPO lives in trl.experimental in TRL 1.12 (the last release that has it); TRL's own switch "
          "silences exactly this notice",
          "TRLExperimentalWarning: You are importing from 'trl.experimental'. APIs here are unstable and may "
          "change or be removed without notice. Silence this warning by setting environment variable "
          "TRL_EXPERIMENTAL_SILENCE=1."),
)

VERBOSE_ENV = "VIRL_VERBOSE"

_installed = False


def verbose() -> bool:
    """True when the user asked to see every line (`VIRL_VERBOSE=1`)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def noise_lines(text: str) -> list[str]:
    """The lines of `text` that match a known-noise pattern (for tests and reviews)."""
    patterns = [re.compile(rule.pattern) for rule in KNOWN_NOISE]
    # A print rule's pattern is anchored at the line start; progress bars and torch's log prefix
    # put other text before a line, so search each line and its part after the last "\r".
    return [line for line in text.splitlines()
            if any(p.search(line) or p.search(line.rsplit("\r", 1)[-1]) for p in patterns)]


class _DropMatching(logging.Filter):
    """Drops one logger's records whose message matches; every other record passes."""

    def __init__(self, rule: Noise):
        super().__init__()
        self.rule = rule
        self.pattern = re.compile(rule.pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge: let the logger report it
            return True
        return not self.pattern.search(message)


def quiet_known_noise() -> None:
    """Install the logging and env rules of `KNOWN_NOISE` (once per process; nothing under
    `VIRL_VERBOSE=1`). Call it before the libraries are imported: some speak on import."""
    global _installed
    if _installed or verbose():
        return
    _installed = True
    for rule in KNOWN_NOISE:
        if rule.kind == "log":
            logging.getLogger(rule.source).addFilter(_DropMatching(rule))
        elif rule.kind == "env" and not os.environ.get(rule.source):  # a value the user set is kept
            os.environ[rule.source] = "1"


@contextlib.contextmanager
def quiet_prints(module: str) -> Iterator[None]:
    """Hold back what is printed to stdout while `module` is imported inside this block, and pass
    on every line except the print rules' for that module (all of it under `VIRL_VERBOSE=1`).

    Lines arrive when the block ends, in order; if the import fails they still arrive, before the
    error."""
    rules = [re.compile(r.pattern) for r in KNOWN_NOISE if r.kind == "print" and r.source == module]
    if verbose() or not rules:
        yield
        return
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held):
            yield
    finally:
        for line in held.getvalue().splitlines(keepends=True):
            if not any(p.search(line) for p in rules):
                sys.stdout.write(line)
        sys.stdout.flush()
