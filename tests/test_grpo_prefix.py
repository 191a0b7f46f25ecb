"""recipes/grpo_prefix.py: each prompt encoded once per group gives stock TRL's numbers.

The exactness tests build one `trl.GRPOTrainer` per case on a tiny random model with a random
(non-zero) LoRA, keep its stock methods, attach the shared prompt, and compare, in float32:
- the completions `generate` samples from the same seed (sampling unchanged),
- the no-grad passes: old-policy log-probs (`num_iterations: 2`) and reference log-probs
  (`beta: 0.04`, the adapter switched off),
- the loss of one micro-batch, its per-token log-probs and the LoRA gradients of its backward.
Within 1e-5 relative, for equal and unequal prompt lengths, G = 2 and 8, Qwen2 and Llama.
A full optimizer step (SGD, gradient accumulation 2, gradient checkpointing) is compared too.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import core.boot  # noqa: F401  (Unsloth before TRL, as in every entry point)

# isort: split
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import GRPOConfig, GRPOTrainer

from recipes import grpo_prefix as shared_prefix
from recipes.grpo_prefix import (
    SharedPrefix,
    attach,
    distinct_rows,
    record_in_run_info,
    stock_reasons,
    unsloth_prefix_grouper,
)

RTOL = 1e-5
STOCK = ("_get_per_token_logps_and_entropies", "_generate_single_turn")
# Prompts of the same length in the tiny tokenizer (asserted below) and of different lengths.
EQUAL = ["1 + 2 = ?", "7 + 5 = ?"]
UNEQUAL = ["Lan có 25 quả táo. Lan cho em gái 8 quả. Hỏi Lan còn lại bao nhiêu quả táo?", "1 + 2 = ?"]


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The tiny Qwen2 of the fixtures, and a tiny Llama (the embedded SmolLM2's architecture)."""
    llama = tmp_path_factory.mktemp("llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    return {"qwen2": tiny_models / "qwen2", "llama": llama}


def varied_reward(completions, **kwargs):
    """Rewards that differ within a group, so that advantages and gradients are not zero."""
    return [float(len(c[0]["content"]) % 7) for c in completions]


def make_trainer(path, tmp_path, G, beta=0.0, num_iterations=1, prompts=UNEQUAL, **overrides):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # A random LoRA (not the zero-initialised B of a fresh one), so that every LoRA matrix has a
    # gradient and the adapter changes the log-probs (the reference pass switches it off).
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts] * 4)
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=len(prompts) * G, num_generations=G,
                    max_completion_length=12, beta=beta, num_iterations=num_iterations, temperature=0.9,
                    report_to="none", use_cpu=True, bf16=False, logging_steps=1, seed=0, dataloader_pin_memory=False)
    settings.update(overrides)
    trainer = GRPOTrainer(model=model, reward_funcs=varied_reward, args=GRPOConfig(**settings),
                          train_dataset=data, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the loss reads it
    return trainer, data


def methods(trainer):
    return {name: getattr(trainer, name) for name in STOCK}


def use(trainer, chosen):
    for name, method in chosen.items():
        setattr(trainer, name, method)


def rel(ours, stock) -> float:
    return float((ours - stock).norm() / stock.norm())


def lora_grads(trainer):
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), lora_grads(trainer)


CASES = [  # (model, prompts, G, num_iterations, beta): every pair of values of any two factors occurs
    ("qwen2", EQUAL, 2, 1, 0.0),
    ("qwen2", UNEQUAL, 2, 2, 0.04),
    ("qwen2", EQUAL, 8, 2, 0.04),
    ("qwen2", UNEQUAL, 8, 1, 0.0),
    ("qwen2", UNEQUAL, 8, 2, 0.0),
    ("qwen2", EQUAL, 2, 1, 0.04),
    ("llama", UNEQUAL, 8, 2, 0.04),
    ("llama", EQUAL, 2, 1, 0.0),
]


@pytest.mark.parametrize("arch,prompts,G,num_iterations,beta", CASES,
                         ids=[f"{a}-{'equal' if p is EQUAL else 'unequal'}-G{g}-it{n}-beta{b}" for a, p, g, n, b in CASES])
