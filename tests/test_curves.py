"""evaluate/curves.py: which metrics a run's curves show, and the PNG `make curves` writes."""

import json

import pytest

from evaluate.curves import CurvesError, main, pick_keys, plot_run, running_mean, series
from tests.conftest import ROOT, run_entry


def write_metrics(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 9, \"rew", encoding="utf-8")  # torn last line


GRPO_ROWS = [{"step": s, "reward": 0.1 * s, "rewards/correctness/mean": 0.05 * s, "loss": 0.0, "learning_rate": 1e-5}
             for s in range(1, 6)] + [{"step": 5, "eval_accuracy": 0.4}, {"step": 2, "eval_accuracy": 0.3}]


def test_series_keeps_the_last_value_of_a_step_and_sorts():
    rows = [{"step": 2, "loss": 3.0}, {"step": 1, "loss": 5.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": None},
            {"step": 3, "loss": True}]  # None and booleans are not values
    assert series(rows, "loss") == [(1, 5.0), (2, 2.0)]


@pytest.mark.parametrize("rows,keys", [
    (GRPO_ROWS, ["reward", "rewards/correctness/mean", "eval_accuracy", "loss"]),  # preferred order, lr left out
    ([{"step": s, "rewards/accuracies": 0.5, "rewards/margins": s, "loss": 0.7} for s in (1, 2)],
     ["rewards/accuracies", "rewards/margins", "loss"]),                             # DPO
    ([{"step": 1, "loss": 1.0}], []),                                                 # one point is not a curve
])
def test_pick_keys(rows, keys):
    assert pick_keys(rows) == keys


def test_running_mean():
    assert running_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_plot_run_writes_the_png_and_says_what_is_missing(tmp_path, capsys):
    write_metrics(tmp_path / "run", GRPO_ROWS)
    png = plot_run(tmp_path / "run", ["reward", "kl"])
    assert png == tmp_path / "run" / "curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not logged, skipped: kl" in capsys.readouterr().out
    with pytest.raises(CurvesError, match="none of \\['kl'\\] logged"):
        plot_run(tmp_path / "run", ["kl"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err


def test_make_curves(tmp_path):
    write_metrics(tmp_path / "run", GRPO_ROWS)
    proc = run_entry(["make", "-s", "curves", f"RUN={tmp_path / 'run'}"], cwd=ROOT)
    assert "[curves] reward, rewards/correctness/mean, eval_accuracy, loss ->" in proc.stdout
    missing = run_entry(["make", "-s", "curves"], cwd=ROOT, check=False)
    assert missing.returncode != 0 and "make curves RUN=runs/" in missing.stderr
