"""Export a trained model for other tools, and check the export before calling it done.

    make export MODEL=runs/demo/grpo/adapter FORMAT=merged            # 16-bit safetensors
    make export MODEL=runs/demo/grpo/adapter FORMAT=gguf QUANT=q8_0   # GGUF + Ollama Modelfile
    make export MODEL=runs/demo/sft/merged FORMAT=gguf QUANT=q4_k_m ARGS="--build_quantize"
    make export MODEL=runs/demo/grpo/adapter FORMAT=adapter ARGS="--push_to_hub me/vi-math-lora"

Formats:
- `merged`: a LoRA adapter merged into its base in 16-bit (`core.merge.merge_adapter`).
- `gguf`: one GGUF file through llama.cpp's own converter (f32/f16/bf16/q8_0; fetched from PyPI
  once and cached, see deploy/llamacpp.py), or llama.cpp's quantizer for k-quants and the other
  llama.cpp types (q4_k_m, q5_k_m, q6_k, ...; `--build_quantize` compiles it once). An adapter is
  merged first. An Ollama `Modelfile` (ChatML template, stop tokens, the recipe's system prompt)
  is written beside it.
- `adapter`: the adapter itself with a model card (to publish it with `--push_to_hub`).

Every export is reloaded and decodes fixed Vietnamese prompts greedily next to its source
(deploy/verify.py: exactly the same tokens when the export holds the same weights, a stated
tolerance when it rounds or quantizes). The results, file sizes and step times go in
`export.json`, and a model card in `README.md`. The output folder (default
`runs/export/<model>-<format>`) must not exist: nothing is ever overwritten. A failed check
leaves no output folder.

`--push_to_hub REPO` uploads the folder with huggingface_hub (`HF_TOKEN` or `hf auth login`).

Not a training entry point: plain transformers + PEFT in float32, no Unsloth patches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from core.cli import ArgumentParser, UserError
from core.files import staged_directory, write_json_atomic, write_text_atomic
from deploy import llamacpp
from deploy.card import find_eval_scores, generation_settings, model_card, modelfile
from deploy.models import ModelSource, recipe_system_prompt, resolve_model, slug

FORMATS = ("merged", "gguf", "adapter")
DEFAULT_QUANT = "q8_0"
GGUF_TYPES = llamacpp.CONVERTER_TYPES + llamacpp.QUANTIZER_TYPES


def default_output_dir(source: ModelSource, fmt: str, quant: str | None) -> Path:
    suffix = f"{fmt}-{quant}" if fmt == "gguf" else fmt
    return Path("runs") / "export" / f"{slug(source)}-{suffix}"


def validate(args: argparse.Namespace) -> tuple[ModelSource, str | None, Path, llamacpp.Quantizer | None]:
    """Every user mistake, before anything is loaded or written."""
    if args.format not in FORMATS:
        raise UserError(f"unknown FORMAT {args.format!r}: choose one of {', '.join(FORMATS)}")
    quant = (args.quant or DEFAULT_QUANT).lower() if args.format == "gguf" else None
    if args.format != "gguf" and args.quant:
        raise UserError(f"QUANT applies to FORMAT=gguf only (FORMAT={args.format} is 16-bit safetensors or an adapter)")
    if quant is not None and quant not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {quant!r}: choose one of {', '.join(GGUF_TYPES)}")
    source = resolve_model(args.model)
    if args.format in ("merged", "adapter") and not source.is_adapter:
        raise UserError(f"FORMAT={args.format} needs a LoRA adapter directory; {source.name} is a full model "
                        "(FORMAT=gguf converts it)")
    if source.kind == "hub" and args.format == "gguf":
        raise UserError(f"{source.name} is a hub id: download it first (hf download {source.name} --local-dir DIR) "
                        "and export the directory")
    out = Path(args.output_dir) if args.output_dir else default_output_dir(source, args.format, quant)
    if out.exists():
        raise UserError(f"{out} already exists; nothing is overwritten: choose another OUT=... "
                        "(--output_dir) or delete it first")
    quantizer = None
    if quant in llamacpp.QUANTIZER_TYPES:
        quantizer = llamacpp.find_quantizer()
        if quantizer is None and args.build_quantize:
            quantizer = llamacpp.Quantizer("binary", str(llamacpp.build_quantize()))
        if quantizer is None:
            raise UserError(
                f"{quant} needs llama.cpp's quantizer: put llama-quantize on PATH, install the serve extra "
                "(pip install -e '.[serve]'), or add ARGS=--build_quantize to build it once (about 13 min "
                f"on 2 cores); f16, bf16 and q8_0 need none"
            )
    if args.format == "gguf":
        llamacpp.ensure_converter()  # cached by `make install`; else fetched now, before any model is loaded
    return source, quant, out, quantizer


def file_sizes(folder: Path) -> list[dict[str, Any]]:
    return [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in ("export.json", "README.md")]


def export(args: argparse.Namespace) -> Path:
    """Run the export; returns the finished output folder."""
    from transformers import AutoTokenizer

    from data.vi_gsm8k import SYSTEM_PROMPT
    from deploy import verify

    source, quant, out, quantizer = validate(args)
    system_prompt = args.system_prompt if args.system_prompt is not None else recipe_system_prompt(source, SYSTEM_PROMPT)
    tokenizer_dir = source.name if (Path(source.name) / "tokenizer_config.json").is_file() else source.base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.chat_template is None:
        # A plain language model (PPO's GPT-2 policy): it continues text and has no system turn.
        if args.system_prompt:
            raise UserError(f"{source.describe()} has no chat template (a plain language model): "
                            "--system_prompt does not apply to it; leave it out")
        system_prompt = ""
    messages = verify.check_messages(system_prompt)
    # The export's decoding (Modelfile, card) is the one its scores were measured with.
    eval_scores = find_eval_scores(source, args.eval_metrics)
    generation = generation_settings(eval_scores)
    n_tokens = args.check_tokens
    times: dict[str, float] = {}
    checks: list[dict[str, Any]] = []
    record: dict[str, Any] = {"name": out.name, "format": args.format, "quant": quant,
                              "source": source.name, "source_kind": source.kind, "base": source.base,
                              "system_prompt": system_prompt, "generation": generation}
    print(f"[export] {source.describe()} -> {out} ({args.format}{' ' + quant if quant else ''})", flush=True)

    def timed(step: str, fn, *a, **kw):
        start = time.perf_counter()
        result = fn(*a, **kw)
        times[step] = round(time.perf_counter() - start, 2)
        return result

    def reference_of_source() -> verify.Reference:
        model = verify.load_adapter(source.name, source.base) if source.is_adapter else verify.load_hf(source.name)
        ref = verify.reference_run(model, tokenizer, messages, n_tokens, f"source ({source.kind})")
        del model
        verify.release()
        return ref

    with staged_directory(out) as stage:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # a temporary folder starts private; the export is not
        if args.format == "adapter":
            timed("copy", copy_adapter, Path(source.name), stage)
            ref = timed("reference", reference_of_source)
            model = verify.load_adapter(stage, source.base)
            checks.append({"step": "copy", **verify.compare(model, tokenizer, ref, n_tokens, "exact")})
            del model
        elif args.format == "merged":
            timed("merge", merge_into, source.name, stage)
            ref = timed("reference", reference_of_source)
            model = verify.load_hf(stage)
            checks.append({"step": "merge", **verify.compare(model, tokenizer, ref, n_tokens, "16-bit rounding")})
            del model
        else:
            hf_dir = Path(source.name)
            if source.is_adapter:
                hf_dir = stage / ".merged"
                timed("merge", merge_into, source.name, hf_dir)
                ref = timed("reference", reference_of_source)
                merged = verify.load_hf(hf_dir)
                checks.append({"step": "merge", **verify.compare(merged, tokenizer, ref, n_tokens, "16-bit rounding")})
                merged_ref = verify.reference_run(merged, tokenizer, messages, n_tokens, "merged 16-bit model")
                del merged
                verify.release()
            else:
                merged_ref = timed("reference", reference_of_source)
            gguf_name = f"{slug(source)}-{quant}.gguf"
            target = stage / gguf_name
            if quantizer is None:
                timed("convert", llamacpp.convert, hf_dir, target, quant)
            else:
                intermediate = stage / ".f16.gguf"
                timed("convert", llamacpp.convert, hf_dir, intermediate, "f16")
                timed("quantize", llamacpp.quantize, intermediate, target, quant, quantizer)
                intermediate.unlink()
                record["quantizer"] = quantizer.describe()
            exact = quant in ("f32", "f16", "bf16") and verify.lossless_in(hf_dir, quant)
            expected = "exact" if exact else verify.loss_kind(quant)
            model = verify.load_gguf(target)
            checks.append({"step": "convert", **verify.compare(model, tokenizer, merged_ref, n_tokens, expected)})
            del model
            if hf_dir != Path(source.name):
                shutil.rmtree(hf_dir)
            write_text_atomic(stage / "Modelfile", modelfile(gguf_name, tokenizer, system_prompt, generation))
            record.update(converter=llamacpp.SDIST_REQUIREMENT, gguf_file=gguf_name)
        verify.release()
        times["check"] = round(sum(c["seconds"] for c in checks), 2)  # plus "reference": the source's run
        record.update(checks=checks, times_s=times, files=file_sizes(stage),
                      total_bytes=sum(f["bytes"] for f in file_sizes(stage)),
                      eval_scores=eval_scores,
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        print_checks(checks)
        failed = [c for c in checks if not c["passed"]]
        if failed:
            raise UserError(
                f"the export failed its reload check ({failed[0]['step']}: {failed[0]['identical']}/"
                f"{failed[0]['prompts']} identical, top-1 agreement {failed[0]['top1_agreement']}, rule "
                f"{failed[0]['rule']}); nothing was written to {out}"
            )
        write_json_atomic(stage / "export.json", record)
        write_text_atomic(stage / "README.md", model_card(source, record, args.push_to_hub))
        if out.exists():  # appeared while this export ran: still never overwritten
            raise UserError(f"{out} was created by something else during the export; nothing was overwritten")
    size = record["total_bytes"] / 1e6
    print(f"[export] done: {out} ({size:.1f} MB; " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + ")")
    if args.push_to_hub:
        push(out, args.push_to_hub, private=args.private)
    return out


def merge_into(adapter_dir: str, target: Path) -> None:
    """The lead's 16-bit merge into `target` (which may be an empty staging folder)."""
    from core.merge import merge_adapter

    tmp = target.with_name(target.name + ".merging")
    merge_adapter(adapter_dir, str(tmp))
    target.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        os.replace(item, target / item.name)
    tmp.rmdir()


