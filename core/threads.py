"""How many CPU threads a run computes with: the cores other jobs leave free.

torch starts one thread per core. When other processes already keep the cores busy, those threads
wait for each other at every operation: measured on a 2-core machine, a SmolLM2-135M forward pass
took 3x longer with 2 threads than with 1 while other jobs kept both cores busy, and a user's GRPO
run next to other work took 113-281 s per step where the demo's, with its thread choice, took ~20 s.

    from core.threads import apply_cpu_threads
    apply_cpu_threads()        # every entry point, at start (core.cli.run_cli calls it)

- `OMP_NUM_THREADS` set by the user always wins (and is only reported).
- On a GPU run nothing changes: the CPU only feeds the GPU.
- Otherwise the count is decided once, at start, from /proc/loadavg's runnable count (the median
  of a short sampling). The demo (recipes/demo.py) decides again before each stage, since other
  jobs come and go between stages, and hands the stage its count through OMP_NUM_THREADS.

No torch import here: the demo orchestrator uses this module without torch.
"""

from __future__ import annotations

import os
import time

ENV = "OMP_NUM_THREADS"


def other_runnable_threads(samples: int = 20, interval: float = 0.05) -> float | None:
    """How many threads of other processes are running or waiting for a core right now (the
    median of a short sampling of /proc/loadavg's runnable count, less this process); None where
    /proc is not there."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            return None
        time.sleep(interval)
    counts.sort()
    return float(max(0, counts[len(counts) // 2]))


def free_cores(others: float | None, cores: int) -> int | None:
    """Threads for a run given `others` busy threads on `cores` cores: the cores they leave free,
    at least one; None when that is every core (or nothing is known): torch's default."""
    if others is None or cores <= 1:
        return None
    threads = max(1, cores - int(others + 0.5))
    return None if threads >= cores else threads


def choose_threads(requested: str, samples: int = 20) -> tuple[str | None, str]:
    """(OMP_NUM_THREADS for a run, why in words): a number as given; for "auto" the cores that
    other processes leave free (None: torch's default, one thread per core). An OMP_NUM_THREADS
    already in the environment is kept."""
    if ENV in os.environ:
        return os.environ[ENV], f"{ENV}={os.environ[ENV]} is set"
    if requested != "auto":
        if not requested.isdigit() or int(requested) < 1:
            raise ValueError(f"threads must be a positive number or 'auto', got {requested!r}")
        return requested, "as asked"
    cores = os.cpu_count() or 1
    others = other_runnable_threads(samples)
    threads = free_cores(others, cores)
    if others is None:
        return None, f"no /proc/loadavg here: torch's default for {cores} core(s)"
    if threads is None:
        return None, f"{others:g} other runnable thread(s) on {cores} core(s): one thread per core"
    return str(threads), (f"other jobs keep {others:g} thread(s) busy on the {cores} cores: {threads} thread(s), "
                          "faster than contending for the cores")


def apply_cpu_threads(samples: int = 5) -> int | None:
    """At the start of a CPU run: set the thread count to the cores other jobs leave free and print
    one line saying so; returns the count in use (None on a GPU machine). Set OMP_NUM_THREADS to
    choose it yourself.

    Where torch is imported already (the recipes: `core.boot` loads it) the count is set through
    `torch.set_num_threads`; where it is not yet (an evaluation imports torch only after parsing
    its options), through OMP_NUM_THREADS, which torch reads when it starts."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return None
    if torch is None and os.path.exists("/dev/nvidiactl"):
        return None  # a GPU machine: the CPU only feeds the GPU (torch, imported later, decides)
    threads, why = choose_threads("auto", samples)
    if threads is not None and ENV not in os.environ:
        if torch is not None:
            torch.set_num_threads(int(threads))
        else:
            os.environ[ENV] = threads
    count = torch.get_num_threads() if torch is not None else int(threads or os.environ.get(ENV) or os.cpu_count() or 1)
    hint = "" if why.startswith(f"{ENV}=") else f" (set {ENV} to choose)"
    print(f"[threads] {count} CPU thread(s): {why}{hint}", flush=True)
    return count
