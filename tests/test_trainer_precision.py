"""What a run's precision really is under Unsloth's generated GPU trainers, shown on the CPU.

Unsloth's GRPO/DPO/PPO/SFT trainers on a GPU are generated classes whose __init__ rewrites the
bf16/fp16 flags (unsloth/models/rl.py). tests/trainer_precision_probe.py runs that generated code
for real (with a GPU's bf16 answer stood in) and reports the flags it leaves. This test feeds it
what the toolkit's precision decision and loader hand the trainer, and checks that the decision -
which run_info.json records - is what the trainer keeps; and that the case which made the decision
say bfloat16 (float32 under Unsloth on a bf16 GPU) really is rewritten by Unsloth.
"""

import json

import pytest

from core.precision import decide
from tests.conftest import ROOT, run_entry

# (trainer, GPU has native bf16, dtype the config asks for, full finetuning)
RUNS = [
    ("grpo", True, "float32", False),    # a float32 LoRA run on a 4090
    ("ppo", True, "float32", True),      # PPO's GPT-2 policy, every weight training (gpu_check's ppo_runs)
    ("dpo", True, "auto", False),
    ("grpo", False, "float32", False),   # a T4 keeps an explicit float32
    ("grpo", False, "auto", False),      # a T4's fp16
    ("ppo", False, "auto", True),
]


def case_for(trainer, gpu_bf16, requested, full_finetuning, flags=None):
    """What the toolkit hands Unsloth on that GPU: the decision's flags, and the load dtype
    core/models.py uses (float32 master weights when every weight trains)."""
    precision = decide(requested, "cuda", gpu_bf16, "a GPU", backend="unsloth")
    bf16, fp16 = flags or (precision.bf16, precision.fp16)
    return precision, {"trainer": trainer, "gpu_bf16": gpu_bf16, "full_finetuning": full_finetuning,
                       "handed_dtype": "float32" if full_finetuning else precision.dtype, "bf16": bf16, "fp16": fp16}


@pytest.fixture(scope="module")
def probed(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer-precision")
    decisions, cases = [], []
    for run in RUNS:
        precision, case = case_for(*run)
        decisions.append(precision)
        cases.append(case)
    # The old decision for float32 (keep it, no autocast flags) on a 4090, LoRA and full finetuning.
    cases.append({"trainer": "grpo", "gpu_bf16": True, "full_finetuning": False, "handed_dtype": "float32",
                  "bf16": False, "fp16": False})
    cases.append({"trainer": "ppo", "gpu_bf16": True, "full_finetuning": True, "handed_dtype": "float32",
                  "bf16": False, "fp16": False})
    (tmp / "cases.json").write_text(json.dumps(cases))
    # PYTHONPATH: this checkout's core/, not the one an editable install of another checkout points to.
    env = {"UNSLOTH_COMPILE_LOCATION": str(tmp / "unsloth_cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = run_entry(["python", "tests/trainer_precision_probe.py", str(tiny_models / "qwen2"),
                      str(tmp / "cases.json")], env=env, timeout=900)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    return decisions, json.loads(line[len("RESULTS "):])


def autocast(flags) -> str:
    return "bfloat16" if flags["bf16"] else "float16" if flags["fp16"] else "none"


# The probe imports unsloth.models.rl, which generates every trainer: about 35 s on 2 cores.
@pytest.mark.slow
def test_the_trainer_keeps_what_the_decision_recorded(probed):
    decisions, results = probed
    for run, precision, got in zip(RUNS, decisions, results, strict=False):
        expected = precision.dtype if precision.bf16 or precision.fp16 else "none"
        assert autocast(got) == expected, f"{run}: decided {precision.dtype}, the trainer runs {got}"
        assert got["accelerate"] == {"bfloat16": "bf16", "float16": "fp16", "none": "no"}[expected]


@pytest.mark.slow
def test_float32_under_unsloth_on_a_bf16_gpu_becomes_bf16_autocast(probed):
    """Why the decision says bfloat16 there: with no flag set, the generated trainer sets bf16 itself
    (LoRA and full finetuning alike). If a new Unsloth keeps float32, this fails and the decision in
    core/precision.py can keep float32 too."""
    decisions, results = probed
    assert [d.dtype for d in decisions[:2]] == ["bfloat16", "bfloat16"]
    for old in results[len(RUNS):]:
        assert autocast(old) == "bfloat16" and old["mixed_precision"] == "bf16"
    assert autocast(results[3]) == "none"  # the same float32 request on a T4 stays float32


def test_a_trainer_that_changed_the_flags_is_said_and_recorded(tmp_path, capsys, monkeypatch):
    """core/runs.py reads the trainer's final flags when training begins (the generated __init__ has
    run by then): a difference from the decision is one line and lands in run_info.json."""
    from types import SimpleNamespace

    from core.config import LAST_PARSE
    from core.runs import record_trainer_precision, write_run_info

    monkeypatch.setitem(LAST_PARSE, "precision", decide("float32", "cuda", True, "a GPU", backend="hf"))
    write_run_info(str(tmp_path))
    record = record_trainer_precision(str(tmp_path), SimpleNamespace(bf16=True, fp16=False))
    assert record == {"autocast": "bfloat16", "as_decided": False}
    assert "[precision] the trainer runs bfloat16 autocast, not the decided float32" in capsys.readouterr().out
    assert json.loads((tmp_path / "run_info.json").read_text())["precision"]["trainer"] == record
    assert record_trainer_precision(str(tmp_path), SimpleNamespace(bf16=False, fp16=False))["as_decided"]
    assert capsys.readouterr().out == ""