# What an adapter folder needs to be loaded: PEFT's files and the tokenizer's (a checkpoint-*
# folder also holds optimizer and scheduler states, which are not part of the model).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "vocab.json",
                 "merges.txt", "added_tokens.json", "tokenizer.model")


def copy_adapter(adapter_dir: Path, stage: Path) -> None:
    """The adapter's own files (not the machine-specific base record, TRL's empty card or a
    checkpoint's training state)."""
    for name in ADAPTER_FILES:
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, stage / name)


def print_checks(checks: list[dict[str, Any]]) -> None:
    for c in checks:
        verdict = "passed" if c["passed"] else "FAILED"
        print(f"[check] {c['step']}: {c['identical']}/{c['prompts']} prompts token-identical, top-1 agreement "
              f"{c['top1_agreement']:.4f} vs {c['reference']} (rule: {c['rule']}) -> {verdict}", flush=True)


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an export folder to a hub model repository; returns the repository URL."""
    api = HfApi()
    url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message=f"vi-rl export: {json.loads((folder / 'export.json').read_text())['name']}")
    print(f"[export] pushed {folder} to {url}")
    return str(url)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", dest="model", default=None, help="LoRA adapter, model directory (default: the embedded model)")
    parser.add_argument("--format", default="gguf", help=f"one of {', '.join(FORMATS)} (default gguf)")
    parser.add_argument("--quant", default=None, help=f"GGUF type (default {DEFAULT_QUANT}): {', '.join(GGUF_TYPES)}")
    parser.add_argument("--output_dir", default=None, help="new folder for the export (default runs/export/<model>-<format>)")
    parser.add_argument("--build_quantize", action="store_true",
                        help="build llama.cpp's llama-quantize once (about 13 min) when a k-quant needs it")
    parser.add_argument("--system_prompt", default=None,
                        help="system prompt for the check and the Modelfile (default: the one the run trained with)")
    parser.add_argument("--check_tokens", type=int, default=32, help="greedy tokens per check prompt (default 32)")
    parser.add_argument("--eval_metrics", nargs="*", default=None,
                        help="metrics.json files from make eval to quote on the card (those under runs/ that "
                             "name this model are found anyway)")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO", help="upload the export to this hub repository")
    parser.add_argument("--private", action="store_true", help="make the hub repository private")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    export(parse(argv))


if __name__ == "__main__":
    from core.cli import run_cli

    run_cli(main, sys.argv[1:])
