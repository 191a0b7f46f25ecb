"""Contracts for what Unsloth does differently on a GPU, pinned on the CPU.

On a CPU, Unsloth runs a separate backend, so these tests check what the toolkit hands Unsloth's GPU
loader (its arguments), and what the toolkit does itself where Unsloth's GPU path would go wrong
(the adapter's recorded base, merging into 16-bit). bench/gpu_check.py asserts the same on a GPU.
"""

import json
import shutil
import sys
import types

import pytest
import torch

import core.adapters
import core.boot  # noqa: F401
import core.precision
from core.adapters import is_prequantized, name_16bit_base
from core.cli import UserError
from core.config import ModelArguments
from core.merge import merge_adapter
from core.models import load_model_and_tokenizer


@pytest.fixture
def unsloth_calls(monkeypatch, tiny_models):
    """Replace FastLanguageModel.from_pretrained by a recorder that loads the tiny model with plain
    transformers (a saved adapter on top, trainable, as Unsloth does for an adapter directory)."""
    import unsloth
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        name = kwargs["model_name"]
        base = core.adapters.adapter_base(name)
        model = AutoModelForCausalLM.from_pretrained(base or name, dtype=kwargs["dtype"])
        tokenizer = AutoTokenizer.from_pretrained(name)
        if base:
            model = PeftModel.from_pretrained(model, name, is_trainable=True)
        return model, tokenizer

    monkeypatch.setattr(unsloth.FastLanguageModel, "from_pretrained", staticmethod(fake))
    return calls


def test_full_finetuning_is_asked_of_unsloth_with_float32_masters(unsloth_calls, tiny_models):
    # GPT-2 without LoRA: on a GPU, FastModel without full_finetuning=True freezes every weight.
    margs = ModelArguments(model_name_or_path=str(tiny_models / "gpt2"), use_peft=False, load_in_4bit=False,
                           require_chat_template=False, dtype="auto", max_seq_length=64)
    model, _ = load_model_and_tokenizer(margs)
    assert unsloth_calls[-1]["full_finetuning"] is True
    assert unsloth_calls[-1]["dtype"] == torch.float32  # masters; bf16/fp16 come from the trainer's autocast
    assert all(p.requires_grad for p in model.parameters())
    load_model_and_tokenizer(margs, for_training=False)  # evaluation: nothing trains
    assert unsloth_calls[-1]["full_finetuning"] is False


def test_lora_keeps_the_base_in_the_decided_dtype(unsloth_calls, tiny_models, monkeypatch):
    monkeypatch.setenv("VIRL_BF16", "1")
    margs = ModelArguments(model_name_or_path=str(tiny_models / "qwen2"), use_peft=True, lora_r=4,
                           load_in_4bit=False, dtype="auto", max_seq_length=64)
    load_model_and_tokenizer(margs)
    assert unsloth_calls[-1]["full_finetuning"] is False and unsloth_calls[-1]["dtype"] == torch.bfloat16


def test_full_finetuning_in_4bit_is_refused(tiny_models):
    margs = ModelArguments(model_name_or_path=str(tiny_models / "gpt2"), use_peft=False, load_in_4bit=True,
                           require_chat_template=False)
    with pytest.raises(UserError, match="4-bit weights cannot"):
        load_model_and_tokenizer(margs)


