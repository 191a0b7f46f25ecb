"""Statistics for comparing evaluation runs: paired bootstrap CIs, pass@k and maj@k.

On a 100-problem test sample one problem is one point of accuracy, so "GRPO 0.67 vs SFT 0.47"
needs an interval before it means anything. Both runs answered the SAME problems, so the right
interval is a paired one: resample problems (not runs) and look at the mean per-problem
difference. That is much tighter than two independent intervals, because problem difficulty
cancels out.

    python -m evaluate.stats runs/eval/sft runs/eval/grpo            # run dirs or predictions.jsonl
    python -m evaluate.stats A.jsonl B.jsonl --field correct_strict

Pure numpy: no torch, so it runs anywhere in a second.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.cli import ArgumentParser


@dataclass(frozen=True)
class PairedDiff:
    """Mean of ``b - a`` over paired problems, with a bootstrap confidence interval.

    Fields: ``n`` paired problems, ``mean_a`` / ``mean_b`` the two accuracies, ``diff`` =
    mean_b - mean_a, ``low`` / ``high`` the percentile interval at ``confidence``, ``p_value`` a
    two-sided bootstrap p-value for "no difference" (share of resampled differences on the other
    side of 0, doubled), ``n_resamples`` how many resamples it came from.
    """

    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    confidence: float
    p_value: float
    n_resamples: int = 10_000

    def p_text(self) -> str:
        """"p = 0.007", or "p < 0.0001" when no resample crossed 0: with n resamples the
        bootstrap cannot resolve a p-value below 1/n, so 0.000 would overstate it."""
        if self.p_value == 0.0:
            return f"p < {1 / self.n_resamples:g}"
        return f"p = {self.p_value:.3f}"


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDiff:
    """Paired bootstrap CI for ``mean(b) - mean(a)``, where ``a[i]`` and ``b[i]`` score problem i.

    Scores are usually 0/1 correctness but any per-problem number works (a pass@k estimate,
    a ROUGE F1). Deterministic for a given ``seed``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("no paired scores to compare")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(diffs)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # Chunks keep the index matrix small (10k resamples x 1319 problems would be 100 MB at once).
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    p_value = min(1.0, 2.0 * min(float(np.mean(means <= 0.0)), float(np.mean(means >= 0.0))))
    return PairedDiff(
        n=n,
        mean_a=float(np.mean(a)),
        mean_b=float(np.mean(b)),
        diff=float(diffs.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        p_value=p_value,
        n_resamples=n_resamples,
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021).

    The chance that at least one of ``k`` samples drawn without replacement from the ``n`` is
    correct: ``1 - C(n-c, k) / C(n, k)``. With ``k == n`` it is simply "any sample correct".
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent non-None answer; ties go to the one seen first; None when all are None.

    Answers must already be canonical (e.g. "1250000", not "1.250.000") so that equal numbers
    vote together.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


# ------------------------------------------------------------------------- predictions files
def predictions_path(path: str | Path) -> Path:
    """A run directory (holding predictions.jsonl) or a predictions file -> the file."""
    path = Path(path)
    return path / "predictions.jsonl" if path.is_dir() else path


def load_scores(path: str | Path, field: str = "correct") -> dict[str, float]:
    """Per-problem scores of one run, keyed by question (and gold answer).

    A repeated question gets ``#2``, ``#3``... appended to its key in file order, so two runs over
    the same file still pair up row by row.
    """
    path = predictions_path(path)
    scores: dict[str, float] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if field not in row:
                raise ValueError(f"{path}:{lineno}: no {field!r} field (re-score it with --score-only)")
            key = f"{row.get('question', lineno)}\x00{row.get('answer', '')}"
            base, copy = key, 1
            while key in scores:
                copy += 1
                key = f"{base}#{copy}"
            scores[key] = float(row[field])
    return scores


def compare_runs(path_a: str | Path, path_b: str | Path, field: str = "correct", **kwargs) -> PairedDiff:
    """Paired bootstrap of run B against run A on the problems both answered."""
    a, b = load_scores(path_a, field), load_scores(path_b, field)
    shared = [k for k in a if k in b]
    if not shared:
        raise ValueError(f"{path_a} and {path_b} share no problems (compare runs on the same test sample)")
    return paired_bootstrap([a[k] for k in shared], [b[k] for k in shared], **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="Paired bootstrap CI of run B minus run A on shared problems.")
    parser.add_argument("run_a", help="baseline: run directory or predictions.jsonl")
    parser.add_argument("run_b", help="candidate: run directory or predictions.jsonl")
    parser.add_argument("--field", default="correct", help="per-problem score field (correct, correct_strict, ...)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--n_resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = compare_runs(args.run_a, args.run_b, args.field, n_resamples=args.n_resamples,
                              confidence=args.confidence, seed=args.seed)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