def test_same_samples_logprobs_loss_and_lora_gradients_as_stock(models, tmp_path, arch, prompts, G, num_iterations,
                                                                  beta):
    trainer, data = make_trainer(models[arch], tmp_path, G, beta=beta, num_iterations=num_iterations,
                                 prompts=prompts)
    lengths = {len(trainer._tokenize_prompts([row["prompt"]])[0][0]) for row in data}
    assert (len(lengths) == 1) == (prompts is EQUAL), lengths  # the premise of the case
    stock = methods(trainer)
    state = attach(trainer)
    assert state.loss and state.generation
    shared = methods(trainer)
    batch = [data[i] for i in range(len(prompts)) for _ in range(G)]  # as TRL's sampler repeats them
    trainer.model.train()

    made = {}
    for name, chosen in (("stock", stock), ("shared", shared)):
        use(trainer, chosen)
        torch.manual_seed(1)
        made[name] = trainer._generate_and_score_completions(batch)
    a, b = made["stock"], made["shared"]
    assert torch.equal(a["completion_ids"], b["completion_ids"])  # generation: the same samples
    # What the shared prompt did not put through the model (the demo's compute budget takes it
    # off): in the prefill, every copy of a prompt but one, its last token excepted (each row runs
    # it); in the no-grad passes (old policy, reference), every copy but one, whole.
    lengths = a["prompt_mask"].sum(1).view(len(prompts), G)[:, 0]
    assert state.saved_tokens["generation"] == int(((G - 1) * (lengths - 1)).sum())
    no_grad_passes = (num_iterations > 1) + (beta > 0)
    assert 0 < state.saved_tokens["no_grad"] <= no_grad_passes * int(((G - 1) * lengths).sum()) or \
        state.saved_tokens["no_grad"] == no_grad_passes == 0
    assert torch.equal(a["advantages"], b["advantages"]) and a["advantages"].abs().sum() > 0
    mask = a["completion_mask"].bool()
    for key in ("old_per_token_logps", "ref_per_token_logps"):
        expected = {"old_per_token_logps": num_iterations > 1, "ref_per_token_logps": beta > 0}[key]
        assert (key in a) == expected and (key in b) == expected
        if expected:
            torch.testing.assert_close(b[key][mask], a[key][mask], rtol=RTOL, atol=0)

    # The loss passes, on the same micro-batch (TRL shuffles the rows: groups are not contiguous).
    rows = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    inputs = {k: v[rows] if torch.is_tensor(v) and v.dim() else v for k, v in a.items()}
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    width = inputs["completion_ids"].size(1)
    (lp_stock, ent_stock, _), (lp_ours, ent_ours, _) = (
        chosen["_get_per_token_logps_and_entropies"](trainer.model, ids, attention, width, compute_entropy=True)
        for chosen in (stock, shared))
    m = inputs["completion_mask"].bool()
    torch.testing.assert_close(lp_ours[m], lp_stock[m], rtol=RTOL, atol=0)
    torch.testing.assert_close(ent_ours[m], ent_stock[m], rtol=RTOL, atol=0)

    use(trainer, stock)
    loss_stock, grads_stock = loss_and_grads(trainer, inputs)
    use(trainer, shared)
    loss_ours, grads_ours = loss_and_grads(trainer, inputs)
    torch.testing.assert_close(loss_ours, loss_stock, rtol=RTOL, atol=1e-7)
    assert len(grads_stock) == 20  # A and B of 5 modules x 2 layers
    for name, grad in grads_stock.items():
        assert grad.norm() > 0, name
        assert rel(grads_ours[name], grad) <= RTOL, (name, rel(grads_ours[name], grad))
    # ... and all of it computed the shared way: the first-use check (which would send a wrong
    # computation back to stock, hiding it from this test) passed and the wrapper stayed on.
    assert state.loss and state.first_use_max_abs_logprob_diff <= 1e-5
    assert state.saved_tokens["grad"] > 0  # the loss passes above ran on the shared prompt


