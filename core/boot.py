"""Import Unsloth before anything else touches transformers, TRL or PEFT - unless the run asked for
the plain Hugging Face backend.

Unsloth patches transformers/TRL/PEFT classes when it is imported, so it must come first; but a
`backend: hf` run (the fair baseline for benchmarks) must not be patched at all. The backend is
only known after the config is parsed, and parsing needs TRL, so this module pre-scans the command
line and the YAML for the one key it needs. Every recipe's first import is `core.boot`.

Before anything else it filters the third-party lines known to be harmless (core/noise.py): some
libraries print them while being imported, so this is the one place early enough.
"""

from __future__ import annotations

import os
import sys

from core.noise import quiet_known_noise, quiet_prints

quiet_known_noise()  # before torch, transformers and Unsloth are imported (VIRL_VERBOSE=1: nothing hidden)


def requested_backend(argv: list[str]) -> str:
    """The `backend` a command line asks for: `--backend X`, `--backend=X`, or `backend:` in --config."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 < len(argv) and os.path.isfile(argv[index + 1]):
            import yaml

            try:
                with open(argv[index + 1], encoding="utf-8") as fh:
                    config = yaml.safe_load(fh)
            except yaml.YAMLError:
                return "unsloth"  # the real parser reports the YAML error properly
            if isinstance(config, dict) and config.get("backend"):
                return str(config["backend"])
    return "unsloth"


BACKEND = requested_backend(sys.argv[1:])
if BACKEND == "unsloth" and os.environ.get("VIRL_NO_UNSLOTH") != "1":
    with quiet_prints("unsloth"):  # its CPU banner says "training on CPU" to `make chat` too
        import unsloth  # noqa: F401  (patches transformers, TRL and PEFT; must precede them)
