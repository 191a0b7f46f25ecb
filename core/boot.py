"""Import Unsloth before anything else touches transformers, TRL or PEFT - unless the run asked for
the plain Hugging Face backend.

Unsloth patches transformers/TRL/PEFT classes when it is imported, so it must come first; but a
`backend: hf` run (the fair baseline for benchmarks) must not be patched at all. The backend is
only known after the config is parsed, and parsing needs TRL, so this module pre-scans the command
line and the YAML for the one key it needs. Every recipe's first import is `core.boot`.
"""

from __future__ import annotations

import os
import sys


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
    import unsloth  # noqa: F401  (patches transformers, TRL and PEFT; must precede them)