def _adapter(tiny_models, tmp_path, r=4, random_b=True):
    """A saved LoRA adapter on the tiny Qwen2 whose B matrices are not zero (so it changes outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_models / "qwen2", dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=not random_b, task_type="CAUSAL_LM")
    torch.manual_seed(0)
    model = get_peft_model(base, config)
    out = tmp_path / f"adapter-r{r}"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_models / "qwen2").save_pretrained(out)
    return out


def test_an_adapter_is_handed_to_unsloth_whole(tiny_models, tmp_path, monkeypatch):
    """Continuing an adapter goes through Unsloth's own adapter loading (patch_peft_model on a GPU:
    fast LoRA kernels and, with vLLM, the LoRA request that makes generation sample from it), not
    through a PeftModel attached by hand afterwards."""
    import peft
    import unsloth

    adapter = _adapter(tiny_models, tmp_path)
    names, attached = [], []
    real_load, real_attach = unsloth.FastLanguageModel.from_pretrained, peft.PeftModel.from_pretrained.__func__

    def load(**kwargs):
        names.append(kwargs["model_name"])
        return real_load(**kwargs)

    def attach(cls, *args, **kwargs):
        attached.append(args[1])
        return real_attach(cls, *args, **kwargs)

    monkeypatch.setattr(unsloth.FastLanguageModel, "from_pretrained", staticmethod(load))
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", classmethod(attach))
    margs = ModelArguments(model_name_or_path=str(adapter), use_peft=True, lora_r=4, load_in_4bit=False,
                           max_seq_length=64)
    model, _ = load_model_and_tokenizer(margs)
    assert names == [str(adapter)]  # the adapter directory, not its base
    assert len(attached) == 1  # once, inside Unsloth's loader
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_B" in n)


def test_vllm_slots_hold_the_adapter_being_continued(unsloth_calls, tiny_models, tmp_path, monkeypatch):
    """fast_inference on a GPU: vLLM's max_lora_rank must be at least the continued adapter's rank."""
    adapter = _adapter(tiny_models, tmp_path, r=32)
    monkeypatch.setattr(core.precision, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA L4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    monkeypatch.setenv("VIRL_BF16", "1")
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    margs = ModelArguments(model_name_or_path=str(adapter), use_peft=True, lora_r=16, load_in_4bit=False,
                           fast_inference=True, max_seq_length=64)
    load_model_and_tokenizer(margs)
    call = unsloth_calls[-1]
    assert call["fast_inference"] is True and call["max_lora_rank"] == 32
    assert call["model_name"] == str(adapter)


# ----------------------------------------------------------------------------- adapter base + merge
@pytest.mark.parametrize("recorded,intended,rewritten", [
    ("unsloth/qwen2.5-3b-instruct-unsloth-bnb-4bit", "unsloth/Qwen2.5-3B-Instruct", True),   # Unsloth's 4-bit copy
    ("unsloth/Qwen2.5-3B-Instruct-bnb-4bit", "unsloth/Qwen2.5-3B-Instruct", True),
    ("unsloth/Qwen2.5-3B-Instruct", "unsloth/Qwen2.5-3B-Instruct", False),                   # nothing to fix
    ("unsloth/qwen2.5-3b-instruct-unsloth-bnb-4bit", "unsloth/Qwen2.5-3B-Instruct-bnb-4bit", False),  # user chose 4-bit
])
def test_the_adapter_records_its_16bit_base(tmp_path, recorded, intended, rewritten):
    config = {"base_model_name_or_path": recorded, "r": 8, "peft_type": "LORA"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    name_16bit_base(str(tmp_path), intended)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == (intended if rewritten else recorded)
    assert saved["r"] == 8


def test_a_local_quantized_checkpoint_is_recognised(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"load_in_4bit": True}}))
    assert is_prequantized(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert not is_prequantized(str(tmp_path))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_matches_base_plus_adapter_and_saves_what_it_checked(tiny_models, tmp_path, dtype):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = _adapter(tiny_models, tmp_path)
    out = tmp_path / "merged"
    loads = []
    real_load = AutoModelForCausalLM.from_pretrained

    def load(*args, **kwargs):
        loads.append(kwargs["dtype"])
        return real_load(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoModelForCausalLM, "from_pretrained", load)
        report = merge_adapter(str(adapter), str(out), dtype=dtype)
    assert loads == [getattr(torch, dtype)]  # the base is held once, in the saved dtype (not float32 for bf16)
    assert report["lora_layers_checked"] == 6 and report["max_layer_rel_diff_fp32"] < 1e-5
    if dtype == "float32":
        assert report["next_token_agreement"] == 1.0 and report["max_abs_logit_diff"] < 1e-4
    else:  # the merged weights are rounded to 16 bits
        assert report["max_abs_logit_diff"] <= 0.05 * report["logit_scale"] and report["next_token_agreement"] >= 0.9
    assert json.loads((out / "merge.json").read_text())["dtype"] == dtype
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {getattr(torch, dtype)}

    # Independently of merge_adapter: the saved model answers like base + adapter.
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Lan có 25 quả táo.", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_models / "qwen2", dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, adapter)(**ids).logits
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(**ids).logits
    plain = AutoModelForCausalLM.from_pretrained(tiny_models / "qwen2", dtype=torch.float32)(**ids).logits
    tolerance = 1e-4 if dtype == "float32" else 0.05 * expected.abs().max().item()
    assert (got - expected).abs().max() < tolerance
    assert (plain - expected).abs().max() > 10 * (got - expected).abs().max()  # the adapter matters


def test_a_wrong_merge_is_caught_before_anything_is_saved(tiny_models, tmp_path, monkeypatch):
    """The per-layer check can fail: a merge that adds LoRA's update twice is stopped."""
    from peft.tuners.lora import Linear

    real_merge = Linear.merge

    def twice(self, *args, **kwargs):
        real_merge(self, *args, **kwargs)
        self.merged_adapters.clear()
        real_merge(self, *args, **kwargs)

    monkeypatch.setattr(Linear, "merge", twice)
    with pytest.raises(RuntimeError, match="a merged layer differs from base layer"):
        merge_adapter(str(_adapter(tiny_models, tmp_path)), str(tmp_path / "merged"), dtype="bfloat16")
    assert not (tmp_path / "merged").exists()


