"""deploy/serve.py: the engine commands it builds, what it refuses, and (slow, needs the `serve`
extra) a real llama.cpp server answering an OpenAI-style request on the tiny model's GGUF."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.cli import UserError
from deploy import serve
from tests.conftest import NO_DOWNLOAD_ENV, ROOT, child_env, run_entry
from tests.test_chat import free_port


def args(**kw):
    base = dict(model=None, engine="auto", host="127.0.0.1", port=8000, name=None, n_ctx=2048, threads=None,
                print_command=False)
    base.update(kw)
    return serve.parse([]).__class__(**base)


@pytest.fixture
def gguf_export(tmp_path) -> Path:
    folder = tmp_path / "m-gguf-q8_0"
    folder.mkdir()
    (folder / "m-q8_0.gguf").write_bytes(b"GGUF")
    (folder / "export.json").write_text(json.dumps({"gguf_file": "m-q8_0.gguf"}))
    return folder


def test_llama_cpp_for_a_gguf_export(gguf_export):
    engine, cmd, name = serve.plan(args(model=str(gguf_export), port=8123, threads=2))
    assert engine == "llama-cpp" and name == "m-q8_0"
    assert cmd[:3] == [sys.executable, "-m", "llama_cpp.server"]
    opts = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert opts == {"--model": str(gguf_export / "m-q8_0.gguf"), "--model_alias": "m-q8_0", "--host": "127.0.0.1",
                    "--port": "8123", "--n_ctx": "2048", "--n_threads": "2"}
    # the file itself works too
    assert serve.plan(args(model=str(gguf_export / "m-q8_0.gguf")))[0] == "llama-cpp"


def test_vllm_command_for_an_adapter(tmp_path, tiny_models):
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_models / "qwen2"), "r": 16}))
    engine, cmd, name = serve.plan(args(model=str(adapter), print_command=True, name="vi-math"))
    assert engine == "vllm"
    assert cmd == ["vllm", "serve", str(tiny_models / "qwen2"), "--host", "127.0.0.1", "--port", "8000",
                   "--enable-lora", "--lora-modules", f"vi-math={adapter}", "--max-lora-rank", "16"]
    assert serve.vllm_command("/m", None, "m", "0.0.0.0", 9, None) == [
        "vllm", "serve", "/m", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "9"]


@pytest.mark.parametrize("model, engine, message", [
    (None, "auto", "MODEL is required"),
    ("TINY", "auto", "needs vLLM on a CUDA GPU; on this machine export it to GGUF"),
    ("TINY", "llama-cpp", "is not a GGUF file or a GGUF export folder; on a CPU first run `make export MODEL="),
    ("runs/no/such/model", "auto", "model path not found"),
])
def test_refusals(model, engine, message, tiny_models, monkeypatch):
    monkeypatch.setattr(serve, "has_cuda", lambda: False)
    model = str(tiny_models / "qwen2") if model == "TINY" else model
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        serve.plan(args(model=model, engine=engine))


def test_missing_engine_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp.server", None)
    with pytest.raises(UserError, match=r"run `make serve-install` once \(it compiles llama.cpp, 20 to 41 min"):
        serve.check_engine("llama-cpp")


def test_the_serve_build_says_how_long_first_and_shows_its_progress():
    """`make serve-install`: a note with the time before the long compile, and pip's -v output (the
    compiler's progress) instead of a silent spinner. The README gives the time once."""
    dry = run_entry(["make", "-n", "serve-install"])
    lines = [line for line in dry.stdout.splitlines() if "serve" in line]
    assert lines[0].startswith("echo \"[serve-install] compiling llama.cpp") and "20 to 41 min" in lines[0]
    assert lines[1].endswith("pip install -v -e '.[serve]'"), dry.stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("20 to 41 min") == 1 and "41 min on the shared" not in readme and "about 20 min" not in readme


@pytest.mark.slow
@pytest.mark.serve
def test_llama_cpp_server_answers_and_stops(tiny_models, tmp_path, llama_cpp_converter):
    """`make serve` on a GGUF export of the tiny model answers /v1/chat/completions, then stops on
    Ctrl-C. `make test-serve` installs the serve extra first (llama.cpp compiled once, 20-40 min on
    2 cores), so this test is not part of CI's run; without the extra it fails, it is never skipped."""
    assert importlib.util.find_spec("llama_cpp") is not None, \
        "the serve extra is not installed: run `make test-serve` (it installs it)"
    out = tmp_path / "export"
    env = child_env(NO_DOWNLOAD_ENV)  # llama.cpp on the CPU; the converter from `make install`'s cache
    subprocess.run([sys.executable, "-m", "deploy.export", "--model", str(tiny_models / "qwen2"), "--format", "gguf",
                    "--quant", "q8_0", "--output_dir", str(out)], cwd=ROOT, env=env, check=True, capture_output=True)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(["make", "--no-print-directory", "serve", f"MODEL={out}", f"ARGS=--port {port} --name tiny"],
                            cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = json.dumps({"model": "tiny", "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": "Xin chào"}]}).encode()
        deadline, answer = time.time() + 120, None
        while answer is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, log.read_text()[-3000:]
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(1)
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    # The server itself stopped cleanly; make reports the Ctrl-C it also received.
    assert "[serve] server stopped (exit 0)" in log.read_text(), log.read_text()[-2000:]
    assert code in (0, 2, 130, -signal.SIGINT), log.read_text()[-2000:]
