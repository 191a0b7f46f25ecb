"""Run llama.cpp's `convert_hf_to_gguf.py` from the cached converter (deploy/llamacpp.py).

    python -m deploy.gguf_convert CONVERTER_DIR MODEL_DIR --outfile F.gguf --outtype q8_0

A separate process on purpose: the converter needs its own vendored `gguf-py`, newer than the
PyPI `gguf` that transformers uses, and both are the module `gguf`.

One addition to the converter: it names the model's BPE pre-tokenizer (the text splitting before
BPE, which llama.cpp reimplements per model family) by hashing how the tokenizer encodes a test
string, and stops on a tokenizer it has not seen - any tokenizer trained here, such as the tiny
test models'. When the tokenizer, as transformers loads it (that is how the model was trained:
transformers 5 gives a Qwen2 tokenizer Qwen2's split whatever tokenizer.json says), splits text
exactly as one of llama.cpp's rules does, this runner names that rule and says so on stderr:
GPT-2's byte-level regex -> `gpt-2`, Qwen2's split regex + byte level -> `qwen2`. Anything else
still stops with the converter's own error.

A second addition: config keys the converter reads that transformers 5 no longer writes. GPT-2's
converter reads `n_ctx` as the context length, which transformers 5 no longer writes for a
GPT2Config (only `n_positions`, the length of the position table: the real context limit, and the
value old configs gave `n_ctx`). The converter process gets the key filled in from its modern
name (`CONFIG_ALIASES`) when the config lacks it; the model directory is never touched.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

# Qwen2's pre-tokenizer split (transformers' Qwen2 tokenizer; llama.cpp's `qwen2` rule).
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


# model_type -> {key the converter reads: key transformers 5 writes}, filled in only when missing.
CONFIG_ALIASES = {"gpt2": {"n_ctx": "n_positions"}}


def with_legacy_keys(config: dict) -> dict:
    """`config` (the converter's hparams) plus the keys in `CONFIG_ALIASES` it lacks."""
    aliases = CONFIG_ALIASES.get(config.get("model_type"), {})
    missing = {old: config[new] for old, new in aliases.items() if old not in config and new in config}
    return {**config, **missing} if missing else config


def llama_cpp_rule(spec: dict) -> str | None:
    """llama.cpp's pre-tokenizer rule that splits text exactly as this tokenizer does, from the
    tokenizer's JSON (`tokenizer.backend_tokenizer.to_str()`); None when there is none."""
    if (spec.get("model") or {}).get("type") != "BPE":
        return None
    pre, normalizer = spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    if (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
            and normalizer is None):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2
            and parts[0].get("type") == "Split" and parts[0].get("pattern") == {"Regex": QWEN2_SPLIT}
            and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert")
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)
            and normalizer in (None, {"type": "NFC"})):
        return "qwen2"
    return None


def main(argv: list[str]) -> None:
    converter, args = Path(argv[0]).resolve(), argv[1:]
    sys.path[:0] = [str(converter), str(converter / "gguf-py")]
    import conversion.base as base  # the converter's own package, from the cache

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            rule = llama_cpp_rule(json.loads(tokenizer.backend_tokenizer.to_str()))
            if rule is None:
                raise
            print(f"[vi-rl] the tokenizer is not in llama.cpp's list, but it splits text exactly as "
                  f"llama.cpp's {rule!r} rule does: writing tokenizer.ggml.pre = {rule}", file=sys.stderr, flush=True)
            return rule

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    load_hparams = base.ModelBase.load_hparams
    base.ModelBase.load_hparams = staticmethod(lambda *a, **kw: with_legacy_keys(load_hparams(*a, **kw)))
    script = converter / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
