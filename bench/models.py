"""Random-weight models with the shapes of Qwen2.5-0.5B/1.5B/3B-Instruct, for benchmarks offline.

Speed and memory depend on the shapes (layers, widths, heads, the 151,936-token vocabulary), not on
the weight values, so a random model built from the published config numbers measures what the real
one would. The tokenizer is the project's tiny offline one (recipes/tiny.py): its ids all fall
inside the vocabulary, and ids it does not know decode to nothing.

    python -m bench.models --shape 0.5b --out /tmp/bench/qwen2.5-0.5b
"""

from __future__ import annotations

import shutil
from pathlib import Path

from core.cli import ArgumentParser
from core.files import staged_directory

# From the Qwen2.5 model cards' config.json. All three tie the input and output embeddings.
QWEN25_SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    # CPU smoke shape: a vocabulary larger than the tokenizer's, like the real shapes.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
    # Learning checks (bench/gpu_check.py): the tokenizer's own vocabulary, and weights initialised
    # at 0.2 instead of 0.02 so the output distribution is not flat - a LoRA on the projections
    # can then move it within 30 steps (measured on the CPU: GRPO digit share 0.04 -> 1.0, 4-bit).
    "toy": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=None, tie_word_embeddings=True, initializer_range=0.2),
}
COMMON = dict(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
              use_sliding_window=False, bos_token_id=None)


def build_model(shape: str, out: str | Path, seed: int = 0) -> Path:
    """Write a random Qwen2.5-shaped model (bf16) and the tiny tokenizer to `out`; reuse a finished one."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from recipes.tiny import build_tokenizer

    out = Path(out)
    if (out / ".complete").exists():
        return out
    if shape not in QWEN25_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {sorted(QWEN25_SHAPES)}")
    with staged_directory(out) as tmp:
        tokenizer = build_tokenizer(tmp / "tokenizer")
        dims = dict(QWEN25_SHAPES[shape], vocab_size=QWEN25_SHAPES[shape]["vocab_size"] or len(tokenizer))
        config = Qwen2Config(**dims, **COMMON, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        # Initialise on the GPU when there is one: a 1.5B model initialises in seconds there.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tmp / "tokenizer")
        (tmp / ".complete").write_text(f"{shape} {sum(p.numel() for p in model.parameters())}\n")
        del model
    return out


def parameter_count(model_dir: str | Path) -> int:
    """Parameters of a model built here (recorded when it was built)."""
    return int((Path(model_dir) / ".complete").read_text().split()[1])


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(QWEN25_SHAPES), required=True)
    parser.add_argument("--out", required=True, help="model directory to write")
    args = parser.parse_args(argv)
    print(build_model(args.shape, args.out))


if __name__ == "__main__":
    main()
