"""A completion stopped by the token budget is cut at a character, never inside one: a byte-level
tokenizer spreads a Vietnamese letter over several tokens, and decoding half of it shows U+FFFD
("Nh\ufffd" in the DPO report's side-by-side answers)."""

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)

# isort: split
import torch
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, GenerationConfig

from evaluate import preference as pe
from evaluate.generation import DecodingSettings, drop_cut_character, generate


def byte_ids(tokenizer, text):
    """One token per UTF-8 byte ("à" is two), as a model may emit them."""
    chars = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)[0][0]
    return tokenizer.convert_tokens_to_ids(list(chars))


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM whose generate() appends fixed tokens to every prompt."""

    def __init__(self, new_ids, eos_id):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = new_ids
        self.generation_config = GenerationConfig(eos_token_id=eos_id)

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask=None, generation_config=None, **kwargs):
        budget = (generation_config.max_new_tokens if generation_config is not None else kwargs["max_new_tokens"])
        new = torch.tensor([self.new_ids[:budget]] * input_ids.shape[0])
        return torch.cat([input_ids, new], dim=1)


def test_a_cut_letter_is_dropped_but_a_finished_answer_is_untouched(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "qwen2")
    ids = byte_ids(tokenizer, "Nhà")  # N h + the two bytes of "à"
    assert tokenizer.decode(ids[:-1]) == "Nh\ufffd"  # what the report showed
    assert drop_cut_character("Nh\ufffd") == "Nh" and drop_cut_character("Nhà") == "Nhà"
    prompts = [[{"role": "user", "content": "Chào"}]]

    cut = generate(ScriptedModel(ids, tokenizer.eos_token_id), tokenizer, prompts,
                   DecodingSettings(max_new_tokens=3), progress=False, backend="hf")
    assert cut.texts == [["Nh"]] and cut.tokens == [[3]]
    whole = generate(ScriptedModel(ids + [tokenizer.eos_token_id], tokenizer.eos_token_id), tokenizer, prompts,
                     DecodingSettings(max_new_tokens=8), progress=False, backend="hf")
    assert whole.texts == [["Nhà"]]
    # The DPO report's side-by-side answers (evaluate.preference.generate).
    answers = pe.generate(ScriptedModel(ids, tokenizer.eos_token_id), tokenizer, ["Chào"], None, max_new_tokens=3)
    assert answers == ["Nh"]
