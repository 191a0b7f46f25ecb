"""recipes/demo.py (`make demo`) end to end: the quick mode on the tiny model in the default suite,
the real demo-sized run on the embedded model as a slow test."""

import json
import re

import pytest

from recipes.demo import grpo_step_line, sft_more_steps, verdict
from tests.conftest import recorded, run_entry

THREADS = {"OMP_NUM_THREADS": "1"}  # tiny matrices: one thread is faster and shares the CPU better
TABLE_ROW = re.compile(
    r"^\| (base \(untrained\)|SFT priming[^|]*|GRPO \(from SFT\)[^|]*|SFT continued[^|]*) \| ([\d.]+) \| ([\d.]+) "
    r"\| ([\d.]+) \| ([\d.]+) \|$"
)
DIFF_LINE = re.compile(
    r"GRPO - (SFT|SFT continued), (accuracy|accuracy \(strict\)): ([-+]\d+\.\d) points on (\d+) held-out problems "
    r"\(paired bootstrap 95% CI ([-+]\d+\.\d) to ([-+]\d+\.\d), p [=<] ([\d.]+)\): (.+)$"
)
STAGES = ["data", "eval_base", "sft", "eval_sft", "grpo", "eval_grpo", "sft_more", "eval_sft_more"]


def demo(args, check=True, timeout=900):
    return run_entry(["python", "-m", "recipes.demo", *args], env=THREADS, check=check, timeout=timeout)


def table_rows(text):
    """{label: (accuracy, strict, format, tokens)} of the results table in `text`."""
    rows = {}
    for line in text.splitlines():
        m = TABLE_ROW.match(line.strip())
        if m:
            rows[m.group(1).split(",")[0].split(" (")[0]] = tuple(float(x) for x in m.groups()[1:])
    return rows


