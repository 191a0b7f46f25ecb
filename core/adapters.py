"""LoRA adapter directories: their base found from anywhere (even after the run folder moved), their
rank, and the 16-bit model they name as base (never Unsloth's 4-bit copy).

PEFT records the base in `adapter_config.json` as the string the run was given: a hub id, or a
path such as `runs/demo/sft/merged` that is relative to wherever `make` ran. Read from another
directory, or after `runs/` was moved or copied to another machine, that path points nowhere,
and transformers then reads it as a malformed hub id ("Repo id must be in the form ...").

`resolve_adapter_base` tries, in order, and takes the first directory that holds a model
(`config.json`, or `adapter_config.json` for an adapter trained on an adapter):

1. the path recorded beside the adapter at save time (`vi_rl_base.json`), relative to the
   adapter directory: it survives moving the whole tree (`runs/` to another disk or machine);
2. an absolute base path as written;
3. a relative base path joined to each folder above the adapter, nearest first: the recipes run
   from the project root, so `<root>/runs/demo/grpo/adapter` with base `runs/demo/sft/merged`
   finds `<root>/runs/demo/sft/merged` wherever `<root>` now is (adapters saved before the
   record existed, and `checkpoint-*` folders, resolve this way);
4. a relative base path from the current working directory;
5. the absolute path recorded at save time.

When none exists, a base that is known to be local (the record says so, or the name can only be
a path) is an error that says where it looked; anything else is taken as a hub id.

`record_adapter_base` writes the record; `core.runs.save_final` calls it after saving.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.cli import UserError
from core.files import write_json_atomic

BASE_RECORD = "vi_rl_base.json"


def looks_like_model(path: Path) -> bool:
    """A directory holding a Hugging Face model or a PEFT adapter."""
    return path.is_dir() and ((path / "config.json").is_file() or (path / "adapter_config.json").is_file())


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's `adapter_config.json`; UserError when it is not an adapter directory."""
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{config} is not valid JSON ({err}); the adapter was not saved completely") from None


def read_base_record(adapter_dir: str | Path) -> dict[str, Any] | None:
    """What `record_adapter_base` wrote, or None (adapters saved before it existed, checkpoints)."""
    path = Path(adapter_dir) / BASE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # a damaged record must not hide the other ways of finding the base
    return record if isinstance(record, dict) else None


def base_candidates(adapter_dir: Path, name: str, record: dict[str, Any] | None, cwd: Path) -> list[Path]:
    """The places where a local base named `name` may be, in the order they are tried.

    `adapter_dir` must be absolute. Pure path arithmetic: nothing is checked on disk.
    """
    candidates: list[Path] = []
    if record and record.get("kind") == "local" and record.get("relative_to_adapter"):
        candidates.append(adapter_dir / record["relative_to_adapter"])
    expanded = os.path.expanduser(name)
    if os.path.isabs(expanded):
        candidates.append(Path(expanded))
    else:
        candidates.extend(folder / expanded for folder in adapter_dir.parents)
        candidates.append(cwd / expanded)
    if record and record.get("kind") == "local" and record.get("absolute"):
        candidates.append(Path(record["absolute"]))
    unique: list[Path] = []
    for path in candidates:
        path = Path(os.path.normpath(path))
        if path not in unique:
            unique.append(path)
    return unique


def resolve_adapter_base(adapter_dir: str | Path) -> str:
    """The adapter's base model as something `from_pretrained` can load from here.

    Returns an absolute directory for a local base, or the hub id. Raises `UserError` when
    `adapter_dir` is not an adapter, or when its base is a local directory that cannot be found
    (the message lists where it looked).
    """
    adapter = Path(adapter_dir).expanduser().resolve()
    name = read_adapter_config(adapter).get("base_model_name_or_path")
    if not name:
        raise UserError(f"{adapter_dir}/adapter_config.json names no base model (base_model_name_or_path is empty)")
    record = read_base_record(adapter)
    candidates = base_candidates(adapter, name, record, Path.cwd())
    for path in candidates:
        if looks_like_model(path):
            return str(path)
    known_local = (record or {}).get("kind") == "local" or is_local_path(name)
    if not known_local:
        return name  # a hub id: transformers downloads it (or finds it in the hub cache)
    looked = ", ".join(str(p) for p in candidates)
    raise UserError(
        f"the base model of adapter {adapter_dir} is the local directory {name!r}, which is gone "
        f"(looked in: {looked}). Put that model back, or set base_model_name_or_path in "
        f"{Path(adapter_dir) / 'adapter_config.json'} to where it is now"
    )


