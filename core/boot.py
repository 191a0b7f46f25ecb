"""Import Unsloth before anything else touches transformers, TRL or PEFT - unless the run asked for
the plain Hugging Face backend.

Unsloth patches transformers/TRL/PEFT classes when it is imported, so it must come first; but a
`backend: hf` run (the fair baseline for benchmarks) must not be patched at all. The backend is
only known after the config is parsed, and parsing needs TRL, so this module pre-scans the command
line and the YAML for the one key it needs. Every recipe's first import is `core.boot`.

Two more things happen here because nothing heavy is imported yet: the third-party lines known to
be harmless are filtered (core/noise.py; some libraries print them while being imported), and a
local data path that does not exist stops the command with the closest existing names
(core/sources.py) before 10 s of torch and Unsloth imports.
"""

from __future__ import annotations

import os
import sys

from core.noise import quiet_known_noise, quiet_prints
from core.sources import check_data_arguments

quiet_known_noise()  # before torch, transformers and Unsloth are imported (VIRL_VERBOSE=1: nothing hidden)


def config_file(argv: list[str]) -> dict:
    """The YAML named by `--config`, as read before the real parser runs ({} when absent or not
    readable: the real parser reports a bad file properly)."""
    if "--config" not in argv:
        return {}
    index = argv.index("--config")
    if index + 1 >= len(argv) or not os.path.isfile(argv[index + 1]):
        return {}
    import yaml

    try:
        with open(argv[index + 1], encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def requested_backend(argv: list[str], config: dict | None = None) -> str:
    """The `backend` a command line asks for: `--backend X`, `--backend=X`, or `backend:` in --config."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    config = config_file(argv) if config is None else config
    return str(config["backend"]) if config.get("backend") else "unsloth"


_CONFIG = config_file(sys.argv[1:])
check_data_arguments(sys.argv[1:], _CONFIG)  # a misspelt data path: one error line, before the imports
BACKEND = requested_backend(sys.argv[1:], _CONFIG)
if BACKEND == "unsloth" and os.environ.get("VIRL_NO_UNSLOTH") != "1":
    with quiet_prints("unsloth"):  # its CPU banner says "training on CPU" to `make chat` too
        import unsloth  # noqa: F401  (patches transformers, TRL and PEFT; must precede them)
