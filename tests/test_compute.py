"""core/compute.py: the FLOP arithmetic of a compute budget, and the parameter count it rests on."""

import json

import pytest

from core.compute import (
    generation_flops,
    grpo_flops,
    grpo_recomputes_old_logps,
    parameter_count,
    sft_flops,
    sft_steps_for,
    tokens_trained,
)

N = 1_000_000  # a round parameter count keeps the arithmetic readable


@pytest.mark.parametrize("kwargs, expected", [
    # 1000 tokens sampled: generated (2N each) and trained (6N each)
    ({}, {"generation": 2e9, "training": 6e9, "old_logps": 0.0, "reference": 0.0, "total": 8e9}),
    ({"num_iterations": 2, "old_logps": True}, {"generation": 2e9, "training": 12e9, "old_logps": 2e9,
                                                "reference": 0.0, "total": 16e9}),
    ({"reference": True}, {"generation": 2e9, "training": 6e9, "old_logps": 0.0, "reference": 2e9, "total": 10e9}),
    ({"train_factor": 4}, {"generation": 2e9, "training": 4e9, "old_logps": 0.0, "reference": 0.0, "total": 6e9}),
])
def test_grpo_flops(kwargs, expected):
    assert grpo_flops(N, 1000, **kwargs) == pytest.approx(expected)


def test_grpo_flops_take_off_what_the_shared_prompt_did_not_compute():
    # 1000 tokens sampled, 600 of them prompt copies the shared prefix skipped in the prefill and in
    # each of two loss passes (num_iterations 2), 600 in the old policy's no-grad pass.
    saved = {"generation": 600, "grad": 1200, "no_grad": 600}
    parts = grpo_flops(N, 1000, num_iterations=2, old_logps=True, reference=True, saved=saved)
    # The two no-grad passes (2N x 1000 each) lose 2N x 600 between them, in proportion: 1400N each.
    assert parts == pytest.approx({"generation": 2 * N * 400, "training": 6 * N * 800,
                                   "old_logps": 1400 * N, "reference": 1400 * N,
                                   "total": 2 * N * 400 + 6 * N * 800 + 2 * 1400 * N})
    assert grpo_flops(N, 1000, saved={})["total"] == grpo_flops(N, 1000)["total"]


@pytest.mark.parametrize("config, expected", [
    ({"gradient_accumulation_steps": 1}, False),  # the demo: one generation per optimizer step
    ({"gradient_accumulation_steps": 4, "steps_per_generation": 4}, False),
    ({"gradient_accumulation_steps": 1, "num_iterations": 2}, True),  # a batch reused by a later step
    ({"gradient_accumulation_steps": 2, "steps_per_generation": 4}, True),
    ({"gradient_accumulation_steps": 1, "use_vllm": True, "vllm_importance_sampling_correction": True}, True),
    ({"gradient_accumulation_steps": 1, "use_vllm": True, "vllm_importance_sampling_correction": False}, False),
    ({"gradient_accumulation_steps": 1, "use_vllm": False, "vllm_importance_sampling_correction": True}, False),
])
def test_when_grpo_recomputes_the_old_policy(config, expected):
    assert grpo_recomputes_old_logps(config) is expected


def test_sft_matched_to_a_grpo_budget():
    # GRPO sampled 64 sequences of 150 tokens a step for 30 steps and filtered 400 problems x 9
    # answers first (120 prompt + 20 completion tokens each); SFT trains 8 rows of 150 tokens a step.
    grpo = grpo_flops(N, 30 * 64 * 150)["total"]
    filtering = generation_flops(N, 400 * 9 * 120, 400 * 9 * 20)
    assert grpo == pytest.approx(8 * N * 288_000) and filtering == pytest.approx(2 * N * 504_000)
    # (8 x 288000 + 2 x 504000) / (6 x 1200) = 460 steps: SFT trains 3 tokens for every 1 GRPO samples
    assert sft_steps_for(grpo + filtering, N, 8 * 150) == 460
    assert sft_steps_for(grpo, N, 8 * 150) == 320
    assert sft_flops(N, 320 * 8 * 150) == pytest.approx(grpo)
    assert sft_steps_for(1.0, N, 1200) == 1  # never zero steps
    # N cancels: the step count does not depend on the model's size, only the FLOPs do
    assert sft_steps_for(grpo_flops(7 * N, 288_000)["total"], 7 * N, 1200) == 320
    with pytest.raises(ValueError, match="positive"):
        sft_steps_for(1e9, N, 0)


def test_tokens_trained_reads_trls_cumulative_count():
    rows = [{"step": 1, "num_tokens": 100.0, "loss": 1.0}, {"step": 2, "num_tokens": 260.0},
            {"step": 2, "eval_accuracy": 0.5},  # a held-out check has no num_tokens
            {"step": 3, "num_tokens": 500.0}, {"step": 3, "num_tokens": 420.0},  # step 3 redone after a resume
            {"step": 3, "train_runtime": 12.0}]
    assert tokens_trained(rows) == (3, 420.0)
    with pytest.raises(ValueError, match="no num_tokens"):
        tokens_trained([{"step": 1, "loss": 0.3}])


def test_parameter_count_reads_the_safetensors_headers(tiny_models, tmp_path):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models / "qwen2")
    # the parameters the model computes with: tied embeddings once
    assert parameter_count(tiny_models / "qwen2") == sum(p.numel() for p in model.parameters())

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a": torch.zeros(3, 4)}, sharded / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(5), "c": torch.zeros(2, 2, 2)}, sharded / "model-00002-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                            "c": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert parameter_count(sharded) == 12 + 5 + 8
    with pytest.raises(ValueError, match="no .safetensors"):
        parameter_count(tmp_path / "empty")