def forward_rows(model) -> list[int]:
    """Rows of every forward of the first decoder layer (prompt pass, completion pass, recompute)."""
    seen = []
    layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
    layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].size(0)))
    return seen


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_optimizer_step_with_accumulation_equals_stock(models, tmp_path, checkpointing):
    """The whole step through `train()`: generation, shuffled micro-batches (gradient accumulation
    2), the loss, (gradient checkpointing), SGD. SGD makes the weight change the gradient itself."""
    changes, rows = {}, {}
    for name in ("stock", "shared"):
        trainer, _ = make_trainer(models["qwen2"], tmp_path / name, G=4, gradient_accumulation_steps=2,
                                  per_device_train_batch_size=4, optim="sgd", learning_rate=0.5, max_steps=1,
                                  gradient_checkpointing=checkpointing, save_strategy="no")
        if name == "shared":
            state = attach(trainer)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        rows[name] = forward_rows(trainer.model)
        trainer.train()
        changes[name] = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert state.loss and state.generation and state.first_use_max_abs_logprob_diff < 1e-5
    flat = {name: torch.cat([c.flatten() for c in change.values()]) for name, change in changes.items()}
    assert flat["stock"].norm() > 0 and rel(flat["shared"], flat["stock"]) <= RTOL
    # Tensor by tensor the bound is looser: GRPO's gradient is a sum of per-token terms weighted by
    # advantages that cancel within a group, which magnifies float32 rounding in a small tensor.
    # Measured here: stock TRL against itself computing row by row (batch_size=1, same math)
    # differs by up to 1.6e-5 on one LoRA matrix; the shared prompt by up to 2.3e-5 (all
    # together: 6e-7 and 1.1e-6).
    for n, change in changes["stock"].items():
        assert change.norm() > 0, n
        assert rel(changes["shared"][n], change) <= 10 * RTOL, (n, rel(changes["shared"][n], change))
    # Where the rows went (rows through decoder layer 0 per forward). Stock: all 8 rows of the
    # generation batch through generate's prefill and decode steps, 4 per micro-batch in the loss.
    # Shared: 1 row per distinct prompt through each prompt pass (generate's prefill: 2; a
    # shuffled micro-batch of 4 holds 1 or 2 prompts), 4 rows through each micro-batch's
    # completion pass, 4 through the first-use check's stock pass; under checkpointing each
    # completion pass runs again in backward (the prompt pass is not checkpointed).
    assert min(rows["stock"]) >= 4, rows["stock"]
    prompt_passes = [r for r in rows["shared"] if r < 4]
    assert len(prompt_passes) == 3 and max(prompt_passes) <= 2, rows["shared"]
    assert rows["shared"].count(4) == 3 + (2 if checkpointing else 0), rows["shared"]


def test_first_use_check_sends_a_mismatch_back_to_stock(models, tmp_path, capsys, monkeypatch):
    """A shared computation that disagrees with stock (here: a deliberately wrong one) is caught on
    first use: the run says so and continues on stock's numbers."""
    trainer, data = make_trainer(models["qwen2"], tmp_path, G=2)
    stock = methods(trainer)
    real = shared_prefix.shared_prefix_logps

    def off_by_a_bit(*args, **kwargs):
        logps, entropies = real(*args, **kwargs)
        return logps + 0.01, entropies

    monkeypatch.setattr(shared_prefix, "shared_prefix_logps", off_by_a_bit)
    state = attach(trainer)
    trainer.model.train()
    batch = [data[i] for i in range(2) for _ in range(2)]
    inputs = trainer._generate_and_score_completions(batch)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    width = inputs["completion_ids"].size(1)
    got = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, width)[0]
    want = stock["_get_per_token_logps_and_entropies"](trainer.model, ids, attention, width)[0]
    assert torch.equal(got, want)
    assert not state.loss and state.generation
    assert 0.009 < state.first_use_max_abs_logprob_diff < 0.011
    out = capsys.readouterr().out
    assert "the loss passes go back to stock TRL from here (first-use check: log-probs differ" in out


def test_distinct_rows():
    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 5, 6], [0, 5, 6], [0, 0, 6]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 0, 1]])
    first, inverse = distinct_rows(ids, mask)
    assert torch.equal(ids[first][inverse], ids) and torch.equal(mask[first][inverse], mask)
    assert sorted(first.tolist()) == [0, 2, 4]  # the first row of each prompt
    # Row 4 has the pad id (0) as a real token: the mask keeps it apart from the padded rows.
    assert len({inverse[0].item(), inverse[2].item(), inverse[4].item()}) == 3


def fake_trainer(**changes):
    """What `stock_reasons` reads from a GRPOTrainer, for the cases a tiny CPU run cannot build."""
    values = dict(accelerator=SimpleNamespace(num_processes=1), _is_vlm=False, tools=None, rollout_func=None,
                  environment_factories=None, aux_loss_enabled=False, model_kwarg_keys={"logits_to_keep"},
                  use_liger_kernel=False, use_vllm=False, use_transformers_continuous_batching=False,
                  args=SimpleNamespace(cache_implementation=None))
    values.update(changes)
    return SimpleNamespace(**values)


