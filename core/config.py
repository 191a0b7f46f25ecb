"""Config parsing: YAML + command line -> dataclasses, one contract for every entry point.

`parse_args` reads `--config file.yaml` and `--key value` overrides through TRL's parser, so every
trainer option is both a YAML key and a flag. It refuses unknown keys and flags with the closest
real name, never abbreviates, keeps renamed options working (`RENAMED`), and applies the
precision decision (core/precision.py) before any `TrainingArguments` validates. `ModelArguments`
and `RunArguments` are the options every recipe shares.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import TrainingArguments
from trl import ModelConfig, TrlParser

from core.cli import UserError, rename_flags, renamed_option, unknown_options_message
from core.launch import is_main_process
from core.precision import Precision, precision_for, resolve_device


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig` plus what the Unsloth loader needs.

    Fields added to (or changed from) TRL's:
        dtype (`str`, defaults to `"auto"`): bf16 where the hardware has it, else fp16.
        backend (`str`, defaults to `"unsloth"`): `unsloth` (FastLanguageModel) or `hf` (plain
            transformers + PEFT + bitsandbytes), same LoRA settings and outputs.
        max_seq_length (`int`, defaults to `2048`): longest prompt + completion the model sees.
        gradient_checkpointing_mode (`str`, defaults to `"unsloth"`): `unsloth` (offloaded, least
            memory), `true` (standard) or `false`.
        fast_inference (`bool`, defaults to `False`): generate with vLLM through Unsloth. Needs a
            GPU and the `vllm` extra; otherwise the run says so and uses HF `generate`.
        gpu_memory_utilization (`float`, defaults to `0.6`): vLLM's share of GPU memory.
        trust_remote_code (`bool`, defaults to `False`): allow model code from the hub.
        require_chat_template (`bool`, defaults to `True`): fail when the tokenizer has no chat
            template (chat recipes need one; the PPO GPT-2 does not).
        device (`str`, defaults to `"auto"`): `auto`, `cuda` or `cpu`; `cuda` fails on a machine
            without a GPU instead of silently training on the CPU.
    """

    dtype: str | None = field(
        default="auto", metadata={"help": "'auto' (bf16 where supported), 'bfloat16', 'float16' or 'float32'."}
    )
    backend: str = field(default="unsloth", metadata={"help": "Model backend: 'unsloth' or 'hf'."})
    max_seq_length: int = field(default=2048, metadata={"help": "Maximum prompt + completion tokens."})
    gradient_checkpointing_mode: str = field(
        default="unsloth", metadata={"help": "Gradient checkpointing: 'unsloth', 'true' or 'false'."}
    )
    fast_inference: bool = field(default=False, metadata={"help": "Use vLLM through Unsloth for generation."})
    gpu_memory_utilization: float = field(default=0.6, metadata={"help": "vLLM share of GPU memory."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub."})
    require_chat_template: bool = field(default=True, metadata={"help": "Fail if the tokenizer lacks a chat template."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cuda' or 'cpu'."})

    def __post_init__(self):
        super().__post_init__()
        if self.backend not in ("unsloth", "hf"):
            raise UserError(f"backend must be 'unsloth' or 'hf', got {self.backend!r}")
        if self.gradient_checkpointing_mode not in ("unsloth", "true", "false"):
            raise UserError("gradient_checkpointing_mode must be 'unsloth', 'true' or 'false'")
        if self.device not in ("auto", "cuda", "cpu"):
            raise UserError(f"device must be 'auto', 'cuda' or 'cpu', got {self.device!r}")


@dataclass
class RunArguments:
    """Options about the run directory, shared by every recipe.

    Fields:
        resume (`bool`, defaults to `False`): continue from the last checkpoint in `output_dir`.
        save_merged (`bool`, defaults to `False`): also save the model with the adapter merged, in
            16-bit, under `output_dir/merged` (for vLLM serving or as the next stage's base).
        on_bad_rows (`str`, defaults to `"skip"`): `skip` or `fail` on malformed data rows.
        on_long_rows (`str`, defaults to `"fail"`): rows longer than the model's window (prompt +
            completion budget): `fail` stops before training with the numbers and the fix, `drop`
            trains without them, `cut` (DPO only) trains on their first `max_length` tokens as TRL
            cuts them, provided every pair's answers still differ within the window.
    """

    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})
    save_merged: bool = field(default=False, metadata={"help": "Also save a merged 16-bit model."})
    on_bad_rows: str = field(default="skip", metadata={"help": "'skip' or 'fail' on malformed data rows."})
    on_long_rows: str = field(default="fail", metadata={"help": "'fail', 'drop' or (DPO) 'cut' rows longer than the model's window."})


class _SharedFieldParser(TrlParser):
    """TrlParser where a field declared by several dataclasses is ONE option whose value reaches all
    of them: `trust_remote_code` is in ModelArguments and in TRL's SFT/DPO/GRPO/Reward configs, and
    plain argparse refuses the duplicate option. Abbreviations are off: argparse would otherwise
    take `--max_step 2` as `--max_steps 2` without a word."""

    def __init__(self, dataclass_types):
        super().__init__(dataclass_types, conflict_handler="resolve", allow_abbrev=False)

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        namespace, remaining = self.parse_known_args(args=args)
        if remaining and not return_remaining_strings:
            raise ValueError(unknown_options_message(remaining, self.option_names()))
        values = vars(namespace)
        if any(issubclass(t, TrainingArguments) for t in self.dataclass_types):
            apply_precision(values)
        outputs = [
            dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values})
            for dtype in self.dataclass_types
        ]
        if return_remaining_strings:
            return (*outputs, remaining)
        return tuple(outputs)

    def option_names(self) -> list[str]:
        return [o for action in self._actions for o in action.option_strings if o.startswith("--")]


