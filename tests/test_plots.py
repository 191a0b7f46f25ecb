"""evaluate/plots.py on hand-written run logs: reading a live run, the pictures, the summary.
(`make plot` on real tiny runs is in tests/test_monitoring.py.)"""

import json
import time

import pytest

from evaluate import plots
from evaluate.plots import (
    PlotError,
    last_per_step,
    load_run,
    main,
    plot_overview,
    plot_runs,
    read_jsonl_tolerant,
    summary_cell,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START = 1_700_000_000.0


def _write_rows(path, rows, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def grpo_run(path, steps=12, finished=True, reward_slope=0.02):
    """A GRPO-like run: rewards per function, completions, time/* phases, checkpoint evaluations."""
    rows = []
    for step in range(1, steps + 1):
        rows.append({
            "step": step, "time": START + 10.0 * step, "loss": 0.1 / step,
            "reward": 0.2 + reward_slope * step, "rewards/correctness/mean": 0.1 + reward_slope * step,
            "rewards/format_soft/mean": 0.9, "completions/mean_length": 30.0 - step, "completions/clipped_ratio": 0.1,
            "entropy": 0.5, "frac_reward_zero_std": 0.5 - 0.01 * step,
            "time/step": 10.0, "time/generation": 7.0, "time/reward": 0.1, "time/logprob_passes": 0.0,
            "time/forward_backward": 2.4, "time/optimizer": 0.3, "time/other": 0.2,
        })
        if step % 4 == 0:
            rows.append({"step": step, "eval_accuracy": 0.3 + 0.01 * step, "eval_seconds": 3.0})
    if finished:
        rows.append({"step": steps, "train_runtime": 130.0})
    _write_rows(path / "metrics.jsonl", rows)
    _write_rows(path / "train_eval.jsonl",
                [{"step": s, "n": 50, "eval_accuracy": 0.3 + 0.01 * s} for s in range(4, steps + 1, 4)])
    # Started 10 s before the first logged step (run_info.json holds local time, rows epoch seconds).
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(START))
    (path / "run_info.json").write_text(json.dumps({"started": started}))
    (path / "config.yaml").write_text("eval_dataset_name: runs/demo/data/test.jsonl\ndataset_name: x.jsonl\n")
    return path


def test_a_half_written_last_line_is_left_out_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_rows(path, [{"step": 1, "reward": 0.1}], tail='not json\n{"step": 2, "reward": 0.2}\n{"step": 3, "rew')
    rows, notes = read_jsonl_tolerant(path)
    assert [r["step"] for r in rows] == [1, 2]
    assert len(notes) == 2 and ":2: not JSON" in notes[0] and "last line is incomplete" in notes[1]
    assert read_jsonl_tolerant(tmp_path / "absent.jsonl") == ([], [])


def test_last_per_step_keeps_the_rerun_of_a_resumed_step():
    rows = [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}, {"step": 2, "reward": 0.3},
            {"step": 3, "loss": 1.0}, {"step": 3, "reward": None}, {"step": 4, "reward": float("nan")}]
    assert last_per_step(rows, "reward") == [(1, 0.1), (2, 0.3)]


@pytest.mark.parametrize(
    ("points", "better", "expected"),
    [
        ([(1, 0.2), (2, 0.6), (3, 0.5)], True, "final 0.500, best 0.600 (step 2)"),
        ([(1, 0.2), (2, 0.1), (3, 0.5)], False, "final 0.500, best 0.100 (step 2)"),
        ([(1, 30.0), (2, 12.0)], None, "final 12.000 (range 12.000 to 30.000)"),
        ([], True, "-"),
    ],
)
def test_summary_cell(points, better, expected):
    assert summary_cell(points, better) == expected


def test_two_runs_one_still_running_give_every_picture_and_the_summary(tmp_path):
    a = grpo_run(tmp_path / "exp1" / "grpo")
    b = grpo_run(tmp_path / "exp2" / "grpo", steps=6, finished=False, reward_slope=0.05)
    with open(b / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"step": 7, "reward": 0.')  # the trainer is writing this line right now
    out, files = plot_runs([a, b], tmp_path / "plots")
    assert [f.name for f in files] == ["overview.png", "rewards.png", "training.png", "step_time.png", "summary.md"]
    for f in files[:-1]:
        data = f.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, f
    md = (out / "summary.md").read_text(encoding="utf-8")
    # Same directory names: the labels take the parent too.
    assert "| exp1/grpo | finished | 12 | 2m00s |" in md
    assert "| exp2/grpo | in progress (or stopped) | 6 |" in md
    reward = next(line for line in md.splitlines() if line.startswith("| `reward`"))
    assert "final 0.440, best 0.440 (step 12)" in reward and "final 0.500, best 0.500 (step 6)" in reward
    held = next(line for line in md.splitlines() if line.startswith("| `eval_accuracy`"))
    assert "final 0.420, best 0.420 (step 12)" in held
    assert "| generation | 7.00 s (70 %) | 7.00 s (70 %) |" in md
    assert "last line is incomplete" in md
    for f in files[:-1]:
        assert f"![{f.stem}]({f.name})" in md


def test_default_folder_names_and_errors(tmp_path, capsys):
    a = grpo_run(tmp_path / "a")
    out, _ = plot_runs([a])
    assert out == a / "plots" and (out / "summary.md").is_file()
    b = grpo_run(tmp_path / "b")
    out, _ = plot_runs([a, b])
    assert out == tmp_path / "plots" / "a-vs-b"

    with pytest.raises(PlotError, match="run directory not found"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match="has no metrics.jsonl"):
        load_run(tmp_path / "empty")
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_the_curve_and_the_table_say_which_problems_they_count(tmp_path, monkeypatch):
    """The demo's picture: the checkpoint curve counts 50 held-out problems, the report's table all
    200; both are drawn and the legend tells them apart (they disagree at step 0 otherwise)."""
    run = load_run(grpo_run(tmp_path / "grpo"), label="grpo")
    seen, save = {}, plots._save

    def keep(fig, out):
        held_out = fig.axes[1]
        seen["legend"] = [t.get_text() for t in held_out.get_legend().get_texts()]
        seen["lines"] = [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in held_out.lines]
        return save(fig, out)

    monkeypatch.setattr(plots, "_save", keep)
    out = plot_overview([run], tmp_path / "curve.png", start={"grpo": (0.28, 50)}, start_label="the SFT model",
                        table={"grpo": ([(0, 0.36), (12, 0.575)], 200)})
    curve = "the same 50 of the 200 held-out problems,\nat each checkpoint (step 0: the SFT model)"
    table = "all 200 held-out problems (the report's table)"
    assert seen["legend"] == [curve, table]
    assert seen["lines"][0][0] == curve and seen["lines"][0][1][0] == 0 and seen["lines"][0][2][0] == 0.28
    assert seen["lines"][1] == (table, [0, 12], [0.36, 0.575])
    assert out.read_bytes()[:8] == PNG_MAGIC
