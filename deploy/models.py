"""What a `MODEL=...` argument is, and what its training run recorded about it.

Chat, export and serve take the same argument as `make eval`: a hub id, a local model directory,
a LoRA adapter directory, or a merged model; chat and export default to the embedded model. This
module tells them apart and reads the run folder around a model (`config.yaml`, written by
`core.runs.write_run_info`) for the system prompt it was trained with and, for model cards,
its data and recipe. Nothing here loads weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.adapters import is_local_path, read_base_record, resolve_adapter_base
from core.cli import UserError

# Folder names that say nothing about a model: the run folder around them names it.
GENERIC_NAMES = ("adapter", "merged", "model", "final")


@dataclass(frozen=True)
class ModelSource:
    """A model argument, resolved.

    Fields:
        name (`str`): what the user gave (a path is made absolute).
        kind (`str`): `adapter`, `model` (a local Hugging Face model) or `hub`.
        base (`str` or `None`): for an adapter, its base model as `from_pretrained` can load it.
    """

    name: str
    kind: str
    base: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"

    def describe(self) -> str:
        """One line for logs and page headers (paths under the working directory shown relative)."""
        if self.is_adapter:
            return f"{_shown(self.name)} (LoRA adapter on {_shown(self.base)})"
        return _shown(self.name)


def _shown(path: str | None) -> str:
    if path and os.path.isabs(path):
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            return relative
    return str(path)


def default_model() -> str:
    """The embedded SmolLM2-135M-Instruct (fetched and converted once, see core/embedded.py)."""
    from core.embedded import EmbeddedModelError, ensure_embedded_model

    try:
        return str(ensure_embedded_model())
    except EmbeddedModelError as err:
        raise UserError(str(err)) from None


def resolve_model(name: str | None) -> ModelSource:
    """Classify a model argument; UserError for a local path that does not exist.

    An empty name means the embedded model.
    """
    if not name:
        name = default_model()
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        path = str(Path(expanded).resolve())
        if (Path(path) / "adapter_config.json").is_file():
            return ModelSource(path, "adapter", resolve_adapter_base(path))
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"{name} is a directory but holds no model (no config.json or adapter_config.json)")
        return ModelSource(path, "model")
    if os.path.exists(expanded):
        raise UserError(f"{name} is a file; MODEL must be a model directory, a LoRA adapter directory or a hub id")
    if is_local_path(name):
        raise UserError(f"model path not found: {name} (check the path; `make tiny-models` builds runs/tiny)")
    return ModelSource(name, "hub")


def run_dir_of(path: str | Path) -> Path | None:
    """The run folder a local model was saved in (the nearest folder above it with a config.yaml
    written by a recipe), or None."""
    path = Path(path)
    for folder in (path, *path.parents[:3]):
        if (folder / "config.yaml").is_file() and (folder / "run_info.json").is_file():
            return folder
    return None


def run_config(path: str | Path) -> dict[str, Any]:
    """The resolved config of the run that saved the model at `path` (empty when unknown)."""
    folder = run_dir_of(path)
    if folder is None:
        return {}
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def run_info(path: str | Path) -> dict[str, Any]:
    """The run's `run_info.json` (command, versions, git revision), or empty."""
    folder = run_dir_of(path)
    if folder is None:
        return {}
    try:
        return json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def recipe_system_prompt(source: ModelSource, fallback: str) -> str:
    """The system prompt the model was trained with (its run's `system_prompt`), else `fallback`.

    A run trained with `system_prompt: ""` (or DPO's `none`) gets "": the chat then sends no system
    message, as in training. DPO's preset names (`en`, `vi`) become their text.
    """
    if source.kind == "hub":
        return fallback
    value = run_config(source.name).get("system_prompt")
    if not isinstance(value, str):
        return fallback
    # A DPO config names its prompt by a preset ("en", "vi", "none"); the chat needs the text.
    from data.preference import resolve_system_prompt

    return resolve_system_prompt(value) or ""


def slug(source: ModelSource) -> str:
    """A short file-system name for a model: `demo-grpo-adapter`, `smollm2-135m-instruct`, ..."""
    if source.kind == "hub":
        return source.name.rsplit("/", 1)[-1].lower()
    parts = Path(source.name).parts
    if "runs" in parts:
        keep = parts[len(parts) - 1 - parts[::-1].index("runs") + 1 :]
    else:
        keep = parts[-1:]
        if keep[0] in GENERIC_NAMES or keep[0].startswith("checkpoint-"):
            keep = parts[-2:]
    return "-".join(keep).lower().replace(" ", "_")


def lineage(source: ModelSource, limit: int = 6) -> list[dict[str, Any]]:
    """The chain of models behind `source`, newest first, from the run folders on disk.

    Each entry: `model` (path or hub id), `kind`, and for a model saved by a recipe its `recipe`
    (the module name from the run's command), `dataset` and `run_dir`. The chain follows an
    adapter to its base and a run to the model it started from, so the last entry is the
    original base model (a hub id, the embedded model, or whatever the first run was given).
    """
    chain: list[dict[str, Any]] = []
    current: str | None = source.name
    seen: set[str] = set()
    while current and current not in seen and len(chain) < limit:
        seen.add(current)
        entry: dict[str, Any] = {"model": current}
        path = Path(current)
        if not path.is_dir():
            entry["kind"] = "hub" if not is_local_path(current) else "missing"
            chain.append(entry)
            break
        marker = path / ".complete"
        if marker.is_file():  # core/embedded.py's conversion marker
            try:
                entry.update(kind="embedded", source=json.loads(marker.read_text()).get("source"))
            except ValueError:
                entry["kind"] = "embedded"
            chain.append(entry)
            break
        config, info = run_config(path), run_info(path)
        entry["kind"] = "adapter" if (path / "adapter_config.json").is_file() else "model"
        if config:
            entry.update(run_dir=str(run_dir_of(path)), dataset=config.get("dataset_name"),
                         recipe=_recipe_name(info.get("command")))
        chain.append(entry)
        if entry["kind"] == "adapter":
            record = read_base_record(path) or {}
            entry["requested_base"] = record.get("requested")
            try:
                current = resolve_adapter_base(path)
            except UserError:
                chain.append({"model": json.loads((path / "adapter_config.json").read_text())
                              .get("base_model_name_or_path"), "kind": "missing"})
                break
        else:
            current = config.get("model_name_or_path") if config else None
            if current and not os.path.isabs(current) and run_dir_of(path):
                # Paths in a run's config are relative to where the run started: the project root.
                root = _project_root_of(run_dir_of(path), current)
                current = str(root / current) if root else current
    return chain


def _recipe_name(command: Any) -> str | None:
    """`recipes.grpo` from a run's recorded command line (`sys.argv`)."""
    if not isinstance(command, list) or not command:
        return None
    first = str(command[0])
    if first.endswith(".py"):
        return "recipes." + Path(first).stem if "recipes" in Path(first).parts else Path(first).stem
    return first


def _project_root_of(run_dir: Path, relative: str) -> Path | None:
    """The folder above `run_dir` from which `relative` names an existing path."""
    for folder in run_dir.parents:
        if (folder / relative).exists():
            return folder
    return None
