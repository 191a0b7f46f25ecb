"""Watching runs as they learn, on real tiny runs: TensorBoard event files that TensorBoard's own
reader loads, the step-time breakdown of GRPO in metrics.jsonl, and `make plot` on two runs (PPO's
rollout/update split is checked in tests/test_ppo.py's `make ppo` run)."""

import json
import sqlite3

import pytest

from tests.conftest import recorded, run_entry

THREADS = {"OMP_NUM_THREADS": "1"}
GRPO_PARTS = ["time/generation", "time/reward", "time/logprob_passes", "time/forward_backward", "time/optimizer",
              "time/other"]


def train_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory):
    """Two tiny GRPO runs through `make grpo`: one logging to TensorBoard with a KL term (so a
    reference pass runs), one with the tiny config's defaults logging to trackio in a temporary
    directory (trackio is an optional extra for users, and part of the `dev` extra the tests use)."""
    root = tmp_path_factory.mktemp("watch")
    tb, plain = root / "grpo-tb", root / "grpo-plain"
    run_entry(["make", "grpo", "CONFIG=configs/grpo/tiny.yaml",
               f"ARGS=--output_dir {tb} --max_steps 3 --save_steps 3 --report_to tensorboard --beta 0.04"],
              env=THREADS)
    trackio = "--report_to trackio --project vi-rl-test --run_name plain"
    run_entry(["make", "grpo", "CONFIG=configs/grpo/tiny.yaml", f"ARGS=--output_dir {plain} --max_steps 2 {trackio}"],
              env={**THREADS, "TRACKIO_DIR": str(root / "trackio")})
    return tb, plain


def test_tensorboard_event_files_load_with_tensorboards_reader(grpo_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb, plain = grpo_runs
    event_files = list(tb.glob("runs/*/events.out.tfevents.*"))  # inside the run directory
    assert len(event_files) == 1
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/reward", "train/rewards/correctness/mean", "train/kl", "train/time/generation",
                "eval/accuracy", "eval/vi_word_share", "eval/drift_rate"):
        assert tag in scalars, sorted(scalars)
    logged = {row["step"]: row["reward"] for row in train_rows(tb)}
    assert {e.step: e.value for e in events.Scalars("train/reward")} == pytest.approx(logged)
    assert [e.step for e in events.Scalars("eval/accuracy")] == [3]  # the held-out check at the checkpoint
    assert not list(plain.glob("runs/*"))  # no tensorboard in report_to: no event files


def test_trackio_keeps_the_metrics_in_its_local_database(grpo_runs):
    _, plain = grpo_runs
    database = plain.parent / "trackio" / "vi-rl-test.db"
    with sqlite3.connect(database) as db:
        logged = [json.loads(row[0]) for row in db.execute("SELECT metrics FROM metrics")]
    rewards = [m["train/reward"] for m in logged if "train/reward" in m]
    assert rewards == pytest.approx([row["reward"] for row in train_rows(plain)])
    assert all("train/time/generation" in m for m in logged if "train/reward" in m)


def test_grpo_logs_where_each_step_goes(grpo_runs):
    tb, plain = grpo_runs
    for run_dir, steps in ((tb, [1, 2, 3]), (plain, [1, 2])):
        rows = train_rows(run_dir)
        assert [r["step"] for r in rows] == steps
        for row in rows:
            parts = [row[key] for key in GRPO_PARTS]
            # Every phase is recorded (how long it took is the machine's business), and the parts
            # add up to the step: "other" is the remainder, never negative.
            assert all(recorded(p) for p in parts) and recorded(row["time/step"]) and recorded(row["step_seconds"])
            assert sum(parts) == pytest.approx(row["time/step"], abs=2e-3)
    # beta > 0: the reference pass ran (TRL logs `kl` only from reference log-probs) and was timed
    # under logprob_passes; beta 0 and no reused generations: that phase never started.
    assert all("kl" in r for r in train_rows(tb)) and not any("kl" in r for r in train_rows(plain))
    assert all(r["time/logprob_passes"] == 0 for r in train_rows(plain))


def test_make_plot_on_two_tiny_runs(grpo_runs, tmp_path):
    tb, plain = grpo_runs
    out = tmp_path / "plots"
    proc = run_entry(["make", "-s", "plot", f"RUN={tb} {plain}", f"OUT={out}"])
    names = ["overview.png", "rewards.png", "training.png", "step_time.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "| grpo-tb | finished | 3 |" in md and "| grpo-plain | finished | 2 |" in md
    assert "| `rewards/length_penalty_40/mean` (higher is better) |" in md
    assert "| `kl` |" in md and "| generation |" in md
    assert f"to {out}/" in proc.stdout


def test_gpu_configs_log_to_tensorboard_and_cpu_configs_stay_quiet():
    import yaml

    from tests.conftest import ROOT

    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        if path.parent.name in ("accelerate", "eval"):
            continue  # no trainer behind these
        report_to = yaml.safe_load(path.read_text(encoding="utf-8")).get("report_to")
        quiet = path.stem in ("tiny", "demo")
        assert report_to == ("none" if quiet else "tensorboard"), path
