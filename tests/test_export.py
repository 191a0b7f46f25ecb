"""deploy/export.py: GGUF / merged / adapter exports with their reload check, the Ollama Modelfile,
the model card and hub push, and one-line errors for bad input.

The GGUF tests run llama.cpp's real converter from the cache ($VIRL_CACHE or ~/.cache/vi-rl),
where `make install` put it (`python -m deploy.llamacpp --fetch`). They never download it: without
it they fail and say to run `make install`, and any attempt to fetch fails the test (pip is
refused in-process, PIP_NO_INDEX=1 in a subprocess).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from core.cli import UserError, run_cli
from deploy import export as export_mod
from deploy import llamacpp
from deploy.card import generation_settings, is_chatml, modelfile, training_length
from deploy.gguf_convert import QWEN2_SPLIT, llama_cpp_rule, with_legacy_keys
from deploy.verify import CHECK_QUESTIONS
from tests.conftest import NO_DOWNLOAD_ENV, ROOT, run_entry


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """An export in this process must find the converter cached: running pip fails the test."""
    def refuse(args):
        raise AssertionError(f"a test ran `pip {' '.join(args)}`: tests never download (`make install` "
                             "caches llama.cpp's converter)")

    monkeypatch.setattr(llamacpp, "_run_pip", refuse)


def add_lora(root: Path, base: str, adapter: str, targets: list[str] | None = None) -> Path:
    """A LoRA adapter on `root/base` saved in `root/adapter`, naming its base by the relative path
    `base`, as a recipe run from the project root does. Random A and B (not PEFT's zero B):
    merging must change the weights for the check to mean anything."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.models import default_target_modules

    model = AutoModelForCausalLM.from_pretrained(root / base, dtype=torch.float32)
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets or default_target_modules(model),
                                            fan_in_fan_out=model.config.model_type == "gpt2",  # Conv1D weights
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    lora.save_pretrained(root / adapter)
    AutoTokenizer.from_pretrained(root / base).save_pretrained(root / adapter)
    config = json.loads((root / adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (root / adapter / "adapter_config.json").write_text(json.dumps(config))
    return root / adapter


@pytest.fixture(scope="module")
def project(tiny_models, tmp_path_factory) -> Path:
    """A project folder with the tiny models under runs/tiny (qwen2, gpt2, and gpt2-plain: GPT-2
    without a chat template, like NlpHUST/gpt2-vietnamese and the policy PPO trains from it) and
    LoRA adapters trained 'from the root' on them, whose adapter_config.json names the base by a
    relative path: runs/grpo-tiny/adapter on runs/tiny/qwen2, runs/ppo-tiny/adapter on runs/tiny/gpt2."""
    root = tmp_path_factory.mktemp("project")
    for name in ("qwen2", "gpt2"):
        shutil.copytree(tiny_models / name, root / "runs" / "tiny" / name)
    plain = root / "runs" / "tiny" / "gpt2-plain"
    shutil.copytree(tiny_models / "gpt2", plain)
    (plain / "chat_template.jinja").unlink()
    assert "chat_template" not in (plain / "tokenizer_config.json").read_text()
    add_lora(root, "runs/tiny/qwen2", "runs/grpo-tiny/adapter", targets=["q_proj", "v_proj", "down_proj"])
    add_lora(root, "runs/tiny/gpt2", "runs/ppo-tiny/adapter")  # c_attn, c_fc, c_proj: GPT-2's Conv1D layers
    return root


def run_export(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m deploy.export` from any folder, as a user who has the package installed."""
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **NO_DOWNLOAD_ENV}
    return run_entry(["python", "-m", "deploy.export", *args], cwd=cwd, env=env, check=check)


def test_gguf_of_an_adapter_from_another_directory(project, tmp_path, llama_cpp_converter):
    # The case: the adapter names its base `runs/tiny/qwen2`, and the command runs elsewhere.
    out = tmp_path / "gguf"
    run_export(["--model", str(project / "runs/grpo-tiny/adapter"), "--format", "gguf", "--quant", "q8_0",
                "--output_dir", str(out)], cwd=tmp_path)
    record = json.loads((out / "export.json").read_text())
    assert record["base"] == str(project / "runs/tiny/qwen2")
    assert [c["step"] for c in record["checks"]] == ["merge", "convert"]
    assert all(c["passed"] and c["prompts"] == 4 for c in record["checks"])
    assert record["checks"][1]["expected"] == "8-bit"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "export.json", record["gguf_file"]]
    assert record["gguf_file"].endswith("-q8_0.gguf") and (out / record["gguf_file"]).stat().st_size > 100_000
    assert {"merge", "convert", "check", "reference"} <= set(record["times_s"])
    assert record["files"][0]["bytes"] > 0 and record["total_bytes"] >= record["files"][0]["bytes"]
    # The GGUF itself: written by llama.cpp's converter, with the tokenizer's own special tokens
    from gguf import GGUFReader

    reader = GGUFReader(str(out / record["gguf_file"]))
    fields = {name: reader.fields[name] for name in ("general.architecture", "tokenizer.ggml.pre",
                                                     "tokenizer.ggml.eos_token_id")}
    text = {k: bytes(v.parts[v.data[0]]).decode() for k, v in fields.items() if k != "tokenizer.ggml.eos_token_id"}
    # transformers loads the tiny tokenizer with Qwen2's split: llama.cpp must split the same way
    assert text == {"general.architecture": "qwen2", "tokenizer.ggml.pre": "qwen2"}
    assert int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0]) == 2  # <|im_end|>, not <|im_start|>
    modelfile_text = (out / "Modelfile").read_text()
    assert modelfile_text.startswith("# Ollama") and f"FROM ./{record['gguf_file']}" in modelfile_text
    card = (out / "README.md").read_text()
    assert "Base model: **" + str(project / "runs/tiny/qwen2") in card
    # The card states each check as measured: its counts, its agreement and its rule.
    merge, convert = record["checks"]
    assert (f"- merge: {merge['identical']}/4 prompts identical, top-1 agreement {merge['top1_agreement']:.3f} "
            "(rule: top1_agreement >= 0.95) - passed") in card.splitlines()
    assert (f"- convert: {convert['identical']}/4 prompts identical, top-1 agreement "
            f"{convert['top1_agreement']:.3f} (rule: top1_agreement >= 0.9) - passed") in card.splitlines()
    assert f"llama-server -m {record['gguf_file']}" in card


def test_merged_export_is_16bit_and_reloads(project, tmp_path):
    out = tmp_path / "merged"
    run_export(["--model", str(project / "runs/grpo-tiny/adapter"), "--format", "merged", "--output_dir", str(out)],
               cwd=project)
    record = json.loads((out / "export.json").read_text())
    assert record["checks"][0]["step"] == "merge" and record["checks"][0]["passed"]
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert not list(out.glob(".*")), "no staging leftovers"


# Every architecture the recipes train x every format `make export` offers. Models are named
# under the project's runs/ (see `project`); "embedded" is the embedded SmolLM2-135M-Instruct
# (Llama), exported as `make export` does without MODEL.
# `rule` is the rule of the export's own check (verify.TOLERANCES): f16/bf16 of the tiny float32
# models rounds; an adapter merged into bf16 and written as bf16 is exact.
# GGUF general.architecture and tokenizer.ggml.pre (llama.cpp's split rule) per architecture:
ARCH = {"qwen2": ("qwen2", "qwen2"), "gpt2": ("gpt2", "gpt-2"), "llama": ("llama", "smollm")}
FILE_TYPES = {"f16": 1, "bf16": 32, "q8_0": 7}  # general.file_type: llama.cpp's LLAMA_FTYPE_MOSTLY_*


def case(name: str, model: str, arch: str, fmt: str, quant: str | None, rule: str, slow: bool = True):
    return pytest.param(model, arch, fmt, quant, rule, id=f"{name}-{fmt}" + (f"-{quant}" if quant else ""),
                        marks=[pytest.mark.slow] if slow else [])


EXPORTS = [
    # Default run: the case (GPT-2 to GGUF), GPT-2 without a chat template, LoRA on GPT-2.
    case("gpt2", "tiny/gpt2", "gpt2", "gguf", "q8_0", "8-bit", slow=False),
    case("gpt2_plain", "tiny/gpt2-plain", "gpt2", "gguf", "f16", "16-bit rounding", slow=False),
    case("gpt2_lora", "ppo-tiny/adapter", "gpt2", "merged", None, "16-bit rounding", slow=False),
    case("gpt2_lora", "ppo-tiny/adapter", "gpt2", "adapter", None, "exact", slow=False),
    # The rest (the Qwen2 adapter's q8_0, merged and adapter exports run in the tests above).
    case("gpt2", "tiny/gpt2", "gpt2", "gguf", "f16", "16-bit rounding"),
    case("gpt2", "tiny/gpt2", "gpt2", "gguf", "bf16", "16-bit rounding"),
    case("gpt2_plain", "tiny/gpt2-plain", "gpt2", "gguf", "bf16", "16-bit rounding"),
    case("gpt2_plain", "tiny/gpt2-plain", "gpt2", "gguf", "q8_0", "8-bit"),
    case("gpt2_lora", "ppo-tiny/adapter", "gpt2", "gguf", "f16", "16-bit rounding"),
    case("gpt2_lora", "ppo-tiny/adapter", "gpt2", "gguf", "bf16", "exact"),
    case("gpt2_lora", "ppo-tiny/adapter", "gpt2", "gguf", "q8_0", "8-bit"),
    case("qwen2", "tiny/qwen2", "qwen2", "gguf", "f16", "16-bit rounding"),
    case("qwen2", "tiny/qwen2", "qwen2", "gguf", "bf16", "16-bit rounding"),
    case("qwen2", "tiny/qwen2", "qwen2", "gguf", "q8_0", "8-bit"),
    case("qwen2_lora", "grpo-tiny/adapter", "qwen2", "gguf", "f16", "16-bit rounding"),
    case("qwen2_lora", "grpo-tiny/adapter", "qwen2", "gguf", "bf16", "exact"),
    # The embedded model (llama): the architecture and its tokenizer through f16 (~1.5 min on 2
    # cores). Its LoRA exports (merged, adapter, q8_0) took 2.5-7 min each, too long for CI; LoRA
    # merging and every format are covered on the tiny Qwen2 and GPT-2 above.
    case("llama", "embedded", "llama", "gguf", "f16", "exact"),
]


def folder_state(folder: Path) -> dict[str, bytes | int]:
    """Every file in a model folder with its bytes (the tiny ones), or its size (the embedded model)."""
    return {p.name: p.read_bytes() if p.stat().st_size < 10_000_000 else p.stat().st_size
            for p in sorted(folder.iterdir()) if p.is_file()}


def gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    return {name: field.contents() for name, field in GGUFReader(str(path)).fields.items()}


@pytest.mark.parametrize("model, arch, fmt, quant, rule", EXPORTS)
def test_every_architecture_to_every_format(model, arch, fmt, quant, rule, project, tmp_path, llama_cpp_converter,
                                           capsys):
    from transformers import AutoTokenizer

    from deploy.models import resolve_model

    if model == "embedded":
        from core.embedded import ensure_embedded_model

        path, argv = ensure_embedded_model(quiet=True), []
    else:
        path = project / "runs" / model
        argv = ["--model_name_or_path", str(path)]
    source = resolve_model(str(path))
    model_dir = Path(source.base if source.is_adapter else source.name)
    before = folder_state(model_dir), folder_state(Path(path))
    out = tmp_path / "export"
    export_mod.export(export_mod.parse([*argv, "--format", fmt, *(["--quant", quant] if quant else []),
                                        "--output_dir", str(out)]))
    record = json.loads((out / "export.json").read_text())
    steps = {"adapter": ["copy"], "merged": ["merge"]}.get(fmt, ["merge", "convert"] if source.is_adapter else ["convert"])
    assert [c["step"] for c in record["checks"]] == steps
    assert all(c["passed"] and c["prompts"] == 4 for c in record["checks"]), record["checks"]
    assert record["checks"][-1]["expected"] == rule
    if rule == "exact":
        assert record["checks"][-1]["identical"] == 4
    # The user's folders are as they were: the converter got GPT-2's n_ctx, the model folder did not.
    assert (folder_state(model_dir), folder_state(Path(path))) == before
    tokenizer = AutoTokenizer.from_pretrained(path)
    if fmt == "merged":
        assert json.loads((out / "config.json").read_text())["model_type"] == arch
        assert any(out.glob("*.safetensors")) and not list(out.glob(".*"))
    elif fmt == "adapter":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    else:
        gguf_file = out / record["gguf_file"]
        fields = gguf_fields(gguf_file)
        assert (fields["general.architecture"], fields["tokenizer.ggml.pre"]) == ARCH[arch]
        assert fields["general.file_type"] == FILE_TYPES[quant]
        # Token ids: the GGUF's vocabulary is the tokenizer's, id for id, and its eos is the tokenizer's.
        assert fields["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
        gguf_tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=gguf_file.name)
        for text in CHECK_QUESTIONS:
            assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == \
                tokenizer(text, add_special_tokens=False)["input_ids"], text
        if arch == "gpt2":
            assert fields["gpt2.context_length"] == 256  # the tiny GPT-2's n_positions
        modelfile_text = (out / "Modelfile").read_text()
        if tokenizer.chat_template is None:
            assert "tokenizer.chat_template" not in fields
            assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile_text and "SYSTEM" not in modelfile_text
        else:
            assert fields["tokenizer.chat_template"] == tokenizer.chat_template
            assert "<|im_start|>assistant" in modelfile_text
    assert "[check]" in capsys.readouterr().out


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
QWEN2_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


@pytest.mark.parametrize("pre, normalizer, model, rule", [
    (BYTE_LEVEL, None, "BPE", "gpt-2"),
    (QWEN2_PRE, {"type": "NFC"}, "BPE", "qwen2"),
    (QWEN2_PRE, None, "BPE", "qwen2"),
    ({**BYTE_LEVEL, "add_prefix_space": True}, None, "BPE", None),   # splits " a" differently
    (BYTE_LEVEL, {"type": "Lowercase"}, "BPE", None),                # llama.cpp would not lowercase
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
     None, "BPE", None),                                              # SmolLM's: in llama.cpp's list by hash
    (BYTE_LEVEL, None, "Unigram", None),
])
def test_pre_tokenizer_rule_only_when_the_split_is_the_same(pre, normalizer, model, rule):
    assert llama_cpp_rule({"pre_tokenizer": pre, "normalizer": normalizer, "model": {"type": model}}) == rule


@pytest.mark.parametrize("config, filled", [
    # transformers 5's GPT2Config: n_positions only; the converter reads n_ctx.
    ({"model_type": "gpt2", "n_positions": 256}, {"n_ctx": 256}),
    # A config saved by older transformers keeps its own n_ctx, even a different one.
    ({"model_type": "gpt2", "n_positions": 1024, "n_ctx": 512}, {}),
    # Neither key: left to the converter's own error rather than guessed.
    ({"model_type": "gpt2"}, {}),
    ({"model_type": "qwen2", "n_positions": 256}, {}),
    ({"model_type": "llama", "max_position_embeddings": 8192}, {}),
])
def test_converter_config_gets_the_keys_it_reads(config, filled):
    assert with_legacy_keys(dict(config)) == {**config, **filled}


def test_modelfile_contents(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "qwen2")
    assert is_chatml(tokenizer)
    text = modelfile("m-q8_0.gguf", tokenizer, "Giải toán. Dòng cuối: #### <đáp số>")
    lines = text.splitlines()
    assert "FROM ./m-q8_0.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    assert 'SYSTEM """Giải toán. Dòng cuối: #### <đáp số>"""' in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<|im_start|>system\n{{ .System }}<|im_end|>" in template
    assert '{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n' in template
    # No system prompt: no SYSTEM line. A template that is not ChatML: Ollama's own from the GGUF.
    assert "SYSTEM" not in modelfile("m.gguf", tokenizer, "")
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert not is_chatml(tokenizer)
    other = modelfile("m.gguf", tokenizer, "")
    assert "TEMPLATE" not in other and "PARAMETER stop" not in other and "not ChatML" in other
    # Decoding: greedy unless the model was scored sampling (generation_settings), the other choice in a comment.
    assert "PARAMETER temperature 0" in lines and not any(line.startswith("PARAMETER top_p") for line in lines)
    assert any(line.startswith("# For sampled replies instead: PARAMETER temperature 0.7") for line in lines)
    sampled = modelfile("m.gguf", tokenizer, "", generation_settings(
        [{"decoding": "sampled T=0.7 top_p=0.95 k=4", "temperature": 0.7, "top_p": 0.95}])).splitlines()
    assert "PARAMETER temperature 0.7" in sampled and "PARAMETER top_p 0.95" in sampled


@pytest.mark.parametrize("config, rows", [
    # max_steps ended the run: the epoch budget (TrainingArguments' default 3.0) is not shown
    ({"max_steps": 60, "num_train_epochs": 3.0}, [("steps trained", 4), ("max_steps (the budget)", 60)]),
    # an epoch budget: the epochs asked for and the epochs trained
    ({"max_steps": -1, "num_train_epochs": 2.0}, [("steps trained", 4), ("num_train_epochs (the budget)", 2.0),
                                                  ("epochs trained", 0.13)]),
    # PPO's length is its episodes
    ({"max_steps": -1, "num_train_epochs": 3.0, "total_episodes": 16},
     [("steps trained", 4), ("total_episodes (the budget)", 16)]),
])
def test_the_card_describes_how_long_the_run_trained(tmp_path, config, rows):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1\n")
    (run / "run_info.json").write_text("{}")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "epoch": s / 30}) + "\n" for s in range(1, 5))
                                       + '{"step": 4, "train_runtime": 1.0}\n{"step": 5, "lo')  # a line being written
    assert training_length(str(run / "adapter"), config) == rows
    # A checkpoint folder: its own trainer_state.json
    ckpt = run / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 2, "epoch": 0.07}))
    assert training_length(str(ckpt), config)[0] == ("steps trained", 2)


def test_push_to_hub_uploads_the_folder_with_a_real_card(project, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))
            return f"https://huggingface.co/{kwargs['repo_id']}"

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs, sorted(os.listdir(kwargs["folder_path"]))))

    monkeypatch.setattr(export_mod, "HfApi", FakeApi)
    monkeypatch.chdir(project)
    # A finished run around the adapter, and a `make eval` of it, as the recipes write them.
    run = project / "runs/grpo-tiny"
    (run / "config.yaml").write_text("model_name_or_path: runs/tiny/qwen2\ndataset_name: hllj/vi_gsm8k\n"
                                     "learning_rate: 5.0e-06\nlora_r: 4\nreward_funcs: [correctness, format]\n"
                                     "system_prompt: ''\nmax_steps: 4\nnum_train_epochs: 3.0\ntemperature: 1.0\n")
    # The run stopped by max_steps after 4 of its 3 epochs' steps (TrainingArguments' default epochs).
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "epoch": s / 30, "loss": 0.1}) + "\n"
                                               for s in range(1, 5)))
    (run / "run_info.json").write_text(json.dumps({"command": [str(ROOT / "recipes/grpo.py"), "--config", "x"]}))
    eval_dir = project / "runs/eval/grpo"
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text(json.dumps({
        "run_name": "grpo", "n": 100, "accuracy": 0.67, "accuracy_strict": 0.6, "format_rate": 0.99,
        "settings": {"model": "runs/grpo-tiny/adapter", "dataset": "hllj/vi_gsm8k", "decoding": "greedy"}}))
    out = project / "runs/export/pushed"
    run_cli(export_mod.main, ["--model", "runs/grpo-tiny/adapter", "--format", "adapter", "--output_dir", str(out),
                              "--push_to_hub", "someone/vi-math-lora"])
    assert calls[0] == ("create_repo", {"repo_id": "someone/vi-math-lora", "repo_type": "model", "private": False,
                                        "exist_ok": True})
    name, kwargs, files = calls[1]
    assert name == "upload_folder" and kwargs["folder_path"] == str(out) and kwargs["repo_id"] == "someone/vi-math-lora"
    assert "adapter_model.safetensors" in files and "README.md" in files and "vi_rl_base.json" not in files
    card = (out / "README.md").read_text()
    assert "None" not in card.split("## Use it")[0]  # TRL's "fine-tuned version of [None]" is gone
    assert "datasets:\n- hllj/vi_gsm8k" in card and "- grpo" in card
    assert "| learning_rate | 5e-06 |" in card and "| grpo | hllj/vi_gsm8k | 100 | greedy | 0.670 | 0.600 | 0.990 |" in card
    # The run as trained: its steps and the budget that ended it; the epoch budget never applied.
    assert "| steps trained | 4 |" in card and "| max_steps (the budget) | 4 |" in card
    assert "num_train_epochs" not in card and "| temperature (sampling while training) | 1.0 |" in card
    # Decoding: the one the scores were measured with, and the other choice named.
    assert "Use greedy decoding (temperature 0): `make eval` scored this model with greedy decoding." in card
    assert "temperature 0.7, top_p 0.95" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("someone/vi-math-lora")' in card
    record = json.loads((out / "export.json").read_text())
    assert record["checks"][0]["expected"] == "exact" and record["checks"][0]["passed"]


# Bad input: one `error:` line, exit 2, nothing written.
@pytest.mark.parametrize("args, message", [
    (["--model", "runs/does/not/exist"], "model path not found: runs/does/not/exist"),
    (["--format", "onnx"], "unknown FORMAT 'onnx': choose one of merged, gguf, adapter"),
    (["--format", "gguf", "--quant", "q9_9"], "unknown GGUF type 'q9_9'"),
    (["--format", "merged", "--quant", "q8_0"], "QUANT applies to FORMAT=gguf only"),
    (["--format", "merged", "--model", "TINY"], "FORMAT=merged needs a LoRA adapter directory"),
    (["--format", "gguf", "--quant", "q4_k_m", "--model", "TINY", "--output_dir", "NEW"], "q4_k_m needs llama.cpp's quantizer"),
    (["--format", "gguf", "--model", "TINY", "--output_dir", "EXISTING"], "already exists; nothing is overwritten"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(llamacpp, "find_quantizer", lambda cache_dir=None: None)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    subs = {"TINY": str(tiny_models / "qwen2"), "EXISTING": str(existing), "NEW": str(tmp_path / "new")}
    argv = [subs.get(a, a) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(tiny_models / "qwen2")]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(export_mod.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert (existing / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_system_prompt_for_a_model_without_chat_template_is_one_line(project, tmp_path, llama_cpp_converter, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(export_mod.main, ["--model", str(project / "runs/tiny/gpt2-plain"), "--format", "gguf",
                                  "--system_prompt", "Bạn là trợ lý.", "--output_dir", str(tmp_path / "new")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "has no chat template" in err[0], err
    assert not (tmp_path / "new").exists()


def test_make_export_reports_a_missing_model_in_one_line():
    proc = run_entry(["make", "--no-print-directory", "export", "MODEL=runs/nowhere/adapter", "FORMAT=merged"],
                     check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and errors == ["error: model path not found: runs/nowhere/adapter "
                                               "(check the path; `make tiny-models` builds runs/tiny)"]
    assert "Traceback" not in proc.stderr


def test_converter_download_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp, "_run_pip", lambda args: subprocess.CompletedProcess(
        args, 1, "", "ERROR: Could not find a version that satisfies the requirement"))
    with pytest.raises(UserError, match=r"could not download llama-cpp-python==0.3.36 .*needs PyPI once"):
        llamacpp.ensure_converter(tmp_path)
    assert not (tmp_path / "tools" / f"llama.cpp-{llamacpp.LLAMA_CPP_PYTHON_VERSION}").exists()


def fake_sdist(folder: Path) -> Path:
    """A stand-in for the llama-cpp-python sdist with the converter's files (and nothing real)."""
    import io
    import tarfile

    path = folder / llamacpp.SDIST_NAME
    with tarfile.open(path, "w:gz") as archive:
        for name in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py", "LICENSE"):
            data = f"# {name}\n".encode()
            info = tarfile.TarInfo(llamacpp.VENDOR + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_fetch_command_downloads_once_then_uses_the_cache(tmp_path, monkeypatch, capsys):
    # `python -m deploy.llamacpp --fetch`, the install step: fetches once, then only reports the cache.
    sdist, calls = fake_sdist(tmp_path), []

    def pip(args):
        calls.append(args)
        shutil.copy(sdist, args[args.index("-d") + 1])
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(llamacpp, "_run_pip", pip)
    cache = tmp_path / "cache"
    expected = cache / "tools" / f"llama.cpp-{llamacpp.LLAMA_CPP_PYTHON_VERSION}"
    assert llamacpp.main(["--fetch", "--cache_dir", str(cache)]) == 0
    first = capsys.readouterr()
    assert first.out.splitlines() == [str(expected)] and len(calls) == 1 and calls[0][0] == "download"
    assert first.err.splitlines()[0].startswith(f"[llama.cpp] fetching {llamacpp.SDIST_REQUIREMENT} from PyPI once")
    assert (expected / "convert_hf_to_gguf.py").is_file() and (expected / llamacpp.COMPLETE_MARKER).is_file()
    assert llamacpp.main(["--fetch", "--cache_dir", str(cache)]) == 0
    second = capsys.readouterr()
    assert second.out.splitlines() == [str(expected)] and second.err == "" and len(calls) == 1


def test_fetch_command_without_pypi_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(llamacpp, "_run_pip", lambda args: subprocess.CompletedProcess(
        args, 1, "", "ERROR: No matching distribution found for llama-cpp-python==0.3.36"))
    assert llamacpp.main(["--fetch", "--cache_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: could not download llama-cpp-python==0.3.36") and len(err) == 2  # notice + error
