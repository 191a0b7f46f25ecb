"""recipes/demo.py (`make demo`) end to end: the quick mode on the tiny model in the default suite,
the real demo-sized run on the embedded model as a slow test; the compute budget's wiring."""

import json
import re

import pytest

from recipes.demo import best_sft, grpo_step_line, reusable, sft_more_budget, verdict
from tests.conftest import recorded, run_entry

# Tiny matrices: one thread is faster and shares the CPU better. Torch's kernels are capped at AVX2
# (core/precision.py torch_isa_caps), so summary.json's `isa` is known whatever the CPU.
ENV = {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"}
TABLE_ROW = re.compile(
    r"^\| (SFT \(until[^|]*|GRPO \(from SFT[^|]*|SFT continued[^|]*|base \(untrained\)[^|]*) "
    r"\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$"
)
DIFF_LINE = re.compile(
    r"GRPO - (SFT|SFT continued)( \(the best SFT\))?, greedy accuracy: ([-+]\d+\.\d) points on (\d+) held-out "
    r"problems, (in distribution|out of distribution) \(paired bootstrap 95% CI ([-+]\d+\.\d) to ([-+]\d+\.\d), "
    r"p [=<] ([\d.]+)\): (.+)$"
)
STAGES = ["data", "sft", "eval_sft", "pass_rate", "grpo", "eval_grpo", "sft_more", "eval_sft_more"]
NAMES = {"SFT": "sft", "GRPO": "grpo", "SFT continued": "sft_more", "base": "base"}
SETS = {"in distribution": "test", "out of distribution": "ood"}


def demo(args, check=True, timeout=900):
    return run_entry(["python", "-m", "recipes.demo", *args], env=ENV, check=check, timeout=timeout)


def table_rows(text):
    """{run: (greedy, maj@k, pass@k, sampled, format, tokens)} of the results tables in `text`,
    one dict per table in order."""
    tables, current = [], None
    for line in text.splitlines():
        m = TABLE_ROW.match(line.strip())
        if m:
            if current is None:
                current = {}
                tables.append(current)
            label = m.group(1).split(",")[0].split(" (")[0]
            current[NAMES[label]] = tuple(float(x) for x in m.groups()[1:])
        elif not line.startswith("|"):
            current = None
    return tables


def check_report(out, n_test, n_ood):
    """The report's tables, bootstrap lines, compute table, machine lines, plots and examples are
    there and well-formed; summary.json has the issue's schema and says what the report says."""
    report = (out / "report.md").read_text(encoding="utf-8")
    state = json.loads((out / "demo_state.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    test_rows, ood_rows = table_rows(report)
    for rows in (test_rows, ood_rows):
        assert set(rows) == {"sft", "grpo", "sft_more"}, report[:3000]
        for greedy, maj, passed, sampled, fmt, tokens in rows.values():
            # pass@k bounds every other accuracy: each one needs a right sample (greedy: scored apart)
            assert 0.0 <= maj <= passed <= 1.0 and 0.0 <= sampled <= passed and 0.0 <= greedy <= 1.0
            assert 0.0 <= fmt <= 1.0 and tokens > 0
    diffs = [DIFF_LINE.search(line) for line in report.splitlines() if line.startswith("- GRPO - SFT")]
    assert len(diffs) == 4 and all(diffs), report[:4000]
    for m in diffs:
        diff, n, low, high = float(m.group(3)), int(m.group(4)), float(m.group(6)), float(m.group(7))
        assert n == (n_test if m.group(5) == "in distribution" else n_ood)
        assert low <= diff <= high and 0.0 <= float(m.group(8)) <= 1.0
        assert m.group(9) in ("a gain beyond the bootstrap noise", "a loss beyond the bootstrap noise",
                              "inside the noise: no demonstrated difference")

    # summary.json: the keys, and the same numbers as the report
    assert summary["precision"] in ("float32", "bfloat16") and summary["isa"] == "AVX2"
    assert summary["stages_seconds"] == pytest.approx(sum(s["seconds"] for s in state["stages"].values()), abs=0.1)
    for key, rows, test_set in (("grpo_minus_best_sft", test_rows, "in distribution"),
                                ("grpo_minus_best_sft_ood", ood_rows, "out of distribution")):
        entry = summary[key]
        assert set(entry) == {"baseline", "points", "ci_low", "ci_high", "n"}
        # the best SFT row: the highest greedy accuracy in the table (a tie: the one that trained longer)
        assert entry["baseline"] == ("sft" if rows["sft"][0] > rows["sft_more"][0] else "sft_more")
        best = [m for m in diffs if m.group(5) == test_set and m.group(2)]
        assert len(best) == 1 and NAMES[best[0].group(1)] == entry["baseline"]
        assert (entry["points"], entry["n"], entry["ci_low"], entry["ci_high"]) == (
            float(best[0].group(3)), int(best[0].group(4)), float(best[0].group(6)), float(best[0].group(7)))
        for run, values in rows.items():
            shown = summary["rows"][run][SETS[test_set]]
            assert (round(shown["greedy"], 3), round(shown["maj@k"], 3), round(shown["pass@k"], 3)) == \
                pytest.approx(values[:3], abs=1e-9)
    # the compute: both arms in model FLOPs, matched to within two SFT steps
    budget = state["budget"]
    compute = summary["compute"]
    step_flops = 6 * budget["n_params"] * budget["sft_tokens_per_step"]
    assert compute["grpo_flops"] == pytest.approx(budget["grpo_flops"])
    assert abs(compute["sft_more_flops"] - compute["grpo_flops"]) <= 2 * step_flops
    assert compute["sft_more_steps"] == budget["steps"] >= 1
    assert re.search(r"^\| SFT continued \| [\d.]+ [MGTP]?FLOP \| [\d,]+ \| \d+ \| \S+ \|$", report, re.M)
    assert re.search(r"^\| GRPO arm, in all \| [\d.]+ [MGTP]?FLOP \| ", report, re.M)

    # what makes runs comparable: CPU flags, precision, torch's kernels, threads and load of every stage
    assert re.search(r"^- CPU: .+, \d+ cores; flags: ", report, re.M)
    assert re.search(r"^- Precision: (float32|bfloat16) ", report, re.M)
    assert "- torch's CPU kernels: AVX2." in report
    assert re.search(r"^- SFT: (stopped|ran to its cap) ", report, re.M)  # how the SFT stage ended
    assert re.search(r"^- kept \d+ of \d+ ", report, re.M)  # the pass-rate filter's count
    for stage in STAGES:
        assert re.search(rf"^\| {stage} \| \S+ \| \S+ \| \d+[^|]* \| [\d.]+/[\d.]+ \| `python -m ", report, re.M), stage
    assert report.count("\n### ") == min(5, n_test)
    # the curve counts a subset of the held-out problems, the table all: the report says which is which
    assert re.search(rf"^The curve's points count the same \d+ of the {n_test} held-out problems .* the squares "
                     rf"are the table's accuracies on all {n_test} ", report, re.M), report[:3000]
    for png in ("grpo_curve.png", "accuracy.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert list(state["stages"]) == STAGES
    # Recorded, not fast or slow: a stage may take under the 0.1 s the report rounds to on a fast CPU.
    assert all(recorded(info["cpu_seconds"]) and info["threads"] for info in state["stages"].values())
    for stage in STAGES:
        assert (out / "logs" / f"{stage}.log").stat().st_size > 0
    return test_rows, summary


@pytest.mark.slow  # every demo stage on the tiny model, twice over (~2 min): `make test-slow` (CI) runs it
def test_quick_demo_writes_the_report_and_summary_refuses_to_clobber_and_resumes(tiny_models, tmp_path):
    out = tmp_path / "demo"
    args = ["--quick", "--model_name_or_path", str(tiny_models / "qwen2"), "--output_dir", str(out)]
    proc = demo(args)
    check_report(out, n_test=8, n_ood=8)
    # The last lines printed are the in-distribution table, the four bootstrap lines and where the report is.
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-10:]
    assert tail[0].startswith("| model |") and len(table_rows("\n".join(tail))[0]) == 3
    assert [bool(DIFF_LINE.search(line)) for line in tail[5:]] == [True, True, True, True, False]
    # the precision decision, the machine and each stage's threads are said before the work starts
    assert "[demo] CPU " in proc.stdout and "the configs' dtype auto gives" in proc.stdout
    assert proc.stdout.count("[demo] threads: ") == len(STAGES)
    # SFT checked its dev accuracy at every step and stopped when it did not rise (a random model: 0, 0)
    checks = [json.loads(line) for line in (out / "sft" / "train_eval.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [1, 2] and all(c["n"] == 4 for c in checks)
    assert tail[-1].startswith("report: ") and str(out / "report.md") in tail[-1]
    # GRPO trained on the filter's kept problems, which sampled as GRPO samples (its k, temperature)
    grpo_config = (out / "grpo" / "config.yaml").read_text()
    assert f"dataset_name: {out / 'pass_rate' / 'kept.jsonl'}" in grpo_config
    filtered = json.loads((out / "pass_rate" / "report.json").read_text())
    assert filtered["k"] == 4 and filtered["n"] == 12 and filtered["settings"]["decoding"].startswith("sampled T=1 ")
    # SFT continued was given the steps the budget computed
    sft_more = [json.loads(line) for line in (out / "sft_more" / "metrics.jsonl").read_text().splitlines()]
    budget = json.loads((out / "demo_state.json").read_text())["budget"]
    assert max(r["step"] for r in sft_more) == budget["steps"]
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
    check_report(out, n_test=8, n_ood=8)

    # A new demo from this one's stages (what calibrating GRPO from one SFT model needs): every stage
    # whose command is the same is copied, nothing runs; without SFT continued the best SFT is SFT.
    branch = tmp_path / "branch"
    proc = demo(["--quick", "--model_name_or_path", str(tiny_models / "qwen2"), "--output_dir", str(branch),
                 "--reuse", str(out), "--sft_more", "false"])
    assert f"[demo] reused from {out}: {', '.join(STAGES[:6])}" in proc.stdout and "[demo] threads" not in proc.stdout
    assert (branch / "grpo" / "adapter").is_dir() and (branch / "pass_rate" / "kept.jsonl").is_file()
    summary = json.loads((branch / "summary.json").read_text())
    assert summary["grpo_minus_best_sft"]["baseline"] == "sft" and summary["isa"] == "AVX2"
    report = (branch / "report.md").read_text()
    assert report.count(f"copied from {out}: `python -m ") == 6 and str(out / "sft") not in report.split("## Stages")[1]


def test_a_failed_stage_stops_the_demo_and_says_how_to_continue(tiny_models, tmp_path):
    out = tmp_path / "demo"
    proc = demo(["--quick", "--model_name_or_path", str(tiny_models / "qwen2"), "--output_dir", str(out),
                 "--sft_args", "--per_device_train_batch_size 0"], check=False)
    assert proc.returncode == 2 and "stage 'sft' failed" in proc.stderr and "--resume" in proc.stderr
    assert list(json.loads((out / "demo_state.json").read_text())["stages"]) == ["data"]
    assert (out / "logs" / "sft.log").stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume"], "holds no demo"),
        (["--grpo_args", "--system_prompt 'Khác.'"], "different system prompts"),
        (["--filter_args", "--system_prompt 'Khác.'"], "different system prompts"),
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


def test_a_new_demo_reuses_the_leading_stages_whose_commands_it_shares(tmp_path):
    old, new = tmp_path / "a", tmp_path / "b"
    stages = [(name, ["py", "-m", module, "--output_dir", str(new / name), *extra], new / name)
              for name, module, extra in [("data", "data.synthetic", []), ("sft", "recipes.sft", ["--lr", "1"]),
                                          ("grpo", "recipes.grpo", ["--lr", "2"]), ("eval", "evaluate.gsm8k", [])]]
    done = {name: {"command": f"python -m {module} --output_dir {old / name}{extra}"}
            for name, module, extra in [("data", "data.synthetic", ""), ("sft", "recipes.sft", " --lr 1"),
                                        ("grpo", "recipes.grpo", " --lr 3"), ("eval", "evaluate.gsm8k", "")]}
    # grpo differs (another learning rate): it and everything after it run again, though eval's command matches
    assert reusable({"stages": done}, old, new, stages) == ["data", "sft"]
    assert reusable({"stages": {k: v for k, v in done.items() if k != "data"}}, old, new, stages) == []
    assert reusable({"stages": done}, tmp_path / "other", new, stages) == []  # its commands name another directory


@pytest.mark.parametrize("sft, sft_more, expected", [
    (0.80, 0.84, "sft_more"),
    (0.86, 0.84, "sft"),  # more SFT can overfit: then the shorter run is the one to beat
    (0.84, 0.84, "sft_more"),  # a tie: the run that trained longer
])
def test_the_best_sft_row_is_the_one_grpo_must_beat(sft, sft_more, expected):
    metrics = {"sft": {"greedy_accuracy": sft}, "grpo": {"greedy_accuracy": 0.99}, "sft_more": {"greedy_accuracy": sft_more}}
    assert best_sft(metrics) == expected
    assert best_sft({"sft": {"accuracy": 0.5}, "grpo": {"accuracy": 0.6}}) == "sft"  # greedy-only, no SFT continued


def test_sft_more_gets_the_steps_that_cost_the_grpo_arms_flops(tmp_path):
    """The budget from what the runs logged, independent of how long anything took: GRPO's sampled
    tokens (generated 2N + trained 6N), the filter's generation (2N), over SFT's 6N per token."""
    import numpy as np
    from safetensors.numpy import save_file

    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": np.zeros((1000, 1000), dtype=np.float32)}, str(model / "model.safetensors"))  # N = 1e6
    for run in ("grpo", "sft", "pass_rate"):
        (tmp_path / run).mkdir()
    grpo = [{"step": 1, "num_tokens": 9000.0, "step_seconds": 50.0}, {"step": 2, "num_tokens": 18000.0},
            {"step": 2, "eval_accuracy": 0.5}, {"step": 3, "num_tokens": 30000.0, "step_seconds": 999.0}]
    sft = [{"step": s, "num_tokens": 1500.0 * s, "step_seconds": t} for s, t in enumerate([4.0, 50.0, 5.0, 6.0], 1)]
    for run, rows in (("grpo", grpo), ("sft", sft)):
        (tmp_path / run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "grpo" / "config.yaml").write_text("gradient_accumulation_steps: 1\nnum_iterations: 1\nbeta: 0.0\n")
    (tmp_path / "pass_rate" / "report.json").write_text(json.dumps({"tokens": {"prompt": 40000, "completion": 5000}}))
    budget = sft_more_budget(tmp_path, str(model))
    # (8 x 30000 + 2 x 45000) x N / (6 x 1500 x N) = 330000 / 9000 = 36.7 -> 37; step times play no part
    assert budget == {"n_params": 1_000_000, "grpo_flops": pytest.approx(3.3e11), "sft_tokens_per_step": 1500.0,
                      "steps": 37}
    # without the filter the arm is GRPO alone; a reference model (beta > 0) costs one more forward
    (tmp_path / "pass_rate" / "report.json").unlink()
    (tmp_path / "grpo" / "config.yaml").write_text("gradient_accumulation_steps: 1\nbeta: 0.04\n")
    assert sft_more_budget(tmp_path, str(model))["steps"] == round(10 * 30000 / 9000)
    # The shared prompt's skipped copies come off, summed over the run's sessions (a resume writes a
    # second run_info): 2N x (30000 - 15000) + 6N x (30000 - 15000) + 2N x (30000 - 6000) = 168000 N.
    for name, saved in (("run_info.json", {"generation": 10000, "grad": 10000, "no_grad": 0}),
                        ("config.resume-1.run_info.json", {"generation": 5000, "grad": 5000, "no_grad": 6000})):
        (tmp_path / "grpo" / name).write_text(json.dumps({"shared_prefix": {"saved_tokens": saved}}))
    assert sft_more_budget(tmp_path, str(model))["steps"] == round(168000 / 9000)


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
    """The real `make demo` pipeline on the embedded model (25-60 minutes on 2 idle cores): the
    report and summary are complete and agree. The claim the demo exists to show - GRPO at least 5
    points above the best SFT with the interval above 0 - is what issue 26's calibration is for;
    until it holds this test reports it as an expected failure, with the numbers."""
    out = tmp_path / "demo"
    caps = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    run_entry(["python", "-m", "recipes.demo", "--output_dir", str(out)], env=caps,
              timeout=3 * 3600)
    rows, summary = check_report(out, n_test=500, n_ood=500)
    assert rows["sft"][4] > 0.9  # SFT taught the "#### <số>" line
    gain = summary["grpo_minus_best_sft"]
    if not (gain["points"] >= 5 and gain["ci_low"] > 0):
        pytest.xfail(f"not yet calibrated (issue 26): GRPO - best SFT = {gain}")