@pytest.mark.parametrize("changes,loss,generation", [
    ({}, [], []),
    ({"use_vllm": True}, [], ["vLLM generates"]),
    ({"accelerator": SimpleNamespace(num_processes=2)},
     ["2 processes: DDP/FSDP/DeepSpeed not verified"], ["2 processes: DDP/FSDP/DeepSpeed not verified"]),
    ({"aux_loss_enabled": True}, ["a mixture-of-experts auxiliary loss"], []),
    ({"use_liger_kernel": True}, ["the Liger loss"], []),
    ({"_is_vlm": True}, ["a vision-language model"], ["a vision-language model"]),
    ({"args": SimpleNamespace(cache_implementation="static")}, [], ["cache_implementation 'static'"]),
])
def test_stock_reasons(changes, loss, generation):
    assert stock_reasons(fake_trainer(**changes)) == {"loss": loss, "generation": generation}


def test_off_and_stock_lines(models, tmp_path, capsys):
    trainer, _ = make_trainer(models["qwen2"], tmp_path, G=2)
    before = methods(trainer)
    state = attach(trainer, enabled=False)
    assert methods(trainer) == before and not state.loss and not state.generation
    assert capsys.readouterr().out.strip().splitlines() == [
        "[grpo] shared prompt: off (shared_prefix: false): stock TRL encodes every prompt G times"]
    trainer, _ = make_trainer(models["qwen2"], tmp_path / "2", G=2, gradient_checkpointing=True,
                              gradient_checkpointing_kwargs={"use_reentrant": True})
    trainer.model.gradient_checkpointing_enable({"use_reentrant": True})  # as train() does
    state = attach(trainer)
    trainer.model.train()
    ids = torch.tensor([[3, 4, 5, 6]] * 2)
    trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), 2)
    assert not state.loss and state.stock_because["loss"] == [
        "gradient checkpointing is not torch's non-reentrant checkpoint (use_reentrant: false)"]


class UnslothGRPOTrainer(SimpleNamespace):
    """Stands in for Unsloth's patched trainer class (GPU path): what `unsloth_prefix_grouper` reads."""


@pytest.mark.parametrize("env,model_flags,gate,engaged", [
    ({}, {}, "on, subject to its token-ratio gate and first-use check", False),
    ({}, {"_unsloth_prefix_grouper_grad_verified": {("sig",): (300, 200)}}, "on, subject to", True),
    ({"UNSLOTH_GRPO_PREFIX_GROUPER": "0"}, {}, "off (UNSLOTH_GRPO_PREFIX_GROUPER off)", False),
    ({"UNSLOTH_GRPO_SEQ_PACKING": "false"}, {}, "off (UNSLOTH_GRPO_SEQ_PACKING off)", False),
])
def test_unsloth_prefix_grouper_flags(monkeypatch, env, model_flags, gate, engaged):
    for name in ("UNSLOTH_GRPO_PREFIX_GROUPER", "UNSLOTH_GRPO_SEQ_PACKING"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    model = SimpleNamespace(**model_flags)
    trainer = UnslothGRPOTrainer(use_vllm=False, _entropy_bonus_enabled=False, top_entropy_quantile=1.0, model=model,
                                 accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    assert shared_prefix.is_unsloth_trainer(trainer)
    found = unsloth_prefix_grouper(trainer)
    assert found["gate"].startswith(gate) and found["engaged"] is engaged


def test_record_in_run_info(tmp_path):
    (tmp_path / "run_info.json").write_text(json.dumps({"recipe": "grpo"}))
    state = SharedPrefix(loss=True, generation=False, first_use_max_abs_logprob_diff=1e-6)
    state.stock_because["generation"].append("vLLM generates")
    record_in_run_info(str(tmp_path), state)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["recipe"] == "grpo"
    assert info["shared_prefix"] == {"loss": True, "generation": False,
                                     "stock_because": {"loss": [], "generation": ["vLLM generates"]},
                                     "first_use_max_abs_logprob_diff": 1e-6, "unsloth_prefix_grouper": None,
                                     "saved_tokens": {"generation": 0, "grad": 0, "no_grad": 0}}
