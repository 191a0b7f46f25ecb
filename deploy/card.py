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

# Settings worth a line on a card, when the run's config has them (key, how the card names it). The
# run's length is not among them: `training_length` says what was trained and which budget ended it.
CARD_SETTINGS = (("learning_rate", "learning_rate"), ("per_device_train_batch_size", "per_device_train_batch_size"),
                 ("gradient_accumulation_steps", "gradient_accumulation_steps"),
                 ("num_generations", "num_generations"), ("beta", "beta"), ("loss_type", "loss_type"),
                 ("reward_funcs", "reward_funcs"), ("reward_weights", "reward_weights"), ("lora_r", "lora_r"),
                 ("lora_alpha", "lora_alpha"), ("load_in_4bit", "load_in_4bit"),
                 ("max_completion_length", "max_completion_length"),
                 ("temperature", "temperature (sampling while training)"), ("seed", "seed"))
SCORE_KEYS = ("accuracy", "accuracy_strict", "format_rate", "mean_completion_tokens", "rouge1", "sacrebleu")
# The chat page's sampling (deploy/chat.py), named on the card and in the Modelfile as the other choice.
CHAT_SAMPLING = {"temperature": 0.7, "top_p": 0.95}


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
                       "temperature": settings.get("temperature"), "top_p": settings.get("top_p"),
                       **{k: data[k] for k in SCORE_KEYS if isinstance(data.get(k), (int, float))}})
    return scores


def generation_settings(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """The decoding an export should default to: the one its `make eval` scores were measured with,
    so that a user of the export gets the model that was scored. Greedy when nothing was measured
    (`make eval`'s default) or when the scores disagree and one of them is greedy.

    Returns {"temperature", "top_p" (None for greedy), "why"}."""
    measured = [s for s in scores if s.get("decoding")]
    sampled = {(s["temperature"], s["top_p"]) for s in measured
               if s["decoding"] != "greedy" and isinstance(s.get("temperature"), (int, float))}
    if not measured:
        return {"temperature": 0.0, "top_p": None,
                "why": "no `make eval` scores were found for this model, and greedy decoding is `make eval`'s default"}
    greedy = [s for s in measured if s["decoding"] == "greedy"]
    if greedy:
        which = "greedy decoding" if len(greedy) == len(measured) else "greedy decoding (and also sampled)"
        return {"temperature": 0.0, "top_p": None, "why": f"`make eval` scored this model with {which}"}
    if len(sampled) != 1:
        return {"temperature": 0.0, "top_p": None,
                "why": "`make eval` scored this model with several sampling settings; greedy is its default"}
    temperature, top_p = sampled.pop()
    return {"temperature": float(temperature), "top_p": top_p,
            "why": f"`make eval` scored this model sampling at temperature {temperature:g}, top_p {top_p:g}"}


def trained_length(path: str) -> tuple[int | None, float | None]:
    """(optimizer steps, epochs) the model at `path` was trained for: a checkpoint's trainer_state.json,
    else the last step its run logged to metrics.jsonl; (None, None) when neither is there."""
    state = Path(path) / "trainer_state.json"
    if state.is_file():
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
            return data.get("global_step"), data.get("epoch")
        except (OSError, ValueError):
            pass
    folder = run_dir_of(path)
    if folder is None or not (folder / "metrics.jsonl").is_file():
        return None, None
    steps, epoch = None, None
    for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(row.get("step"), int):
            steps = max(steps or 0, row["step"])
        if isinstance(row.get("epoch"), (int, float)):
            epoch = row["epoch"]
    return steps, epoch


def training_length(path: str, config: dict[str, Any]) -> list[tuple[str, Any]]:
    """The card's rows about how long the run trained: the steps it took, and the budget that ended
    it - `max_steps` when set (then `num_train_epochs` never applied and is not shown), PPO's
    `total_episodes`, else the epoch budget with the epochs trained."""
    steps, epoch = trained_length(path)
    rows: list[tuple[str, Any]] = [("steps trained", steps)] if steps is not None else []
    max_steps = config.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        rows.append(("max_steps (the budget)", max_steps))
    elif config.get("total_episodes"):
        rows.append(("total_episodes (the budget)", config["total_episodes"]))
    elif config.get("num_train_epochs") is not None:
        rows.append(("num_train_epochs (the budget)", config["num_train_epochs"]))
        if epoch is not None:
            rows.append(("epochs trained", round(epoch, 2)))
    return rows


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
        lines += [f"| {name} | {value} |" for name, value in training_length(source.name, config)]
        lines += [f"| {name} | {config[k]} |" for k, name in CARD_SETTINGS if k in config]
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
    lines += ["", "## Generation settings", "", *_generation_lines(record.get("generation"), fmt)]
    lines += ["", "Export reload check (greedy decoding of fixed Vietnamese prompts, export vs source):", ""]
    for check in record.get("checks", []):
        lines.append(f"- {check['step']}: {check['identical']}/{check['prompts']} prompts identical, "
                     f"top-1 agreement {check['top1_agreement']:.3f} (rule: {check['rule']}) - "
                     f"{'passed' if check['passed'] else 'FAILED'}")
    lines += ["", "## Use it", ""] + _usage(fmt, record, repo_id)
    return "\n".join(lines) + "\n"


def _generation_lines(generation: dict[str, Any] | None, fmt: str) -> list[str]:
    """What the card says about decoding: the setting that matches the scores, and the other one."""
    generation = generation or generation_settings([])
    where = " The Modelfile uses it." if fmt == "gguf" else ""
    if generation["top_p"] is None:
        chosen = "greedy decoding (temperature 0)"
    else:
        chosen = f"sampling at temperature {generation['temperature']:g}, top_p {generation['top_p']:g}"
    other = ("Sampling (the chat page's temperature {temperature}, top_p {top_p}) gives more varied replies, "
             "which were not what was scored.").format(**CHAT_SAMPLING) if generation["top_p"] is None else \
        "Greedy decoding (temperature 0) gives the single most likely reply."
    return [f"Use {chosen}: {generation['why']}.{where} {other}"]


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


def modelfile(gguf_name: str, tokenizer, system_prompt: str, generation: dict[str, Any] | None = None) -> str:
    """An Ollama Modelfile beside the GGUF: ChatML template and stop tokens (when the model's
    template is ChatML; the bare prompt for a model without a chat template; otherwise Ollama
    reads the template stored in the GGUF), the recipe's system prompt, and the decoding the
    model's scores were measured with (`generation_settings`; greedy when none were found), with
    the other choice in a comment."""
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
    generation = generation or generation_settings([])
    lines.append("")
    if generation["top_p"] is None:
        lines += [f"# Greedy decoding: {generation['why']}.",
                  f"# For sampled replies instead: PARAMETER temperature {CHAT_SAMPLING['temperature']} and "
                  f"PARAMETER top_p {CHAT_SAMPLING['top_p']}.",
                  "PARAMETER temperature 0"]
    else:
        lines += [f"# Sampling: {generation['why']}. For greedy replies instead: PARAMETER temperature 0.",
                  f"PARAMETER temperature {generation['temperature']:g}", f"PARAMETER top_p {generation['top_p']:g}"]
    if system_prompt.strip():
        lines += ["", f'SYSTEM """{system_prompt}"""']
    return "\n".join(lines) + "\n"
