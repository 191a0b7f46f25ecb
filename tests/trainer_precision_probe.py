"""Print, as JSON, the precision flags Unsloth's generated GPU trainers leave on their arguments, for
each given case (a GPU with or without native bf16, the model's dtype, the flags the toolkit set).

    python tests/trainer_precision_probe.py MODEL_DIR CASES.json

Importing `unsloth.models.rl` builds Unsloth's patched trainers (their __init__ is generated code
that starts with a mixed-precision block, unsloth/models/rl.py) and installs them in trl, even on a
CPU. Each case runs that __init__ for real up to the call into TRL's own trainer, where the probe
stops it and reads `args`: the GPU's bf16 answer is unsloth_zoo's `device_is_bf16_supported`, and
the model carries the stamps Unsloth's `from_pretrained` puts on it. Used by
tests/test_trainer_precision.py.
"""

import json
import os
import sys
import tempfile

import core.boot  # noqa: F401  (Unsloth's CPU backend, as in every entry point)

# isort: split
import torch
import trl
import unsloth.models.rl  # noqa: F401  (installs Unsloth's generated trainers in trl)
import unsloth_zoo.device_type
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.experimental import ppo
from unsloth.models._utils import (
    _mark_forced_float32,
    _mark_full_finetuning,
    _mark_requested_float32,
    _requested_float32,
)

assert trl.GRPOTrainer.__name__ == "UnslothGRPOTrainer", "importing unsloth.models.rl patched no GRPO trainer"


class Stopped(Exception):
    """Raised where the generated __init__ hands over to TRL's trainer."""


def stop(self, *args, **kwargs):
    raise Stopped()


def reward(completions, **kwargs):
    return [0.0] * len(completions)


MODEL_DIR, CASES = sys.argv[1], json.loads(open(sys.argv[2]).read())
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
TRAINERS = {
    "grpo": (trl.GRPOTrainer, trl.GRPOConfig, lambda m, a: dict(model=m, reward_funcs=[reward], args=a,
                                                                processing_class=tokenizer)),
    "dpo": (trl.DPOTrainer, trl.DPOConfig, lambda m, a: dict(model=m, args=a, processing_class=tokenizer)),
    "ppo": (ppo.PPOTrainer, ppo.PPOConfig, lambda m, a: dict(args=a, processing_class=tokenizer, model=m,
                                                             ref_model=None, reward_model=m, train_dataset=None,
                                                             value_model=m)),
}
for cls, _, _ in TRAINERS.values():
    assert cls.__name__.startswith("Unsloth"), f"{cls} is not Unsloth's generated trainer"
    cls.__mro__[1].__init__ = stop  # TRL's own trainer, underneath the generated subclass

results = []
with tempfile.TemporaryDirectory() as out:
    for case in CASES:
        unsloth_zoo.device_type.device_is_bf16_supported = lambda *a, bf16=case["gpu_bf16"], **k: bf16
        # What Unsloth's get_peft_model / prepare_model_for_training leave in the environment for a
        # float32 or bf16 model (unsloth_zoo/training_utils.py, float32_mixed_precision=True).
        os.environ["UNSLOTH_MIXED_PRECISION"] = "float32"
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
        handed = getattr(torch, case["handed_dtype"])  # the dtype the toolkit passes to from_pretrained
        model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=handed)
        _mark_requested_float32(model, _requested_float32(handed))
        _mark_forced_float32(model, False)
        _mark_full_finetuning(model, case["full_finetuning"])
        cls, config_cls, call = TRAINERS[case["trainer"]]
        args = config_cls(output_dir=out, use_cpu=True, report_to="none")
        args.bf16, args.fp16 = case["bf16"], case["fp16"]  # as the toolkit's parse set them on the GPU
        try:
            cls(**call(model, args))
            raise AssertionError("the generated __init__ did not reach TRL's trainer")
        except Stopped:
            pass
        results.append({"bf16": args.bf16, "fp16": args.fp16,
                        "mixed_precision": getattr(args, "mixed_precision", None),
                        "accelerate": os.environ.get("ACCELERATE_MIXED_PRECISION")})
print("RESULTS " + json.dumps(results))
