"""Tiny random models built offline, for tests and for the `tiny` CPU configs.

Nothing here touches the network: the tokenizer is a byte-level BPE trained on the project's own
Vietnamese fixtures, and the models are random-initialised from small configs of the same
architectures the real recipes use (Qwen2 for GRPO/SFT/DPO, GPT-2 for PPO, RoBERTa for the PhoBERT
reward model). They learn nothing useful; they exercise every code path in seconds.

    python -m recipes.tiny --out runs/tiny      # writes runs/tiny/{tokenizer,qwen2,gpt2,classifier}
"""

from __future__ import annotations

import json
from pathlib import Path

from core.cli import ArgumentParser, run_cli
from core.files import staged_directory

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A few sentences so the tokenizer sees Vietnamese diacritics and digits even without fixtures.
SEED_TEXT = [
    "Lan có 12 quả táo, Lan mua thêm 7 quả. Hỏi Lan có tất cả bao nhiêu quả táo?",
    "Số táo là: 12 + 7 = 19 (quả).\n#### 19",
    "Giá một quyển vở là 15.000 đồng; 3,5 kg gạo; 1.250.000 đồng.",
    "thầy dạy rất nhiệt tình , dễ hiểu . phòng học nóng nực , máy chiếu hay bị hỏng .",
    "Bạn là trợ lý hữu ích. Hãy giải từng bước. Đáp số: 42",
    "0 1 2 3 4 5 6 7 8 9 + - x : = ; ####",
]


def corpus() -> list[str]:
    """Texts the tiny tokenizer is trained on: the fixtures plus a few seed lines."""
    texts = list(SEED_TEXT)
    for path in sorted(FIXTURES.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    texts.extend(str(v) for v in row.values() if isinstance(v, str))
    return texts


def build_tokenizer(out: Path, vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer with a ChatML template; eos <|im_end|>, pad <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_qwen2(out: Path, tokenizer, seed: int = 0) -> None:
    """A 2-layer Qwen2 causal LM (about 0.2M parameters) sharing the tiny tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_gpt2(out: Path, tokenizer, seed: int = 0) -> None:
    """A 2-layer GPT-2 causal LM on the tiny tokenizer (the Vietnamese GPT-2 role in PPO)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_classifier(out: Path, tokenizer, num_labels: int = 3, seed: int = 0) -> None:
    """A 2-layer RoBERTa sequence classifier (the PhoBERT role) with its own copy of the tokenizer."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(tokenizer) + 2,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=260,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "negative", 1: "neutral", 2: "positive"} if num_labels == 3 else None,
        label2id={"negative": 0, "neutral": 1, "positive": 2} if num_labels == 3 else None,
    )
    model = RobertaForSequenceClassification(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_all(out: str | Path, force: bool = False) -> Path:
    """Build every tiny model under `out` (skipped when already complete); returns `out`."""
    out = Path(out)
    marker = out / ".complete"
    if marker.exists() and not force:
        return out
    # Built beside the target and renamed, so concurrent test workers never see half a model.
    with staged_directory(out) as tmp:
        tokenizer = build_tokenizer(tmp / "tokenizer")
        build_qwen2(tmp / "qwen2", tokenizer)
        build_gpt2(tmp / "gpt2", tokenizer)
        build_classifier(tmp / "classifier", tokenizer)
        (tmp / ".complete").write_text("ok\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/tiny", help="directory to write the tiny models into")
    parser.add_argument("--force", action="store_true", help="rebuild even if already complete")
    args = parser.parse_args(argv)
    path = build_all(args.out, force=args.force)
    print(path)


if __name__ == "__main__":
    run_cli(main)  # filters the known-harmless import noise, like every entry point