def parse_args(dataclass_types: list[type], argv: list[str] | None = None) -> tuple[Any, ...]:
    """`--config file.yaml` plus `--key value` overrides -> dataclasses, through TRL's parser.

    The command-line contract of every entry point: unknown YAML keys and unknown flags fail before
    any model is loaded, each with the closest known name suggested; flags are never abbreviated;
    renamed options (`core.cli.RENAMED`) still work, with a notice.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    config: dict[str, Any] | None = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise UserError("--config needs a YAML file path")
        path = argv[index + 1]
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path} (see configs/ for the shipped ones)")
        try:
            with open(path, encoding="utf-8") as fh:
                config = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise UserError(f"{path} must be a YAML mapping of option: value")
        del argv[index:index + 2]
    argv = rename_flags(argv, known)
    for key in list(config or {}):
        new = renamed_option(key, known)
        if new is not None:
            print(f"[args] '{key}:' in the config is now '{new}:'; the old name still works")
            config[new] = config.pop(key)
    if config is not None:
        unknown = sorted(set(config) - known - {"env"})
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
            raise UserError(f"unknown key(s) in {path}: {', '.join(hints)}. Remove them or fix the spelling.")
        env = config.pop("env", {}) or {}
        if not isinstance(env, dict):
            raise UserError(f"{path}: env must be a mapping of VARIABLE: value")
        os.environ.update({k: str(v) for k, v in env.items()})
    explicit = set(config or {})
    explicit |= {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    LAST_PARSE["explicit"] = explicit
    parser = _SharedFieldParser(dataclass_types)
    try:
        if config:
            parser.set_defaults_with_config(**config)
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # TRL/HF raise ValueError for bad values
        raise UserError(str(err).splitlines()[0]) from None


def config_to_dict(*configs: Any) -> dict[str, Any]:
    """Flatten dataclass configs into one JSON-able dict (later configs win on shared names)."""
    resolved: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if hasattr(value, "value"):  # enums
                value = value.value
            try:
                json.dumps(value)
            except TypeError:
                value = repr(value)
            resolved[f.name] = value
    return resolved


def apply_precision(values: dict[str, Any]) -> Precision:
    """Set the trainer's bf16/fp16 (and use_cpu on a CPU) from the precision decision, in the parsed
    option values, before any `TrainingArguments` validates them.

    The config's `dtype` (ModelArguments; `auto` for recipes without one) is the preference; the
    config's own `bf16`/`fp16` are overruled by the decision, and the line printed says so.
    """
    device = resolve_device(values.get("device"))
    precision = precision_for(values.get("dtype"), device, values.get("backend"))
    stated = {k: values.get(k) for k in ("bf16", "fp16") if isinstance(values.get(k), bool)}
    overruled = [f"{k}: {str(v).lower()}" for k, v in stated.items() if v != getattr(precision, k)]
    if overruled and is_main_process():
        print(f"[precision] the config's {', '.join(overruled)} follows the decision: "
              f"bf16={str(precision.bf16).lower()}, fp16={str(precision.fp16).lower()}")
    values["bf16"], values["fp16"] = precision.bf16, precision.fp16
    if device == "cpu" and "use_cpu" in values:
        values["use_cpu"] = True  # TrainingArguments accepts bf16 without a GPU only with use_cpu
    LAST_PARSE["precision"] = precision
    return precision



# What the last `parse_args` decided and which keys the user stated (YAML or command line):
# recipes record the first in run_info.json and check the second against what the trainer got.
LAST_PARSE: dict[str, Any] = {"precision": None, "explicit": set()}
