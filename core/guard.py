"""The training guard: a run that cannot change its model stops instead of "succeeding".
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from core.cli import UserError
from core.launch import current_launch


class TrainingGuard(TrainerCallback):
    """Stop a run that cannot change its model, instead of letting it finish "successfully".

    At the start: 0 trainable parameters is an error (both backends; on a GPU Unsloth's 16-bit LoRA
    mode used to freeze a full finetune this way). Then the first optimizer step that has a learning
    rate above 0 and a non-zero gradient must change the trainable weights (per-tensor checksums
    before and after); steps with lr 0 (warmup) or all-zero gradients (GRPO groups that all agree)
    prove nothing and are waited out. A step with no gradient at all on any trainable weight is an
    error at once. `part` picks the trained module out of what the trainer holds (PPO's policy).
    Trainers without the pre-optimizer event (TRL's PPO loop) are checked at their first update.
    """

    def __init__(self, part=None, what: str = "the model", patience: int = 20):
        self.part, self.what, self.patience = part, what, patience
        self.before: list[tuple[float, float]] | None = None
        self.step_info: dict[str, Any] | None = None
        self.waited = 0
        self.done = False

    def _params(self, model):
        module = self.part(model) if self.part is not None else model
        return [p for p in module.parameters() if p.requires_grad]

    @staticmethod
    def _checksums(params) -> list[tuple[float, float]]:
        import torch

        with torch.no_grad():
            return [(p.detach().double().sum().item(), p.detach().double().abs().sum().item()) for p in params]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = self._params(model)
        if not params:
            raise UserError(f"{self.what} has 0 trainable parameters: training would change nothing "
                            "(use_peft: true for LoRA, or check which weights are frozen)")
        if current_launch().shards_weights:
            self.done = True  # sharded weights live on other ranks; their checksums mean nothing here
            return
        self.before = self._checksums(params)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if not self.done:
            self.before = self._checksums(self._params(model))
            self.step_info = None

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.done:
            return
        params = self._params(model)
        grads = [p.grad for p in params if p.grad is not None]
        self.step_info = {
            "lr": max((g["lr"] for g in optimizer.param_groups), default=0.0) if optimizer is not None else None,
            "any_grad": bool(grads),
            "nonzero_grad": any(bool(g.detach().abs().sum() > 0) for g in grads),
        }

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.done or self.before is None:
            return
        changed = self._checksums(self._params(model)) != self.before
        info = self.step_info
        if changed:
            self.done = True
            return
        if info is not None and not info["any_grad"]:
            raise UserError(f"no gradient reached any trainable weight of {self.what} at step {state.global_step}: "
                            "the weights are cut off from the loss (frozen base, detached adapter?)")
        if info is not None and (not info["lr"] or not info["nonzero_grad"]):
            self.waited += 1  # warmup at lr 0, or a batch that teaches nothing: no evidence either way
            if self.waited >= self.patience:
                print(f"[guard] {self.waited} steps without a non-zero gradient at lr > 0: "
                      "could not confirm that training changes the weights")
                self.done = True
            return
        raise UserError(f"the optimizer step {state.global_step} changed none of {self.what}'s trainable weights "
                        f"(lr {info['lr'] if info else '?'}): the optimizer does not hold them")
