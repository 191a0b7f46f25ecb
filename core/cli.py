"""The command-line error contract of every entry point: a user's mistake is one line, exit 2.

Every recipe, evaluation and deploy command runs its `main` through `run_cli`. `UserError` (and
its subclasses: data problems, a model that cannot be fetched) becomes `error: <message>` on
stderr and exit code 2, never a traceback; Ctrl-C says how to resume.
"""

from __future__ import annotations

import argparse
import difflib
import sys


class UserError(Exception):
    """A mistake the user can fix; `run_cli` prints it as one line and exits non-zero.

    Data problems (`data.common.DataError`) and an embedded model that cannot be fetched
    (`core.embedded.EmbeddedModelError`) are kinds of it.
    """


def run_cli(main, argv: list[str] | None = None) -> None:
    """Run a recipe's `main(argv)`, turning user mistakes into one clear line and exit code 2. On a
    CPU it first sets the thread count to the cores other jobs leave free (`core.threads`).

    It also filters the known-harmless third-party lines (`core.noise`) for the commands that do
    not start with `core.boot` (export, serve, plots, data reports); a no-op after core.boot."""
    from core.noise import quiet_known_noise
    from core.threads import apply_cpu_threads

    quiet_known_noise()
    try:
        apply_cpu_threads()
        main(argv)
    except UserError as err:
        from core.runs import remove_unused_run_dirs

        remove_unused_run_dirs()  # a run that stopped on its input leaves no empty folder behind
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with --resume to continue from the last checkpoint",
              file=sys.stderr)
        sys.exit(130)


# One name for one thing across every entry point. Names an entry point used before, mapped to
# today's; they keep working, with a notice (command lines and YAML files; core/config.py, and the
# argparse-based commands through `ArgumentParser`).
RENAMED = {
    "dataset": "dataset_name",  # evaluate.gsm8k took --dataset where the recipes take --dataset_name
    "split": "dataset_split",
    "model": "model_name_or_path",  # make chat/export/serve took --model where the rest take this
}


def renamed_option(key: str, known: set[str]) -> str | None:
    """Today's name for an old option name, when `key` is not itself an option here."""
    new = RENAMED.get(key)
    return new if new is not None and key not in known and new in known else None


def rename_flags(argv: list[str], known: set[str]) -> list[str]:
    """`--old value` / `--old=value` -> today's name, with one notice each."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            new = renamed_option(key, known)
            if new is not None:
                print(f"[args] --{key} is now --{new}; the old name still works")
                arg = f"--{new}{eq}{value}"
        out.append(arg)
    return out


def unknown_options_message(remaining: list[str], known: list[str]) -> str:
    """"unknown command-line option(s)" naming the closest real option for each misspelt flag."""
    shown = []
    for arg in remaining:
        flag = arg.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("--") else []
        shown.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    return f"unknown command-line option(s): {' '.join(shown)}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands that do not read a YAML config, under the same contract as
    `core.config.parse_args`: flags are never abbreviated, a misspelt flag names the closest real
    one, renamed options (`RENAMED`) still work, and a mistake is one `error:` line, exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def option_names(self) -> list[str]:
        return [o for action in self._actions for o in action.option_strings if o.startswith("--")]

    def parse_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        known = {o[2:] for o in self.option_names()}
        namespace, remaining = self.parse_known_args(rename_flags(argv, known), namespace)
        if remaining:
            self.error(unknown_options_message(remaining, self.option_names()))
        return namespace

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

