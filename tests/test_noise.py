"""core/noise.py: known-harmless third-party lines are filtered at startup, by logger or import and
message, and nothing else is; VIRL_VERBOSE=1 shows them all.

The entry points' --help runs here; the tiny training runs (`make grpo CONFIG=configs/grpo/tiny.yaml`,
`make sft ...`) and `make eval` check their output in tests/test_grpo.py, test_sft.py and
test_eval_gsm8k.py with the same `noise_lines`, so a known-noise line that comes back fails a test.
"""

import io
import logging

import pytest

from core import noise
from core.noise import KNOWN_NOISE, noise_lines, quiet_known_noise, quiet_prints
from tests.conftest import run_entry

THREADS = {"OMP_NUM_THREADS": "1"}
# Entry points that import torch and Unsloth (core.boot) before printing their help: one process
# runs all of them (10 s of imports each otherwise); the noise they would print comes from those
# shared imports, which the first one makes, and each module's own imports still run in turn.
HEAVY = ["recipes.sft", "recipes.grpo", "recipes.dpo", "recipes.ppo", "recipes.lm", "recipes.reward_model",
         "evaluate.gsm8k", "evaluate.preference", "evaluate.sentiment", "deploy.chat"]
# The other `make` entry points: each in its own process (they start in a second or less).
LIGHT = ["deploy.export", "deploy.serve", "deploy.llamacpp", "evaluate.plots", "data.report", "data.vi_gsm8k",
         "data.synthetic", "recipes.demo", "recipes.tiny", "bench.run", "bench.gpu_check", "core.embedded"]
HELP_ALL = """
import runpy, sys
for module in sys.argv[1:]:
    print(f"=== {module}", flush=True)
    sys.argv = [module, "--help"]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
"""


@pytest.fixture
def installed(monkeypatch):
    """The rules installed in this process, as a command's startup installs them."""
    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(noise, "_installed", False)
    quiet_known_noise()


def test_every_rule_says_where_what_and_why():
    assert {rule.kind for rule in KNOWN_NOISE} <= {"log", "print", "env"}
    for rule in KNOWN_NOISE:
        assert rule.source and rule.pattern and len(rule.why) > 20, rule
        assert noise_lines(rule.example) == [rule.example], rule  # the pattern matches the library's wording


@pytest.mark.parametrize("rule", [r for r in KNOWN_NOISE if r.kind == "log"], ids=lambda r: r.source)
def test_a_log_rule_drops_its_message_on_its_logger_only(rule, installed):
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    targets = [logging.getLogger(rule.source), logging.getLogger("vi_rl.test.other")]
    for logger in targets:
        logger.addHandler(handler)
    try:
        targets[0].warning("%s", rule.example)  # the known line: dropped
        targets[0].warning("something new from this library")  # anything else from it: shown
        targets[1].warning("%s", rule.example)  # the same words from another logger: shown
    finally:
        for logger in targets:
            logger.removeHandler(handler)
    assert seen.getvalue().splitlines() == ["something new from this library", rule.example]


def test_a_print_rule_holds_back_only_its_line_while_its_module_imports(capsys, monkeypatch):
    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    (banner,) = [rule.example for rule in KNOWN_NOISE if rule.kind == "print"]
    with quiet_prints("unsloth"):
        print("Unsloth: a line that is not known")
        print(banner)
    with quiet_prints("somethingelse"):  # no rule for this module: nothing held back
        print(banner)
    assert capsys.readouterr().out.splitlines() == ["Unsloth: a line that is not known", banner]
    with pytest.raises(ImportError), quiet_prints("unsloth"):  # a failing import still shows its output
        print("before the error")
        raise ImportError("boom")
    assert capsys.readouterr().out == "before the error\n"


def test_verbose_shows_everything(capsys, monkeypatch):
    monkeypatch.setenv(noise.VERBOSE_ENV, "1")
    monkeypatch.setattr(noise, "_installed", False)
    monkeypatch.delenv("TRL_EXPERIMENTAL_SILENCE", raising=False)
    quiet_known_noise()
    assert "TRL_EXPERIMENTAL_SILENCE" not in __import__("os").environ and not noise._installed
    with quiet_prints("unsloth"):
        print("Unsloth 2026.10.9: no GPU found, training on CPU (x86_64)")
    assert "no GPU found" in capsys.readouterr().out


