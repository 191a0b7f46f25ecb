"""evaluate.preference: scores match what TRL's DPOTrainer computes, metrics are defined as documented."""

import json

import pytest
import torch

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core.config import ModelArguments
from core.models import load_model_and_tokenizer
from data.preference import FIXTURE, load_preference
from evaluate import preference as pe


def tiny_lora(tiny_models):
    margs = ModelArguments(model_name_or_path=str(tiny_models / "qwen2"), use_peft=True, lora_r=4, lora_alpha=8,
                           dtype="float32", max_seq_length=256, gradient_checkpointing_mode="false")
    return load_model_and_tokenizer(margs, seed=0)


def perturb(model, adapter="default", seed=0):
    """Give the (zero-initialised) LoRA B matrices values, so the adapter changes the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 5.0)


def test_scores_match_trl_dpo_log_probs_in_every_adapter_state(tiny_models):
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = tiny_lora(tiny_models)
    train, _ = load_preference(str(FIXTURE), test_size=0)
    rows = train.select(range(6))
    # max_length 64 cuts most answers: our scoring must truncate exactly as TRL's collator does.
    args = DPOConfig(output_dir=str(tiny_models.parent / "dpo-score"), max_length=64, bf16=False,
                     gradient_checkpointing=False, report_to="none")
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    kept = list(trainer.train_dataset["id"])  # TRL drops pairs whose prompt alone fills max_length
    assert [r["id"] for r in rows if pe.fits(tokenizer, r, 64)] == kept and len(kept) < len(rows)
    rows = rows.filter(lambda r: r["id"] in kept)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])

    perturb(model, "default", seed=1)
    with torch.no_grad():  # the frozen "ref" adapter becomes a copy of the trained one
        for name, param in model.named_parameters():
            if ".ref." in name:
                param.copy_(model.get_parameter(name.replace(".ref.", ".default.")))
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(model, batch)
    for state in ("policy", "reference"):
        with pe.model_state(model, state):
            ours = pe.score_pairs(model, tokenizer, list(rows), batch_size=4, max_length=64)
        assert [s["chosen_logp"] for s in ours] == pytest.approx(trl_chosen.tolist(), abs=1e-3)
        assert [s["rejected_logp"] for s in ours] == pytest.approx(trl_rejected.tolist(), abs=1e-3)

    model.delete_adapter("ref")  # now TRL's reference is the adapter switched off: the base model
    base_chosen, _ = trainer.compute_ref_log_probs(model, batch)
    with pe.model_state(model, "base"):
        base = pe.score_pairs(model, tokenizer, list(rows), max_length=64)
    assert [s["chosen_logp"] for s in base] == pytest.approx(base_chosen.tolist(), abs=1e-3)
    # ... and the adapter really matters, so the comparisons above could have failed
    assert max(abs(b["chosen_logp"] - o["chosen_logp"]) for b, o in zip(base, ours, strict=True)) > 0.1  # 100x the tolerance
    assert all(0 < s["chosen_tokens"] <= 64 for s in ours)


def score(chosen, rejected, nc=1, nr=1):
    return {"chosen_logp": chosen, "rejected_logp": rejected, "chosen_tokens": nc, "rejected_tokens": nr}


def test_preference_metrics_definitions():
    scores = [score(-10.0, -20.0, 10, 5), score(-30.0, -12.0, 10, 4), score(-5.0, -6.0, 5, 2)]
    m = pe.preference_metrics(scores)
    assert m["pairs"] == 3
    assert m["preference_accuracy"] == pytest.approx(2 / 3, abs=1e-4)       # pairs 0 and 2
    assert m["mean_margin"] == pytest.approx((10 - 18 + 1) / 3, abs=1e-4)
    # per token: -1 vs -4 (yes), -3 vs -3 (tie: no), -1 vs -3 (yes)
    assert m["preference_accuracy_per_token"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["mean_logp_chosen"] == pytest.approx(-15.0) and m["mean_logp_rejected"] == pytest.approx(-38 / 3, abs=1e-4)
    assert "reward_accuracy" not in m  # no reference, no implicit reward

    # With a reference: r = beta * (logp - logp_ref). Pair 1 is dispreferred in absolute terms but the
    # policy moved towards its chosen answer, so its implicit reward margin is positive.
    reference = [score(-10.0, -20.0), score(-40.0, -10.0), score(-4.0, -7.0)]
    m = pe.preference_metrics(scores, reference, beta=0.5)
    assert m["reward_accuracy"] == pytest.approx(1 / 3, abs=1e-4)  # margins: 0, 0.5*(10+2)=6, 0.5*(-1-1)=-1
    assert m["reward_margin"] == pytest.approx((0 + 6 - 1) / 3, abs=1e-4)
    assert m["reward_chosen"] == pytest.approx(0.5 * (0 + 10 - 1) / 3, abs=1e-4)
    with pytest.raises(ValueError):
        pe.preference_metrics([])


def test_reference_state_restores_the_trained_adapter(tiny_models):
    model, _ = tiny_lora(tiny_models)
    model.add_adapter("ref", model.peft_config["default"])
    with pe.model_state(model, "reference"):
        assert model.active_adapter == "ref"
    assert model.active_adapter == "default"
    assert all(p.requires_grad == (".default." in n) for n, p in model.named_parameters() if "lora_" in n)
    with pytest.raises(ValueError):
        with pe.model_state(model, "sft"):
            pass


def test_cli_scores_an_adapter_against_its_base_and_records_both(tiny_models, tmp_path):
    model, tokenizer = tiny_lora(tiny_models)
    perturb(model, seed=2)
    adapter = tmp_path / "myrun" / "adapter"
    model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    results = tmp_path / "eval"
    pe.main(["--model_name_or_path", str(adapter), "--dataset_name", str(FIXTURE), "--test_size", "4",
             "--results_dir", str(results), "--generations", "2", "--max_new_tokens", "4", "--beta", "0.2"])
    table = json.loads((results / "results.json").read_text(encoding="utf-8"))["preference"]
    assert list(table) == ["qwen2", "myrun"]
    assert table["qwen2"]["pairs"] == 4 and "reward_accuracy" not in table["qwen2"]
    after = table["myrun"]
    # the implicit reward is beta times the change in log-prob margin against the base
    assert after["reward_margin"] == pytest.approx(0.2 * (after["mean_margin"] - table["qwen2"]["mean_margin"]),
                                                   abs=1e-3)
    out = results / "preference-myrun"
    saved = json.loads((out / "preference_eval.json").read_text(encoding="utf-8"))
    assert saved["states"] == {"qwen2": "base", "myrun": "policy"}
    md = (out / "preference_generations.md").read_text(encoding="utf-8")
    assert pe.VI_INSTRUCTIONS[1] in md and "**qwen2**" in md and "**myrun**" in md
    assert "| myrun |" in (results / "comparison.md").read_text(encoding="utf-8")