def check_report(out, n_test, sft_more=True):
    """The report's table, bootstrap lines, machine lines, plot, examples and state are all there
    and well-formed."""
    report = (out / "report.md").read_text(encoding="utf-8")
    rows = table_rows(report)
    expected = {"base", "SFT priming", "GRPO"} | ({"SFT continued"} if sft_more else set())
    assert set(rows) == expected, report[:2000]
    for acc, strict, fmt, tokens in rows.values():
        assert 0.0 <= strict <= acc <= 1.0 and 0.0 <= fmt <= 1.0 and tokens > 0
    diffs = [DIFF_LINE.search(line) for line in report.splitlines() if "GRPO - SFT" in line]
    assert len(diffs) == (3 if sft_more else 2) and all(diffs), report[:3000]
    for m in diffs:
        diff, n, low, high, p = (float(m.group(3)), int(m.group(4)), float(m.group(5)), float(m.group(6)),
                                 float(m.group(7)))
        assert n == n_test and low <= diff <= high and 0.0 <= p <= 1.0
        assert m.group(8) in ("a gain beyond the bootstrap noise", "a loss beyond the bootstrap noise",
                              "inside the noise: no demonstrated difference")
    # what makes runs comparable: CPU flags, precision, threads and load of every stage
    assert re.search(r"^- CPU: .+, \d+ cores; flags: ", report, re.M)
    assert re.search(r"^- Precision: (float32|bfloat16) ", report, re.M)
    stages = STAGES if sft_more else STAGES[:6]
    for stage in stages:
        assert re.search(rf"^\| {stage} \| \S+ \| \S+ \| \d+[^|]* \| [\d.]+/[\d.]+ \| `python -m ", report, re.M), stage
    assert report.count("\n### ") == min(5, n_test)
    png = (out / "grpo_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    state = json.loads((out / "demo_state.json").read_text())
    assert list(state["stages"]) == stages
    # Recorded, not fast or slow: a stage may take under the 0.1 s the report rounds to on a fast CPU.
    assert all(recorded(info["cpu_seconds"]) and info["threads"] for info in state["stages"].values())
    summary = json.loads((out / "comparison.json").read_text())
    assert {r["metric"] for r in summary["grpo_minus_sft"]} == {"accuracy", "accuracy (strict)"}
    assert [r["metric"] for r in summary["grpo_minus_sft_more"]] == (["accuracy"] if sft_more else [])
    for stage in stages:
        assert (out / "logs" / f"{stage}.log").stat().st_size > 0
    return rows


def test_quick_demo_writes_the_report_refuses_to_clobber_and_resumes(tiny_models, tmp_path):
    out = tmp_path / "demo"
    args = ["--quick", "--model_name_or_path", str(tiny_models / "qwen2"), "--output_dir", str(out)]
    proc = demo(args)
    check_report(out, n_test=8)
    # The last lines printed are the table, the three bootstrap lines and where the report is.
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-10:]
    assert tail[0].startswith("| model |") and len(table_rows("\n".join(tail))) == 4
    assert [bool(DIFF_LINE.search(line)) for line in tail[6:]] == [True, True, True, False]
    # the precision decision, the machine and each stage's threads are said before the work starts
    assert "[demo] CPU " in proc.stdout and "the configs' dtype auto gives" in proc.stdout
    assert proc.stdout.count("[demo] threads: ") == len(STAGES)
    # the SFT priming checked its target on the dev problems at every step
    checks = [json.loads(line) for line in (out / "sft" / "train_eval.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [1, 2] and all(c["n"] == 4 for c in checks)
    assert tail[-1].startswith("report: ") and str(out / "report.md") in tail[-1]
    # the held-out curve: one evaluation of the eval_limit problems per checkpoint
    evals = [json.loads(line) for line in (out / "grpo" / "train_eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1, 2] and all(e["n"] == 4 for e in evals)

    again = demo(args, check=False)
    assert again.returncode == 2 and "already holds a finished demo" in again.stderr
    resumed = demo(args + ["--resume"])
    assert resumed.stdout.count("skipped") == len(STAGES)
    assert resumed.stdout.strip().splitlines()[-1].startswith("report: ")

    # An evaluation interrupted half-way is redone on --resume; nothing before it runs again.
    state = json.loads((out / "demo_state.json").read_text())
    del state["stages"]["eval_grpo"]
    (out / "demo_state.json").write_text(json.dumps(state))
    (out / "eval" / "grpo" / "metrics.json").unlink()
    other = demo(args + ["--resume", "--n_test", "6"], check=False)
    assert other.returncode == 2 and "other settings" in other.stderr
    resumed = demo(args + ["--resume"])
    assert resumed.stdout.count("skipped") == len(STAGES) - 1 and "removing the unfinished" in resumed.stdout
    check_report(out, n_test=8)


def test_a_failed_stage_stops_the_demo_and_says_how_to_continue(tiny_models, tmp_path):
    out = tmp_path / "demo"
    proc = demo(["--quick", "--model_name_or_path", str(tiny_models / "qwen2"), "--output_dir", str(out),
                 "--eval_args", "--batch_size 0"], check=False)
    assert proc.returncode == 2 and "stage 'eval_base' failed" in proc.stderr and "--resume" in proc.stderr
    assert list(json.loads((out / "demo_state.json").read_text())["stages"]) == ["data"]
    assert "batch_size" in (out / "logs" / "eval_base.log").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume"], "holds no demo"),
        (["--grpo_args", "--system_prompt 'Khác.'"], "different system prompts"),
        (["--model_name_or_path", "no/such/dir"], "model directory not found"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    proc = demo(["--output_dir", str(tmp_path / "demo"), *args], check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (0.01, 0.09, "a gain beyond the bootstrap noise"),
        (-0.02, 0.08, "inside the noise: no demonstrated difference"),  # a positive mean is not a win
        (0.0, 0.05, "inside the noise: no demonstrated difference"),  # touching 0 is not beyond it
        (-0.09, -0.01, "a loss beyond the bootstrap noise"),
    ],
)
def test_verdict(low, high, expected):
    assert verdict(low, high) == expected


def test_sft_more_gets_the_steps_that_fit_in_grpos_training_time(tmp_path):
    (tmp_path / "grpo").mkdir()
    (tmp_path / "sft").mkdir()
    grpo = [{"step": 1, "step_seconds": 20.0}, {"step": 2, "step_seconds": 30.0}, {"step": 2, "step_seconds": 22.0},
            {"step": 2, "eval_accuracy": 0.5}]  # step 2 rerun after a resume: the last record counts
    sft = [{"step": s, "step_seconds": t} for s, t in enumerate([4.0, 50.0, 5.0, 6.0, 4.5], start=1)]
    for run, rows in (("grpo", grpo), ("sft", sft)):
        (tmp_path / run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    # 42 s of GRPO steps at the median SFT step of 5 s (the 50 s outlier does not count)
    assert sft_more_steps(tmp_path) == {"steps": 8, "grpo_seconds": 42.0, "sft_step_seconds": 5.0}


def test_grpo_step_line(tmp_path):
    (tmp_path / "grpo").mkdir()
    assert grpo_step_line(tmp_path) is None  # no GRPO stage yet: no line
    rows = [{"step": s, "time/step": t, "time/generation": g, "time/forward_backward": f}
            for s, t, g, f in [(1, 30.0, 10.0, 19.0), (2, 12.0, 5.0, 6.5), (3, 11.0, 4.5, 6.0)]]
    (tmp_path / "grpo" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    info = {"shared_prefix": {"loss": True, "generation": True, "stock_because": {"loss": [], "generation": []}}}
    (tmp_path / "grpo" / "run_info.json").write_text(json.dumps(info))
    assert grpo_step_line(tmp_path) == (
        "GRPO step: median 12.0 s over 3 steps (generation 5.0 s, loss forward+backward 6.5 s); each prompt went "
        "through the model once per group, in the loss and in generation (`shared_prefix`).")
    info["shared_prefix"].update(loss=False, stock_because={"loss": ["shared_prefix: false"], "generation": []})
    (tmp_path / "grpo" / "run_info.json").write_text(json.dumps(info))
    assert grpo_step_line(tmp_path).endswith("; stock TRL for part of the step (loss: shared_prefix: false).")


@pytest.mark.slow
@pytest.mark.demo
def test_full_demo_on_the_embedded_model(tmp_path):
    """The real `make demo` pipeline (about 20-30 minutes on 2 idle cores): GRPO must beat the
    SFT-primed model on the held-out problems."""
    out = tmp_path / "demo"
    run_entry(["python", "-m", "recipes.demo", "--output_dir", str(out)], timeout=3 * 3600)
    rows = check_report(out, n_test=200)
    assert rows["base"][2] < 0.5 <= rows["SFT priming"][2]  # SFT taught the "#### <số>" line
    assert rows["GRPO"][0] > rows["SFT priming"][0]
