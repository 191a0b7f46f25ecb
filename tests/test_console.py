"""core/console.py: one short console line per logged step, instead of the trainer's metrics dict.
(The recipes' end-to-end tests check the real console: tests/test_grpo.py, tests/test_sft.py.)"""

from types import SimpleNamespace

import pytest
from transformers.trainer_callback import CallbackHandler, PrinterCallback, ProgressCallback

from core import noise
from core.console import CompactLogCallback, compact_console

GRPO_ROW = {"loss": 1.738e-07, "grad_norm": 0.1531, "learning_rate": 0.001, "time/generation": 0.1238,
            "completions/mean_length": 24.0, "rewards/correctness/mean": 0.0, "reward": -0.2859,
            "reward_std": 0.06696, "frac_reward_zero_std": 0.0, "entropy": 6.917, "epoch": 0.0333}


def state(step, max_steps=4):
    return SimpleNamespace(global_step=step, max_steps=max_steps, is_world_process_zero=True)


@pytest.mark.parametrize("logs, line", [
    # GRPO: the reward is the signal (its loss is ~0 by construction), never the 30-key dict.
    (GRPO_ROW, "[train] step 2/4: reward -0.2859"),
    # SFT: loss and the token accuracy it measures on its own batches.
    ({"loss": 6.892, "mean_token_accuracy": 0.05172, "entropy": 6.9, "epoch": 0.06}, "[train] step 2/4: loss 6.892, token accuracy 0.052"),
    # DPO: loss and the implicit reward accuracy.
    ({"loss": 0.6931, "rewards/accuracies": 0.5, "rewards/margins": 0.01}, "[train] step 2/4: loss 0.6931, reward accuracy 0.500"),
    # PPO: the reward model's score.
    ({"objective/scores": 0.125, "loss/policy_avg": -0.01, "eps": 3}, "[train] step 2/4: score 0.125"),
    # A row nothing above describes still shows its first numbers (all of it is in metrics.jsonl).
    ({"custom/a": 1.5, "custom/b": 2}, "[train] step 2/4: custom/a 1.5, custom/b 2"),
    # The trainer's own evaluation: an [eval] line with its loss and how good the model is.
    ({"eval_loss": 5.2216, "eval_runtime": 0.31, "eval_samples_per_second": 100.0, "eval_steps_per_second": 3.0,
      "eval_model_preparation_time": 5e-4, "eval_num_tokens": 2785.0, "eval_entropy": 6.1, "epoch": 1.0},
     "[eval] step 2: loss 5.222 (0.3 s)"),
    ({"eval_loss": 0.41, "eval_accuracy": 0.583, "eval_f1_weighted": 0.573, "eval_majority_accuracy": 0.472,
      "eval_runtime": 0.05}, "[eval] step 2: loss 0.41, accuracy 0.583, f1_weighted 0.573, majority_accuracy 0.472 (0.1 s)"),
    # The project's held-out check (evaluate.gsm8k) prints its own [eval] line: nothing here.
    ({"eval_accuracy": 0.28, "eval_format_rate": 0.9, "eval_seconds": 12.0}, None),
    ({"target_accuracy": 0.3, "target_seconds": 1.0}, None),
])
def test_one_line_per_row(logs, line):
    # A fresh callback has timed no step yet, so the line has no s/step part (tested below).
    assert CompactLogCallback("runs/x").line(state(2), logs) == line


def test_seconds_per_step_is_the_mean_step_time_since_the_last_line(monkeypatch):
    clock = iter([0.0, 10.0, 10.5, 11.0, 11.3, 11.3, 50.0])  # a long held-out check between steps 2 and 3
    monkeypatch.setattr("core.console.time.perf_counter", lambda: next(clock))
    callback = CompactLogCallback("runs/x", progress_bar=False)
    s = state(0)
    callback.on_train_begin(None, s, None)                            # t=0
    for step in (1, 2):
        callback.on_step_begin(None, s, None)
        callback.on_step_end(None, s, None)                           # steps of 0.5 s and 0.3 s
        s.global_step = step
    assert callback.line(s, {"loss": 1.0}) == "[train] step 2/4: loss 1, 0.40 s/step"
    s.global_step = 3                                                 # no step events (TRL's PPO): wall time
    assert callback.line(s, {"loss": 1.0}) == "[train] step 3/4: loss 1, 38.70 s/step"


def test_the_last_line_names_where_every_metric_is():
    line = CompactLogCallback("runs/grpo-tiny").line(state(4), {"train_runtime": 1.325, "train_loss": 0.01526,
                                                                "train_samples_per_second": 24.15, "epoch": 0.13})
    assert line == "[train] done: 4 steps in 1.3 s, mean loss 0.01526; every metric is in runs/grpo-tiny/metrics.jsonl"


def fake_trainer(*callbacks):
    handler = CallbackHandler(list(callbacks), None, None, None, None)
    return SimpleNamespace(callback_handler=handler, args=SimpleNamespace(output_dir="runs/r"),
                           pop_callback=handler.pop_callback, add_callback=handler.add_callback)


def test_compact_console_replaces_the_dict_printers(monkeypatch):
    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    for printer, bar in ((ProgressCallback, True), (PrinterCallback, False)):
        trainer = fake_trainer(printer)
        compact_console(trainer)
        (callback,) = trainer.callback_handler.callbacks
        assert type(callback) is CompactLogCallback and callback.progress_bar is bar
        assert callback.output_dir == "runs/r"
    monkeypatch.setenv(noise.VERBOSE_ENV, "1")  # VIRL_VERBOSE=1: transformers' own dicts stay
    trainer = fake_trainer(ProgressCallback)
    compact_console(trainer)
    assert [type(c) for c in trainer.callback_handler.callbacks] == [ProgressCallback]


def test_a_line_is_written_above_the_bar(capsys):
    from tqdm import tqdm

    callback = CompactLogCallback("runs/x")
    callback.training_bar = tqdm(total=4)
    callback.on_log(None, state(1), None, logs={"loss": 2.0})
    callback.training_bar.close()
    out = capsys.readouterr().out
    assert out.startswith("[train] step 1/4: loss 2") and "{" not in out
