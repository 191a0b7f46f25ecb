"""bench/gpu_check.py (make gpu-check) on the CPU: the report is on disk while checks still run, a
check killed by its time limit is recorded with its process group gone, and a stop signal still
leaves the report. What the checks assert on a GPU cannot be shown here (see the module docstring)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, child_env


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet
        return None


def test_a_check_killed_by_its_limit_leaves_a_partial_report(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--jobs", "1",
                             "--only", "sft_learns,dpo_learns", "--limit", "sft_learns=2", "--out", str(out),
                             "--work", str(work)], cwd=ROOT, env=child_env({"OMP_NUM_THREADS": "1"}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, report = time.time() + 240, None
        while time.time() < deadline:
            report = read(out / "gpu_check.json")
            checks = (report or {}).get("checks", {})
            if checks.get("sft_learns", {}).get("status") == "timed out" and \
                    checks.get("dpo_learns", {}).get("status") == "running":
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            pytest.fail(f"no report with sft_learns timed out while dpo_learns runs: {report}")
        # Written while dpo_learns still runs: the report does not wait for the end.
        assert report["finished"] is False
        assert [report["checks"][n]["status"] for n in ("environment", "models")] == ["passed", "passed"]
        killed = report["checks"]["sft_learns"]
        assert killed["limit_s"] == 2 and "killed at its limit" in killed["why"] and not group_alive(killed["pid"])
        assert (out / "gpu_check_logs" / "sft_learns.log").read_text().startswith("$ ")
        assert "NOT FINISHED" in (out / "gpu_check.md").read_text()
        assert "| sft_learns | timed out |" in (out / "gpu_check.md").read_text()
        running = report["checks"]["dpo_learns"]["pid"]
    finally:
        proc.send_signal(signal.SIGTERM)  # as `timeout` does to a GPU check that runs too long
        proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    final = read(out / "gpu_check.json")
    assert final["checks"]["dpo_learns"]["status"] == "interrupted" and final["checks"]["sft_learns"] == killed
    assert not group_alive(running)


def test_an_unknown_check_is_refused_before_anything_runs(tmp_path):
    from bench.gpu_check import main
    from core.cli import UserError

    with pytest.raises(UserError, match=r"^unknown check\(s\) sft_learn: choose from environment, models, sft_learns"):
        main(["--device", "cpu", "--only", "sft_learn", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_make_gpu_check_runs_the_check_and_installs_vllm_on_request():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\ngpu-check:"):].split("\n\n")[0]
    assert "-m bench.gpu_check --out bench/results" in target and "'.[vllm]'" in target and "## " in target
    assert not (ROOT / "bench" / "gpu_check.sh").exists()  # one way to run it
