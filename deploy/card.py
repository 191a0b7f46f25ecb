"""Model cards and Ollama Modelfiles for exports.

A card names what the saved TRL card cannot ("fine-tuned version of [None]"): the real base model
at the end of the chain of runs, each run's recipe and data, the training settings that matter,
the scores measured by `make eval` on this model, and the export's own reload check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deploy.models import ModelSource, lineage, run_config, run_dir_of

# Settings worth a line on a card, when the run's config has them.
CARD_SETTINGS = ("learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "num_generations", "beta", "loss_type", "reward_funcs",
                 "reward_weights", "lora_r", "lora_alpha", "load_in_4bit", "max_completion_length", "temperature",
                 "seed")
SCORE_KEYS = ("accuracy", "accuracy_strict", "format_rate", "mean_completion_tokens", "rouge1", "sacrebleu")


def root_base(chain: list[dict[str, Any]]) -> str:
    """The original base model: a hub id, the embedded model's upstream name, or a path."""
    last = chain[-1] if chain else {}
    if last.get("kind") == "embedded":
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    return str(last.get("model", "unknown"))


def find_eval_scores(source: ModelSource, extra: list[str] | None = None) -> list[dict[str, Any]]:
    """`make eval` results for this model: the `metrics.json` files given, plus those under the
    project's `runs/` whose recorded model is this one."""
    files = [Path(p) for p in (extra or [])]
    run_dir = run_dir_of(source.name) if source.kind != "hub" else None
    root = next((p.parent for p in (run_dir.parents if run_dir else []) if p.name == "runs"), None)
    if root is not None:
        files += sorted((root / "runs").glob("**/metrics.json"))
    scores, seen = [], set()
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        model = (data.get("settings") or {}).get("model")
        if not model:
            continue
        given = str(file) in (extra or [])
        model_path = Path(model) if os.path.isabs(model) else (root / model if root else Path(model))
        if not given and os.path.normpath(str(model_path)) != os.path.normpath(source.name):
            continue
        if file.resolve() in seen:
            continue
        seen.add(file.resolve())
        settings = data.get("settings") or {}
        scores.append({"file": str(file), "run_name": data.get("run_name"), "dataset": settings.get("dataset"),
                       "n": data.get("n"), "decoding": settings.get("decoding"),
                       **{k: data[k] for k in SCORE_KEYS if isinstance(data.get(k), (int, float))}})
    return scores


