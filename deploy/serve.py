"""Serve a trained model on an OpenAI-compatible endpoint through an existing engine.

    make serve MODEL=runs/export/demo-grpo-adapter-gguf-q8_0        # CPU: llama.cpp on the GGUF export
    make serve MODEL=runs/demo/grpo/adapter                         # GPU: vLLM, base + LoRA module
    make serve MODEL=... ARGS="--port 8001 --print_command"         # show the engine's command only

Engines (this module only builds their command line and runs it):
- **llama.cpp** (CPU): `python -m llama_cpp.server` from the `serve` extra
  (`make serve-install`, which compiles llama.cpp once and shows its progress). MODEL is a
  `.gguf` file or a `make export FORMAT=gguf` folder; the chat template is the one stored in the
  GGUF. A Hugging Face model or adapter on a machine without a GPU is refused with the export
  command to run first.
- **vLLM** (GPU, `vllm` extra): `vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER` for an
  adapter (requests then ask for model NAME), `vllm serve DIR` for a full model. UNVERIFIED: no
  GPU was available when this was written; the command follows vLLM's documented options.

The server listens on 127.0.0.1 unless `--host` says otherwise. Ctrl-C (or SIGTERM) stops it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from core.adapters import read_adapter_config
from core.cli import ArgumentParser, UserError
from core.precision import has_cuda
from deploy.models import resolve_model, slug

DEFAULT_PORT = 8000


def find_gguf(path: Path) -> Path | None:
    """The GGUF file a MODEL argument names: the file itself, or the one an export folder holds."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        record = path / "export.json"
        if record.is_file():
            name = json.loads(record.read_text(encoding="utf-8")).get("gguf_file")
            if name and (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
    return None


def llama_cpp_command(gguf: Path, name: str, host: str, port: int, n_ctx: int, threads: int | None) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on one GGUF file."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", name,
           "--host", host, "--port", str(port), "--n_ctx", str(n_ctx)]
    if threads:
        cmd += ["--n_threads", str(threads)]
    return cmd


def vllm_command(model: str, base: str | None, name: str, host: str, port: int, max_lora_rank: int | None) -> list[str]:
    """`vllm serve` for a full model, or for a base with the adapter as a LoRA module (UNVERIFIED)."""
    if base is None:
        return ["vllm", "serve", model, "--served-model-name", name, "--host", host, "--port", str(port)]
    cmd = ["vllm", "serve", base, "--host", host, "--port", str(port), "--enable-lora",
           "--lora-modules", f"{name}={model}"]
    if max_lora_rank:
        cmd += ["--max-lora-rank", str(max_lora_rank)]
    return cmd


def plan(args: argparse.Namespace) -> tuple[str, list[str], str]:
    """(engine, command, served model name) for the arguments; UserError for what cannot be served."""
    if not args.model:
        raise UserError("MODEL is required: a GGUF export (CPU) or a model / LoRA adapter directory (GPU with vLLM)")
    path = Path(args.model).expanduser()
    gguf = find_gguf(path)
    engine = args.engine
    if engine == "auto":
        engine = "llama-cpp" if gguf is not None else "vllm"
    if engine == "llama-cpp":
        if gguf is None:
            raise UserError(
                f"{args.model} is not a GGUF file or a GGUF export folder; on a CPU first run "
                f"`make export MODEL={args.model} FORMAT=gguf` and serve the folder it prints"
            )
        name = args.name or gguf.stem
        return engine, llama_cpp_command(gguf, name, args.host, args.port, args.n_ctx, args.threads), name
    source = resolve_model(args.model)
    if not args.print_command and not has_cuda():
        raise UserError(
            f"serving {args.model} directly needs vLLM on a CUDA GPU; on this machine export it to GGUF "
            f"(`make export MODEL={args.model} FORMAT=gguf`) and `make serve` the export folder"
        )
    name = args.name or slug(source)
    rank = read_adapter_config(source.name).get("r") if source.is_adapter else None
    return "vllm", vllm_command(source.name, source.base, name, args.host, args.port, rank), name


def check_engine(engine: str) -> None:
    """Fail early, with the install command, when the engine is missing."""
    try:
        if engine == "llama-cpp":
            import llama_cpp.server  # noqa: F401
        else:
            import vllm  # noqa: F401
    except ImportError:
        if engine == "llama-cpp":
            raise UserError("the llama-cpp engine is not installed: run `make serve-install` once (it compiles "
                            "llama.cpp, 20 to 41 min on 2 cores, and shows the compiler's progress)") from None
        raise UserError(f"the {engine} engine is not installed: pip install -e '.[vllm]'") from None


def run(cmd: list[str]) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM, which it passes on once."""
    # Its own session: a terminal's Ctrl-C reaches this process only, which forwards it once (a
    # second SIGINT would make uvicorn quit without finishing its shutdown).
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum, frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"[serve] server stopped (exit {code})", flush=True)
    return code


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", dest="model", default=None, help="GGUF file / export folder (CPU) or model / adapter dir (GPU)")
    parser.add_argument("--engine", choices=("auto", "llama-cpp", "vllm"), default="auto",
                        help="auto: llama.cpp for a GGUF, vLLM otherwise")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--name", default=None, help="model name clients ask for (default: from the file or folder)")
    parser.add_argument("--n_ctx", type=int, default=2048, help="llama.cpp context length (default 2048)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: its own choice)")
    parser.add_argument("--print_command", action="store_true", help="print the engine's command and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    engine, cmd, name = plan(args)
    if args.print_command:
        print(shlex.join(cmd))
        return
    check_engine(engine)
    url = f"http://{args.host}:{args.port}/v1"
    print(f"[serve] {engine}: {shlex.join(cmd)}", flush=True)
    print(f"[serve] OpenAI-compatible API at {url} (model {name!r}); try:\n"
          f"  curl {url}/chat/completions -H 'Content-Type: application/json' -d "
          f"'{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Xin chào\"}}]}}'", flush=True)
    code = run(cmd)
    if code not in (0, -signal.SIGINT, -signal.SIGTERM, 130, 143):
        raise UserError(f"the {engine} server exited with status {code} (its messages are above)")


if __name__ == "__main__":
    from core.cli import run_cli

    run_cli(main, sys.argv[1:])
