"""The training guard: a run that cannot change its model stops with one line instead of "succeeding"."""

import pytest
import torch

import core.boot  # noqa: F401
from core.cli import UserError
from core.guard import TrainingGuard
from core.models import require_trainable


class State:
    global_step = 1


class Optimizer:
    def __init__(self, lr):
        self.param_groups = [{"lr": lr}]


def _model(trainable=True):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model.requires_grad_(trainable)
    return model


def _step(guard, model, lr=1e-3, grad=1.0, update=True, step=1):
    """One optimizer step as the Trainer drives the callbacks: begin, backward, pre-step, step, end."""
    state = State()
    state.global_step = step
    guard.on_step_begin(None, state, None, model=model)
    for p in model.parameters():
        if p.requires_grad and grad is not None:
            p.grad = torch.full_like(p, grad)
    guard.on_pre_optimizer_step(None, state, None, model=model, optimizer=Optimizer(lr))
    if update:
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
    for p in model.parameters():
        p.grad = None
    guard.on_step_end(None, state, None, model=model)


def test_zero_trainable_parameters_is_an_error():
    with pytest.raises(UserError, match="0 trainable parameters"):
        TrainingGuard().on_train_begin(None, State(), None, model=_model(trainable=False))
    with pytest.raises(UserError, match="0 trainable parameters"):
        require_trainable(_model(trainable=False), "gpt2")
    assert require_trainable(_model()) == 4 * 4 + 4 + 4 * 2 + 2


def test_a_step_that_changes_the_weights_passes_and_disarms_the_guard():
    model, guard = _model(), TrainingGuard()
    guard.on_train_begin(None, State(), None, model=model)
    _step(guard, model)
    assert guard.done
    _step(guard, model, update=False, step=2)  # disarmed: later steps are not checked


def test_an_optimizer_that_does_not_hold_the_weights_is_caught():
    model, guard = _model(), TrainingGuard(what="the policy")
    guard.on_train_begin(None, State(), None, model=model)
    with pytest.raises(UserError, match="changed none of the policy's trainable weights"):
        _step(guard, model, update=False)


def test_weights_cut_off_from_the_loss_are_caught():
    model, guard = _model(), TrainingGuard()
    guard.on_train_begin(None, State(), None, model=model)
    with pytest.raises(UserError, match="no gradient reached any trainable weight"):
        _step(guard, model, grad=None, update=False)


@pytest.mark.parametrize("lr,grad", [(0.0, 1.0), (1e-3, 0.0)])  # warmup at lr 0; GRPO groups that all agree
def test_steps_that_prove_nothing_are_waited_out(lr, grad, capsys):
    model, guard = _model(), TrainingGuard(patience=3)
    guard.on_train_begin(None, State(), None, model=model)
    _step(guard, model, lr=lr, grad=grad, update=False)
    assert not guard.done
    _step(guard, model, step=2)  # the first real step decides
    assert guard.done
    other = TrainingGuard(patience=2)
    other.on_train_begin(None, State(), None, model=model)
    for step in (1, 2):
        _step(other, model, lr=lr, grad=grad, update=False, step=step)
    assert other.done and "could not confirm" in capsys.readouterr().out


def test_a_trainer_without_the_pre_optimizer_event_is_checked_at_its_first_update():
    """TRL's PPO loop calls on_train_begin and on_step_end only; `part` picks the policy."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.policy, self.value = _model(), _model()

    wrapper, guard = Wrapper(), TrainingGuard(part=lambda m: m.policy, what="the PPO policy")
    guard.on_train_begin(None, State(), None, model=wrapper)
    with torch.no_grad():
        wrapper.value[0].weight += 1  # only the value model moved
    with pytest.raises(UserError, match="the PPO policy"):
        guard.on_step_end(None, State(), None, model=wrapper)