def model_card(source: ModelSource, record: dict[str, Any], repo_id: str | None = None) -> str:
    """README.md for an export folder (and its hub repository)."""
    chain = lineage(source)
    base = root_base(chain)
    config = run_config(source.name) if source.kind != "hub" else {}
    datasets = [e["dataset"] for e in chain if e.get("dataset")]
    fmt = record["format"]
    library = {"gguf": "gguf", "adapter": "peft"}.get(fmt, "transformers")
    hub_base = base if "/" in base and not base.startswith(("/", ".", "~")) else None
    front = ["---", f"library_name: {library}", "language:", "- vi", "pipeline_tag: text-generation",
             "tags:", "- vi-rl"] + [f"- {r}" for r in sorted({e['recipe'].split('.')[-1] for e in chain if e.get('recipe')})]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    hub_data = [d for d in datasets if d and not os.path.exists(d) and d.count("/") == 1]
    if hub_data:
        front += ["datasets:"] + [f"- {d}" for d in hub_data]
    front.append("---")
    name = repo_id or record.get("name", "model")
    what = {"merged": "A LoRA adapter merged into 16-bit weights (safetensors)",
            "gguf": f"A GGUF file ({record.get('quant')}) for llama.cpp, Ollama and LM Studio",
            "adapter": "A LoRA adapter"}[fmt]
    lines = front + ["", f"# {name}", "",
                     f"{what}, trained with the vi-rl toolkit (Unsloth + TRL). "
                     f"Base model: **{base}**.", "", "## How it was made", "",
                     "| step | model | recipe | data |", "| --- | --- | --- | --- |"]
    for entry in reversed(chain):
        model = entry.get("model", "")
        shown = base if entry.get("kind") == "embedded" else (Path(model).name if os.path.isabs(model) else model)
        if entry.get("run_dir"):
            shown = f"{Path(entry['run_dir']).name}/{Path(model).name}"
        lines.append(f"| {entry.get('kind', '')} | {shown} | {entry.get('recipe') or ''} | {entry.get('dataset') or ''} |")
    if config:
        lines += ["", "## Training settings (last run)", "", "| key | value |", "| --- | --- |"]
        lines += [f"| {k} | {config[k]} |" for k in CARD_SETTINGS if k in config]
        if config.get("system_prompt") is not None:
            lines += ["", "System prompt used in training (use the same one):", "", "```text",
                      config["system_prompt"] or "(none)", "```"]
    scores = record.get("eval_scores") or []
    lines += ["", "## Measured scores", ""]
    if scores:
        lines += ["| eval run | data | n | decoding | accuracy | strict | format |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in scores:
            lines.append(f"| {s.get('run_name')} | {s.get('dataset')} | {s.get('n')} | {s.get('decoding')} | "
                         f"{_num(s.get('accuracy'))} | {_num(s.get('accuracy_strict'))} | {_num(s.get('format_rate'))} |")
    else:
        lines.append("No `make eval` results were found for this model; run `make eval MODEL=...` before exporting.")
    lines += ["", "Export reload check (greedy decoding of fixed Vietnamese prompts, export vs source):", ""]
    for check in record.get("checks", []):
        lines.append(f"- {check['step']}: {check['identical']}/{check['prompts']} prompts identical, "
                     f"top-1 agreement {check['top1_agreement']:.3f} (rule: {check['rule']}) - "
                     f"{'passed' if check['passed'] else 'FAILED'}")
    lines += ["", "## Use it", ""] + _usage(fmt, record, repo_id)
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def _usage(fmt: str, record: dict[str, Any], repo_id: str | None) -> list[str]:
    where = repo_id or "<this folder>"
    if fmt == "gguf":
        gguf = record["gguf_file"]
        return ["```bash", "ollama create my-model -f Modelfile && ollama run my-model",
                f"llama-server -m {gguf}          # OpenAI-compatible API on :8080",
                f"make serve MODEL={where}        # vi-rl's llama.cpp server", "```"]
    if fmt == "adapter":
        return ["```python", "from peft import AutoPeftModelForCausalLM",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")', "```"]
    return ["```python", "from transformers import pipeline",
            f'chat = pipeline("text-generation", model="{where}", device_map="auto")',
            'print(chat([{"role": "user", "content": "Lan có 12 quả táo, mua thêm 7 quả. Hỏi có bao nhiêu quả?"}]))',
            "```"]


# ----------------------------------------------------------------------------------- Modelfile
CHATML_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}]
CHATML_RENDERED = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"

# Ollama's Go template for ChatML: the SYSTEM line (or the request's system message) first, then
# the turns, then an open assistant turn.
OLLAMA_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
<|im_start|>assistant
{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>
{{ end }}
{{- end }}"""


def is_chatml(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders plain ChatML (Qwen2.5, SmolLM2, the tiny models)."""
    try:
        return tokenizer.apply_chat_template(CHATML_PROBE, tokenize=False) == CHATML_RENDERED
    except Exception:  # a template that refuses a system turn, etc.: not ChatML
        return False


def modelfile(gguf_name: str, tokenizer, system_prompt: str, temperature: float = 0.7, top_p: float = 0.95) -> str:
    """An Ollama Modelfile beside the GGUF: ChatML template and stop tokens (when the model's
    template is ChatML; the bare prompt for a model without a chat template; otherwise Ollama
    reads the template stored in the GGUF), the recipe's system prompt, and the chat page's
    default sampling."""
    lines = ["# Ollama: ollama create <name> -f Modelfile && ollama run <name>", f"FROM ./{gguf_name}", ""]
    if tokenizer.chat_template is None:
        lines += ["# No chat template: a plain language model that continues the prompt's text.",
                  'TEMPLATE """{{ .Prompt }}"""', ""]
        if tokenizer.eos_token:
            lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    elif is_chatml(tokenizer):
        lines += [f'TEMPLATE """{OLLAMA_CHATML}"""', ""]
        stops = ["<|im_end|>", "<|im_start|>"]
        if tokenizer.eos_token and tokenizer.eos_token not in stops:
            stops.append(tokenizer.eos_token)
        lines += [f'PARAMETER stop "{s}"' for s in stops]
    else:
        lines.append("# The chat template is not ChatML: Ollama uses the one stored in the GGUF file.")
    lines += [f"PARAMETER temperature {temperature}", f"PARAMETER top_p {top_p}"]
    if system_prompt.strip():
        lines += ["", f'SYSTEM """{system_prompt}"""']
    return "\n".join(lines) + "\n"
