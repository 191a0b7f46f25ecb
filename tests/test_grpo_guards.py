"""recipes/grpo_guards.py: the zero-variance guard on a fake trainer state, and through `make grpo`."""

import re
from types import SimpleNamespace

import pytest

from core.cli import UserError
from recipes.grpo_guards import ZeroVarianceGuard
from tests.conftest import run_entry


def feed(guard, fracs, start=0, logging_steps=1, rewards=None):
    """Run `guard` through a fake training: on_train_begin at `start`, then one log per
    `logging_steps` steps with the given frac_reward_zero_std values."""
    state, control = SimpleNamespace(global_step=start), SimpleNamespace(should_training_stop=False)
    guard.on_train_begin(None, state, control)
    for i, frac in enumerate(fracs):
        state.global_step = start + (i + 1) * logging_steps
        logs = {"loss": 0.0} if frac is None else {"frac_reward_zero_std": frac, "reward": (rewards or {}).get(i, 0.0)}
        guard.on_log(None, state, control, logs=logs)
        if control.should_training_stop:
            break
    guard.raise_if_tripped()
    return state


@pytest.mark.parametrize("fracs, trips", [
    ([1.0, 1.0, 1.0, 1.0, 1.0], True),               # five steps of identical groups
    ([1.0, 0.95, 1.0, 0.96, 1.0], True),             # at the threshold counts as near 1
    ([1.0, 1.0, 1.0, 1.0, 0.5], False),              # one step with signal is enough to go on
    ([0.5, 1.0, 1.0, 1.0, 1.0], False),
    ([1.0, 1.0, 1.0, 1.0], False),                   # not yet at step 5: no verdict
    ([0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0], False),   # only the first 5 steps decide
    ([1.0, 1.0, None, 1.0, 1.0, 1.0], True),         # rows without the metric (eval logs) are ignored
])
def test_zero_variance_guard_decides_on_the_first_steps(fracs, trips):
    guard = ZeroVarianceGuard(steps=5, threshold=0.95, temperature=1.1)
    if trips:
        with pytest.raises(UserError) as err:
            feed(guard, fracs)
        message = str(err.value)
        assert "\n" not in message and "the policy agrees with itself" in message
        assert "temperature (now 1.1)" in message and "stop the SFT priming earlier" in message
        assert "zero_std_guard_steps: 0" in message
    else:
        feed(guard, fracs)


def test_the_guard_names_what_it_saw():
    guard = ZeroVarianceGuard(steps=3, threshold=0.9)
    with pytest.raises(UserError) as err:
        feed(guard, [1.0, 0.9, 1.0], rewards={0: 1.1, 1: 1.1, 2: 0.8})
    assert "in the first 3 steps frac_reward_zero_std was 1.00, 0.90, 1.00 (>= 0.9; mean reward 1.00)" in str(err.value)
    assert "(now" not in str(err.value)  # no temperature given, none named


def test_off_resumed_and_coarse_logging():
    feed(ZeroVarianceGuard(steps=0), [1.0] * 10)                # 0 turns it off
    feed(ZeroVarianceGuard(steps=5), [1.0] * 10, start=5)       # resumed after its first steps
    with pytest.raises(UserError):                              # resumed inside them: the rest decides
        feed(ZeroVarianceGuard(steps=5), [1.0] * 3, start=2)
    with pytest.raises(UserError, match="first 10 steps"):      # logging_steps 10: the first log decides
        feed(ZeroVarianceGuard(steps=5), [0.99], logging_steps=10)
    feed(ZeroVarianceGuard(steps=5), [0.9], logging_steps=10)


@pytest.mark.parametrize("steps, threshold", [(-1, 0.95), (5, 0.0), (5, 1.5)])
def test_bad_settings_are_refused(steps, threshold):
    with pytest.raises(ValueError):
        ZeroVarianceGuard(steps=steps, threshold=threshold)


def test_make_grpo_stops_a_run_whose_groups_all_agree(tmp_path):
    """A random tiny model never answers right: with correctness as the only reward every group
    scores all 0, and the run ends after the guard's steps with one line instead of training on."""
    run_dir = tmp_path / "grpo"
    proc = run_entry(["make", "grpo", "CONFIG=configs/grpo/tiny.yaml",
                      f"ARGS=--output_dir {run_dir} --reward_funcs correctness --reward_weights 1.0 --max_steps 20 "
                      "--zero_std_guard_steps 3 --eval_every_save false --save_steps 100"],
                     env={"OMP_NUM_THREADS": "1"}, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    # (the trainer's progress bar ends with a carriage return, not a newline)
    errors = [line for line in re.split(r"[\r\n]", proc.stderr) if line.startswith("error:")]
    assert len(errors) == 1 and "GRPO cannot learn here: in the first 3 steps" in errors[0]
    assert "Traceback" not in proc.stderr
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "frac_reward_zero_std" in line]
    assert len(steps) == 3  # stopped at the third step, of twenty
