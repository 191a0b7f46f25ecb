"""core/threads.py: the thread count a CPU run takes (the cores other jobs leave free)."""

import pytest

import core.threads as threads_module
from core.threads import apply_cpu_threads, choose_threads, free_cores, other_runnable_threads


@pytest.mark.parametrize("others, cores, expected", [
    (0.0, 2, None),    # idle: torch's default, one thread per core
    (1.0, 2, 1),       # one other busy thread leaves one core
    (5.0, 2, 1),       # never fewer than one
    (2.0, 8, 6),
    (0.4, 2, None),    # rounds: a mostly idle sampling is idle
    (0.6, 2, 1),
    (None, 2, None),   # no /proc: leave torch alone
    (3.0, 1, None),    # one core: nothing to choose
])
def test_free_cores(others, cores, expected):
    assert free_cores(others, cores) == expected


@pytest.mark.parametrize("others, cores, expected", [(0.0, 2, None), (1.0, 2, "1"), (5.0, 2, "1"), (2.0, 8, "6"),
                                                     (None, 2, None)])
def test_auto_threads_leave_the_cores_other_jobs_use(monkeypatch, others, cores, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "other_runnable_threads", lambda samples=20: others)
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: cores)
    threads, why = choose_threads("auto")
    assert threads == expected and why


def test_threads_given_by_the_user_win(monkeypatch):
    monkeypatch.setattr(threads_module, "other_runnable_threads", lambda samples=20: 1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads("3")[0] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads("auto") == ("2", "OMP_NUM_THREADS=2 is set")
    assert choose_threads("3")[0] == "2"  # the environment wins over the option too


@pytest.mark.parametrize("bad", ["0", "-1", "two", ""])
def test_a_bad_thread_count_is_refused(monkeypatch, bad):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(ValueError, match="positive number or 'auto'"):
        choose_threads(bad)


def test_runnable_threads_come_from_proc_loadavg(monkeypatch, tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("7.50 8.11 7.83 4/612 31337\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(loadavg if path == "/proc/loadavg" else path,
                                                                          *a, **k))
    assert other_runnable_threads(samples=3, interval=0) == 3.0  # 4 runnable, this process is one of them
    loadavg.write_text("garbage\n")
    assert other_runnable_threads(samples=3, interval=0) is None


def test_apply_sets_torch_threads_and_says_so(monkeypatch, capsys):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(threads_module, "other_runnable_threads", lambda samples=20: 7.0)
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 2)
    try:
        assert apply_cpu_threads() == 1 == torch.get_num_threads()
        line = capsys.readouterr().out.strip()
        assert line.startswith("[threads] 1 CPU thread(s): other jobs keep 7 thread(s) busy") and "\n" not in line
        # OMP_NUM_THREADS set: only reported, torch keeps what it has
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        assert apply_cpu_threads() == 1
        assert "OMP_NUM_THREADS=5 is set" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_a_gpu_run_keeps_its_threads(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert apply_cpu_threads() is None and capsys.readouterr().out == ""


def test_before_torch_is_imported_the_count_goes_through_the_environment(monkeypatch, capsys):
    # evaluate.gsm8k imports torch only after parsing its options: run_cli's choice must reach it
    import sys

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(threads_module.os.path, "exists", lambda path: False)  # no /dev/nvidiactl
    monkeypatch.setattr(threads_module, "other_runnable_threads", lambda samples=20: 3.0)
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 4)
    try:
        assert apply_cpu_threads() == 1
        assert threads_module.os.environ["OMP_NUM_THREADS"] == "1"
        assert capsys.readouterr().out.startswith("[threads] 1 CPU thread(s): other jobs keep 3 thread(s) busy")
    finally:
        threads_module.os.environ.pop("OMP_NUM_THREADS", None)