def record_adapter_base(adapter_dir: str | Path, requested: str | None = None) -> dict[str, Any]:
    """Write `vi_rl_base.json` beside a just-saved adapter so that its base can be found later.

    Call it from the directory the run started in (the base name is resolved from there).
    `requested` is the model the user asked for (`model_name_or_path`), kept for model cards: on a
    GPU, Unsloth records its own 4-bit repository as the base instead.
    """
    adapter = Path(adapter_dir).expanduser().resolve()
    name = read_adapter_config(adapter).get("base_model_name_or_path") or ""
    expanded = Path(os.path.expanduser(name)) if name else None
    record: dict[str, Any] = {"base_model_name_or_path": name, "requested": requested}
    if expanded is not None and looks_like_model(expanded if expanded.is_absolute() else Path.cwd() / expanded):
        absolute = (expanded if expanded.is_absolute() else Path.cwd() / expanded).resolve()
        record.update(kind="local", absolute=str(absolute),
                      relative_to_adapter=os.path.relpath(absolute, adapter))
    else:
        record["kind"] = "hub"
    write_json_atomic(adapter / BASE_RECORD, record)
    return record


# ------------------------------------------------------------- naming, rank, 16-bit base, view
def is_local_path(name: str) -> bool:
    """A model name that can only be a local path (hub ids look like 'org/name')."""
    return name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1


def adapter_base(path: str) -> str | None:
    """The base model named by a LoRA adapter directory, or None if `path` is not an adapter."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    from core.adapters import resolve_adapter_base  # any working directory, moved run folders

    return resolve_adapter_base(path)


def adapter_view(adapter_dir: str, base: str) -> str:
    """The adapter as Unsloth should see it. Unsloth reads `base_model_name_or_path` as written, so
    a base recorded as a relative path (run from another directory, or a moved run folder) would
    not load; then a temporary view of the adapter (its files linked, its config naming the base
    resolved by core/adapters.py) is handed over instead. Nothing in the run folder changes."""
    import atexit
    import shutil
    import tempfile

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    recorded = config.get("base_model_name_or_path") or ""
    if recorded == base or not os.path.isdir(base) or (
            os.path.isdir(recorded) and Path(recorded).resolve() == Path(base).resolve()):
        return adapter_dir  # it loads as written (a hub id, or a path valid from here)
    view = Path(tempfile.mkdtemp(prefix="virl-adapter-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for item in Path(adapter_dir).iterdir():
        if item.name != "adapter_config.json":
            (view / item.name).symlink_to(item.resolve())
    config["base_model_name_or_path"] = base
    (view / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return str(view)


def adapter_rank(path: str) -> int | None:
    """The LoRA rank `r` of an adapter directory (None when `path` is not one)."""
    config = Path(path) / "adapter_config.json"
    return json.loads(config.read_text()).get("r") if config.is_file() else None


def is_prequantized(name: str) -> bool:
    """A checkpoint stored quantized (Unsloth's `...-bnb-4bit` repos, or a local dir whose config
    carries a `quantization_config`): merging into it keeps the quantization rounding."""
    if "bnb-4bit" in name.lower() or "bnb-8bit" in name.lower():
        return True
    config = Path(name) / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


def sixteen_bit_name(model_name_or_path: str | None) -> str | None:
    """The 16-bit model a run's adapter sits on: the base of an adapter being continued, else the model."""
    name = model_name_or_path or ""
    return (adapter_base(name) if os.path.isdir(name) else None) or name or None


def name_16bit_base(adapter_dir: str, intended: str | None) -> None:
    """Make the adapter name the 16-bit model it was trained on as its base.

    Loading `unsloth/Qwen2.5-3B-Instruct` in 4-bit, Unsloth fetches its pre-quantized
    `...-bnb-4bit` copy, and PEFT records that copy as the adapter's base: everything that later
    loads the adapter (merging, vLLM, `make eval`) would start from NF4 weights. The 16-bit name the
    user gave is the right base for all of them; a 4-bit training run re-quantizes it on load.
    """
    recorded = adapter_base(adapter_dir)
    if not recorded or not intended or recorded == intended:
        return
    if is_prequantized(recorded) and not is_prequantized(intended):
        path = Path(adapter_dir) / "adapter_config.json"
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = intended
        write_json_atomic(path, config)
        print(f"[run] {adapter_dir}: base recorded as the 16-bit {intended}, not the 4-bit copy {recorded}")