def test_a_merge_that_loses_the_adapter_is_caught_by_the_logits(tiny_models, tmp_path, monkeypatch):
    """The whole-model check can fail too: layers left unmerged (their LoRA then dropped) leave the
    base model, whose logits are far from base + adapter's."""
    import core.merge

    monkeypatch.setattr(core.merge, "_merge_layer", lambda layer, dtype, device: 0.0)
    with pytest.raises(RuntimeError, match="merged logits differ from base"):
        merge_adapter(str(_adapter(tiny_models, tmp_path)), str(tmp_path / "merged"), dtype="bfloat16")


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_16bit_weights_computing_in_float32_give_the_float32_numbers(tiny_models, arch):
    """compute_in_float32 (the merge check and deploy/verify.py): a bf16 model gives what a float32
    copy of the same weights gives, generation included, without holding that copy."""
    from transformers import AutoModelForCausalLM

    from core.merge import compute_in_float32

    stored = AutoModelForCausalLM.from_pretrained(tiny_models / arch, dtype=torch.bfloat16).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_models / arch, dtype=torch.bfloat16).float().eval()
    compute_in_float32(stored)
    ids = torch.tensor([[5, 9, 2, 7, 11, 3, 8]])
    with torch.no_grad():
        got, want = stored(input_ids=ids).logits, reference(input_ids=ids).logits
        assert got.dtype == torch.float32 and torch.allclose(got, want, rtol=0, atol=1e-5)
        assert torch.equal(stored.generate(ids, max_new_tokens=8, do_sample=False),
                           reference.generate(ids, max_new_tokens=8, do_sample=False))
    assert {p.dtype for p in stored.parameters()} == {torch.bfloat16}  # put back after every call


@pytest.mark.parametrize("free, stored_dtype", [(2**40, torch.float32), (0, torch.bfloat16)])
def test_the_reload_check_upcasts_once_where_float32_fits(tiny_models, tmp_path, monkeypatch, free, stored_dtype):
    """deploy/verify.py's reference: upcast once when a float32 copy fits in free memory (fast), else
    16-bit weights computing in float32 module by module (small); the same numbers either way."""
    from transformers import AutoModelForCausalLM

    from deploy import verify

    folder = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_models / "qwen2", dtype=torch.bfloat16).save_pretrained(folder)
    monkeypatch.setattr(verify, "free_bytes", lambda device: free)
    monkeypatch.setattr(verify, "_device", lambda: torch.device("cpu"))
    model = verify.load_hf(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).float().eval()
    assert {p.dtype for p in model.parameters()} == {stored_dtype}
    ids = torch.tensor([[5, 9, 2, 7, 11, 3, 8]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_merge_refuses_a_quantized_base_and_an_existing_folder(tiny_models, tmp_path):
    adapter = _adapter(tiny_models, tmp_path)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not overwriting"):
        merge_adapter(str(adapter), str(taken))
    assert (taken / "keep.txt").read_text() == "mine"
    quantized = tmp_path / "quantized-adapter"
    shutil.copytree(adapter, quantized)
    config = json.loads((quantized / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "unsloth/qwen2.5-3b-instruct-unsloth-bnb-4bit"
    (quantized / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="keeps the 4-bit rounding"):
        merge_adapter(str(quantized), str(tmp_path / "m"))


def test_an_adapter_with_a_relative_base_loads_through_unsloth_from_anywhere(tiny_models, tmp_path, monkeypatch):
    """Unsloth reads the recorded base as written; a run folder used from another directory must
    still load (through a temporary view of the adapter) and stay untouched."""
    project = tmp_path / "project"
    shutil.copytree(tiny_models / "qwen2", project / "models" / "qwen2")
    adapter = _adapter(tiny_models, project / "runs")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "models/qwen2"  # as written by a run started in `project`
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    margs = ModelArguments(model_name_or_path=str(adapter), use_peft=True, load_in_4bit=False, max_seq_length=64)
    model, _ = load_model_and_tokenizer(margs, for_training=False)
    assert any("lora_B" in n for n, _ in model.named_parameters())
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "models/qwen2"
