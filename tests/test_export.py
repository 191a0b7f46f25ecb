"""deploy/export.py: GGUF / merged / adapter exports with their reload check, the Ollama Modelfile,
the model card and hub push, and one-line errors for bad input.

The GGUF tests run llama.cpp's real converter, fetched from PyPI once into the cache
($VIRL_CACHE or ~/.cache/vi-rl, about 10 s) like the embedded model.
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
from deploy.card import is_chatml, modelfile
from deploy.gguf_convert import QWEN2_SPLIT, llama_cpp_rule
from tests.conftest import ROOT, run_entry


@pytest.fixture(scope="module")
def project(tiny_models, tmp_path_factory) -> Path:
    """A project folder with runs/tiny/qwen2 and a LoRA adapter trained 'from the root' on it:
    adapter_config.json names the base by the relative path `runs/tiny/qwen2`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("project")
    base = root / "runs" / "tiny" / "qwen2"
    shutil.copytree(tiny_models / "qwen2", base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    # Random A and B (not PEFT's zero B): merging must change the weights for the check to mean anything.
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter = root / "runs" / "grpo-tiny" / "adapter"
    lora.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "runs/tiny/qwen2"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return root


def run_export(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m deploy.export` from any folder, as a user who has the package installed."""
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return run_entry(["python", "-m", "deploy.export", *args], cwd=cwd, env=env, check=check)


def test_gguf_of_an_adapter_from_another_directory(project, tmp_path):
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
    assert "- merge: 4/4" in card or "- merge:" in card
    assert "- convert:" in card and "passed" in card and f"llama-server -m {record['gguf_file']}" in card


def test_merged_export_is_16bit_and_reloads(project, tmp_path):
    out = tmp_path / "merged"
    run_export(["--model", str(project / "runs/grpo-tiny/adapter"), "--format", "merged", "--output_dir", str(out)],
               cwd=project)
    record = json.loads((out / "export.json").read_text())
    assert record["checks"][0]["step"] == "merge" and record["checks"][0]["passed"]
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert not list(out.glob(".*")), "no staging leftovers"


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
                                     "system_prompt: ''\n")
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


@pytest.mark.slow
def test_gguf_of_the_embedded_model(tmp_path):
    """The embedded SmolLM2-135M-Instruct (bf16) to f16 and q8_0: f16 holds its weights exactly."""
    for quant, expected in (("f16", ("exact", "16-bit rounding")), ("q8_0", ("8-bit",))):
        out = tmp_path / quant
        run_export(["--format", "gguf", "--quant", quant, "--output_dir", str(out)], cwd=ROOT)
        check = json.loads((out / "export.json").read_text())["checks"][0]
        assert check["passed"] and check["expected"] in expected, check
        if check["expected"] == "exact":
            assert check["identical"] == check["prompts"]