def test_noise_lines_finds_the_libraries_own_wording():
    text = ("W1202 15:41:36.152000 21786 .../torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum "
            "subclass and is now natively supported by torch.compile as an opaque value type.\n"
            "[bitsandbytes.backends.cpu.ops|WARNING]Failed to load CPU gemm_4bit_forward from kernels-community: x\n"
            " 50%|#####     | 2/4 [00:00<00:00]\rUnsloth 2026.10.9: no GPU found, training on CPU (x86_64)\n"
            "[transformers] mtime may not be reliable on this filesystem, falling back to numerical ordering\n"
            "/x/recipes/ppo.py:52: TRLExperimentalWarning: You are importing from 'trl.experimental'. APIs here\n"
            "[model] runs/tiny/qwen2: backend=unsloth on CPU\n")
    assert len(noise_lines(text)) == 5 and not noise_lines("[train] step 1/4: reward -0.29, 0.21 s/step")


# This process may have set TRL's switch (core.boot); the children must show the rule setting it.
NO_SWITCH = {"TRL_EXPERIMENTAL_SILENCE": ""}


def test_entry_points_print_their_help_without_known_noise():
    proc = run_entry(["python", "-c", HELP_ALL, *HEAVY], env={**THREADS, **NO_SWITCH}, timeout=300)
    out = proc.stdout + proc.stderr
    assert not noise_lines(out), noise_lines(out)
    for module, part in zip(HEAVY, proc.stdout.split("=== ")[1:], strict=True):
        assert part.startswith(module) and "usage:" in part, part[:500]
    for module in LIGHT:
        proc = run_entry(["python", "-m", module, "--help"], env={**THREADS, **NO_SWITCH})
        assert "usage:" in proc.stdout and not noise_lines(proc.stdout + proc.stderr), (module, proc.stderr[-2000:])


def test_verbose_shows_the_noise_the_patterns_describe():
    """The patterns match what the installed libraries print (or the test above could not fail):
    with VIRL_VERBOSE=1 the same --help shows the lines the rules hide."""
    proc = run_entry(["python", "-m", "recipes.ppo", "--help"], env={**THREADS, **NO_SWITCH, noise.VERBOSE_ENV: "1"})
    shown = noise_lines(proc.stdout + proc.stderr)
    # On the CPU (tests hide any GPU) Unsloth prints its banner; torchao registers its enums on
    # import; PPO comes from trl.experimental.
    assert any("no GPU found, training on CPU" in line for line in shown), proc.stdout[:2000]
    assert any("natively supported by torch.compile" in line for line in shown), proc.stderr[:2000]
    assert any("trl.experimental" in line for line in shown), proc.stderr[:2000]
    assert "usage:" in proc.stdout


def test_make_chat_ask_on_an_adapter_is_quiet_and_does_not_say_it_trains(tiny_models, tmp_path):
    """`make chat ARGS="--ask ..."` on a LoRA adapter: no known noise, and no "continuing" (it trains nothing)."""
    from tests.test_export import add_lora

    root = tmp_path / "project"
    (root / "runs" / "tiny").mkdir(parents=True)
    (root / "runs" / "tiny" / "qwen2").symlink_to(tiny_models / "qwen2")
    adapter = add_lora(root, "runs/tiny/qwen2", "runs/grpo-tiny/adapter", targets=["q_proj", "v_proj"])
    proc = run_entry(["make", "-s", "chat", f"MODEL={adapter}",
                      "ARGS=--ask 'Lan có 12 quả táo' --max_new_tokens 4 --dtype float32"], env={**THREADS, **NO_SWITCH})
    out = proc.stdout + proc.stderr
    assert "[chat] assistant:" in proc.stdout and not noise_lines(out), noise_lines(out)
    assert "continuing the LoRA adapter" not in out and "with the LoRA adapter" in out
