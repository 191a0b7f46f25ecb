"""Rewards from a sentiment classifier (PhoBERT or any `AutoModelForSequenceClassification`).

Three ways to use one trained classifier (`make reward-model` writes it):

- `SentimentScorer(model_dir, label="negative")(texts) -> list[float]`: batched, no grad, on the
  classifier's device; the text preprocessing (pyvi word segmentation for PhoBERT) is read from
  the `text_preprocessing.json` the reward-model recipe saved next to the model;
- `make_sentiment_reward(model_dir, ...)`: a TRL reward function `(completions, **kwargs)` for
  GRPO/RLOO, registered in `rewards.FACTORIES` as `"sentiment:<model_dir>,label=negative"`;
- `TextRewardAdapter(scorer, policy_tokenizer)`: a module TRL's `PPOTrainer` accepts as
  `reward_model` although the classifier has another tokenizer than the policy.

Why the adapter: PPO never hands the reward model text. `trl.experimental.utils.get_reward` calls
`getattr(rm, rm.base_model_prefix)(input_ids=..., attention_mask=..., position_ids=...,
output_hidden_states=True)` on the *policy's* token ids (pads replaced by id 0), passes
`hidden_states[-1]` through `rm.score`, and reads position `[b, last non-pad index]`. So the
adapter's backbone decodes each row's ids where the attention mask is 1 with the policy
tokenizer, scores the text with the classifier, and returns the score broadcast to `[B, T, 1]`
(any position read is the score); `score` is the identity. TRL declined to support mismatched
tokenizers itself (huggingface/trl#3595).

What is scored: `text="full"` (default, as the published work did) scores prompt + response as
one sentence: the prompts are the first words of a feedback sentence, and the sentiment belongs
to the whole sentence a reader sees; the prompt's own contribution is the same for every sample
of that prompt, so it cancels in PPO's whitened advantages. `text="response"` scores only the
generated part; the adapter must then know where the prompt ends, which PPO does not pass: the
PPO recipe pads every prompt to one fixed width and gives that width as `context_length`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.students_feedback import HUB_ID, clean_sentence

PREPROCESSING_FILE = "text_preprocessing.json"
SCORES = ("logit", "prob", "logit_if_predicted", "margin")
_SEGMENTER = None


def segment(text: str) -> str:
    """Vietnamese word segmentation as PhoBERT expects: syllables of one word joined by "_" (pyvi)."""
    global _SEGMENTER
    if _SEGMENTER is None:
        from pyvi import ViTokenizer  # loads a CRF model (about 3 s): only when segmentation is on

        _SEGMENTER = ViTokenizer
    return _SEGMENTER.tokenize(text) if text.strip() else text.strip()


def preprocess(text: str, word_segmentation: bool) -> str:
    """The classifier's input text: cleaned as the training data was, then optionally segmented.

    The reward-model recipe trains on exactly this, and the scorer applies it to generated text.
    """
    text = clean_sentence(text)
    return segment(text) if word_segmentation else text


def save_preprocessing(model_dir: str | Path, word_segmentation: bool, max_length: int) -> None:
    """Record how the classifier's training text was prepared, so the reward does the same."""
    info = {"word_segmentation": bool(word_segmentation), "segmenter": "pyvi.ViTokenizer" if word_segmentation
            else None, "cleaning": "data.students_feedback.clean_sentence", "max_length": int(max_length)}
    Path(model_dir, PREPROCESSING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load_preprocessing(model_dir: str | Path) -> dict[str, Any] | None:
    """The saved preprocessing of a classifier directory, or None for a classifier trained elsewhere."""
    path = Path(model_dir, PREPROCESSING_FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def label_scores(logits: torch.Tensor, label_id: int, kind: str) -> torch.Tensor:
    """Reward per row of classifier logits `[N, C]` for one label (see `SentimentScorer`'s `score`)."""
    own = logits[:, label_id]
    if kind == "logit":
        return own
    if kind == "prob":
        return logits.softmax(-1)[:, label_id]
    others = torch.cat([logits[:, :label_id], logits[:, label_id + 1:]], dim=1)
    if kind == "margin":
        return own - others.max(dim=1).values
    if kind == "logit_if_predicted":
        return torch.where(logits.argmax(dim=1) == label_id, own, torch.zeros_like(own))
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {kind!r}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SentimentScorer:
    """Score texts with a sequence classifier: one float per text for one label.

    Args:
        model_dir: directory (or hub id) of an `AutoModelForSequenceClassification` checkpoint.
        label: label name from the model's `id2label` (e.g. "negative") or its index.
        score: `logit` (the label's raw logit, the published reward), `prob` (its softmax
            probability), `logit_if_predicted` (the logit when the label is the argmax, else 0:
            only texts that flip the classifier's decision earn anything) or `margin` (the label's
            logit minus the largest other logit: positive exactly when the label is predicted).
        batch_size: texts per forward pass.
        device: `auto` (CUDA when visible), `cpu` or `cuda[:n]`.
        word_segmentation: segment with pyvi before tokenizing; None reads the choice saved
            with the model (`text_preprocessing.json`), and means False when nothing was saved.
        max_length: classifier tokens per text; None reads the saved value (else 256, PhoBERT's).
    """

    def __init__(
        self,
        model_dir: str,
        label: str | int = "negative",
        score: str = "logit",
        batch_size: int = 32,
        device: str = "auto",
        word_segmentation: bool | None = None,
        max_length: int | None = None,
    ):
        # A classifier is not a causal LM: it is loaded with plain transformers, not the Unsloth loader.
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        saved = load_preprocessing(model_dir) or {}
        if word_segmentation is None:
            word_segmentation = bool(saved.get("word_segmentation", False))
            if not saved:
                print(f"[reward] {model_dir} has no {PREPROCESSING_FILE}: scoring without word segmentation")
        self.word_segmentation = word_segmentation
        self.max_length = int(max_length or saved.get("max_length") or 256)
        self.score_kind = score
        self.batch_size = batch_size
        self.device = _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "right"  # BERT-style heads read position 0: it must be real text
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
        self.model.to(self.device).eval()
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.labels = [id2label[i] for i in range(len(id2label))]
        if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            self.label_id = int(label)
            if not 0 <= self.label_id < len(self.labels):
                raise ValueError(f"label index {label} out of range for {len(self.labels)} labels")
        elif label in self.labels:
            self.label_id = self.labels.index(label)
        else:
            raise ValueError(f"label {label!r} is not one of the classifier's labels {self.labels}")
        self.label = self.labels[self.label_id]

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The exact strings the classifier tokenizes (cleaned, segmented when configured)."""
        return [preprocess(t, self.word_segmentation) for t in texts]

    @torch.no_grad()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Classifier logits `[len(texts), num_labels]` (float32, on the CPU)."""
        prepared = self.prepare(texts)
        out = []
        for start in range(0, len(prepared), self.batch_size):
            batch = self.tokenizer(prepared[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            out.append(self.model(**batch).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def scores_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """This scorer's reward from classifier logits `[N, C]` -> `[N]`."""
        return label_scores(logits, self.label_id, self.score_kind)

    def __call__(self, texts: Sequence[str]) -> list[float]:
        """One reward per text (see `score`)."""
        return self.scores_from_logits(self.logits(texts)).tolist()


def _completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the content of the last chat message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def make_sentiment_reward(
    model_dir: str,
    label: str | int = "negative",
    score: str = "logit",
    include_prompt: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    word_segmentation: bool | None = None,
) -> Callable[..., list[float]]:
    """A TRL reward function `(completions, **kwargs) -> list[float]` from a classifier.

    Named `sentiment_<label>` (for TRL's per-reward logs). `include_prompt` scores prompt +
    completion as one text, for plain-text prompts that the completion continues (the PPO
    setting); with chat prompts only the completion is scored.
    """
    scorer = SentimentScorer(model_dir, label=label, score=score, batch_size=batch_size, device=device,
                             word_segmentation=word_segmentation)

    def reward(completions: list[Any], prompts: list[Any] | None = None, **kwargs: Any) -> list[float]:
        texts = [_completion_text(c) for c in completions]
        if include_prompt:
            if prompts is None:
                raise ValueError("include_prompt=True needs the `prompts` TRL passes to reward functions")
            texts = [(p if isinstance(p, str) else "") + t for p, t in zip(prompts, texts, strict=True)]
        return scorer(texts)

    reward.__name__ = reward.__qualname__ = f"sentiment_{scorer.label}"
    reward.scorer = scorer
    return reward


class _DecodeAndScore(nn.Module):
    """The adapter's "backbone": policy ids -> text -> scores, returned as hidden states."""

    def __init__(self, scorer: Callable[[list[str]], list[float]], tokenizer, text: str,
                 context_length: int | None):
        super().__init__()
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.text = text
        self.context_length = context_length

    def texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Each row's text: its ids where the mask is 1 (pads are id 0 there), special tokens dropped."""
        mask = attention_mask.bool()
        if self.text == "response":
            if input_ids.shape[1] <= self.context_length:
                raise ValueError(f"rows of {input_ids.shape[1]} tokens hold no response after the "
                                 f"{self.context_length}-token prompt: pad prompts to context_length")
            input_ids = input_ids[:, self.context_length:]
            mask = mask[:, self.context_length:]
        rows = [ids[m].tolist() for ids, m in zip(input_ids, mask, strict=True)]
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        from transformers.modeling_outputs import BaseModelOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        scores = torch.tensor(self.scorer(self.texts(input_ids, attention_mask)), dtype=torch.float32,
                              device=input_ids.device)
        hidden = scores.view(-1, 1, 1).expand(-1, input_ids.shape[1], 1)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=(hidden,))


class TextRewardAdapter(nn.Module):
    """A text reward in the shape TRL's PPOTrainer expects of a reward model.

    Args:
        scorer: `texts -> list[float]`, e.g. a `SentimentScorer` (which keeps its classifier on
            its own device; the adapter has no parameters of its own).
        tokenizer: the POLICY's tokenizer, to decode the ids PPO passes.
        text: `full` (prompt + response, default) or `response` (needs `context_length`).
        context_length: the fixed width every prompt is left-padded to (PPO's query width).
    """

    base_model_prefix = "backbone"

    def __init__(self, scorer: Callable[[list[str]], list[float]], tokenizer, text: str = "full",
                 context_length: int | None = None):
        super().__init__()
        if text not in ("full", "response"):
            raise ValueError(f"text must be 'full' or 'response', got {text!r}")
        if text == "response" and not context_length:
            raise ValueError("text='response' needs context_length: the fixed width prompts are padded to")
        self.backbone = _DecodeAndScore(scorer, tokenizer, text, context_length)
        self.score = nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """Scores `[B]` of the rows (what `get_reward` reads, without the broadcast)."""
        return self.backbone(input_ids, attention_mask).last_hidden_state[:, -1, 0]


@dataclass
class PPOScriptArguments:
    """PPO's sentiment task: the reward, the prompts and sample logging (PPO's own options are
    TRL's `PPOConfig`). Here rather than in recipes/ppo.py because evaluate/sentiment.py reads the
    same YAML and must not import the recipe.

    Fields:
        reward_model (`str`): classifier directory from `make reward-model` (any
            `AutoModelForSequenceClassification`; its tokenizer may differ from the policy's).
        reward_label (`str`, defaults to `"negative"`): the label whose score is the reward.
        reward_score (`str`, defaults to `"logit"`): `logit` (published), `prob`,
            `logit_if_predicted` or `margin` (see `rewards.sentiment.SentimentScorer`).
        reward_text (`str`, defaults to `"full"`): score prompt + response (`full`, published) or
            the response alone (`response`).
        reward_batch_size (`int`, defaults to `64`) / reward_device (`str`, defaults to `"auto"`):
            classifier batch and device.
        value_model (`str`, *optional*): checkpoint for the value model; defaults to the policy's.
        dataset_name (`str`, defaults to the hub id): hub id or local feedback file.
        dataset_train_split / dataset_eval_split (`str`, `"train"` / `"validation"`): where the
            training prompts and the held-out sample prompts come from.
        validation_size (`float`, defaults to `0.2`) / split_seed (`int`, defaults to `42`): split
            of a single local file.
        prompt_min_chars (`int`, defaults to `50`), prompt_min_words (`int`, defaults to `2`),
            prompt_max_words (`int`, defaults to `8`): prompts are the first 2-8 words of
            sentences longer than 50 characters.
        max_prompts (`int`, *optional*): use only the first N training prompts.
        sample_every (`int`, defaults to `10`): PPO updates between sample logs (also the first
            and the last update); 0 turns sample logging off.
        sample_prompts (`int`, defaults to `8`): held-out prompts in each sample log.
        columns (`dict[str, str]` or `str`, *optional*): your column names for the loader's fields,
            e.g. `{sentence: cau, label: nhan}` in YAML or
            `sentence=cau,label=nhan` on the command line.
        bad_rows_out (`str`, *optional*): write the rejected data rows, with their lines and reasons,
            to this JSON Lines file (never over an existing file).
    """

    reward_model: str = field(default="", metadata={"help": "Classifier directory (make reward-model)."})
    reward_label: str = field(default="negative", metadata={"help": "Label whose score is the reward."})
    reward_score: str = field(default="logit", metadata={"help": f"One of {', '.join(SCORES)}."})
    reward_text: str = field(default="full", metadata={"help": "'full' (prompt + response) or 'response'."})
    reward_batch_size: int = field(default=64, metadata={"help": "Classifier batch size."})
    reward_device: str = field(default="auto", metadata={"help": "Classifier device: auto, cpu, cuda."})
    value_model: str | None = field(default=None, metadata={"help": "Value model checkpoint (default: policy)."})
    dataset_name: str = field(default=HUB_ID, metadata={"help": "Hub id or local feedback file."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split for training prompts."})
    dataset_eval_split: str = field(default="validation", metadata={"help": "Split for sample prompts."})
    validation_size: float = field(default=0.2, metadata={"help": "Held-out fraction of a single local file."})
    split_seed: int = field(default=42, metadata={"help": "Seed of that split and of the prompt lengths."})
    prompt_min_chars: int = field(default=50, metadata={"help": "Only sentences longer than this."})
    prompt_min_words: int = field(default=2, metadata={"help": "Fewest words in a prompt."})
    prompt_max_words: int = field(default=8, metadata={"help": "Most words in a prompt."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N training prompts."})
    sample_every: int = field(default=10, metadata={"help": "Updates between sample logs (0: off)."})
    sample_prompts: int = field(default=8, metadata={"help": "Held-out prompts per sample log."})
    columns: dict[str, str] | str | None = field(
        default=None, metadata={"help": "Your column names, e.g. sentence=cau,label=nhan."}
    )
    bad_rows_out: str | None = field(
        default=None, metadata={"help": "Write the rejected data rows with their reasons to this .jsonl file."}
    )
