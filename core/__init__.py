"""The shared layer: what recipes, evaluation and deploy commands all need, one module per concern.

Nothing here imports `recipes/`, `evaluate/` or `deploy/`; those import this (tests/test_layers.py).

    cli.py        the error contract: UserError -> one `error:` line, exit 2 (run_cli)
    config.py     YAML + command line -> dataclasses (parse_args), ModelArguments, RunArguments
    precision.py  the device and the one precision decision per device (bf16 / fp16 / float32)
    models.py     how a model is loaded: the only caller of Unsloth's and PEFT's loaders
    adapters.py   LoRA adapter directories: their base from anywhere, rank, the 16-bit base name
    merge.py      merging an adapter into its 16-bit base, checked
    runs.py       where runs go: run directories, run_info.json, metrics.jsonl, saving
    console.py    what training prints: one short line per logged step, above the progress bar
    guard.py      the training guard (0 trainable parameters, a first step that changes nothing)
    timing.py     where a GRPO step / PPO update spends its time
    launch.py     multi-process launches (accelerate, DeepSpeed, FSDP) and what is refused
    files.py      atomic writes of text, JSON and JSON Lines; staged directories
    embedded.py   the embedded SmolLM2-135M-Instruct for offline runs (`model_name_or_path: embedded`)
    boot.py       imports Unsloth before transformers/TRL/PEFT (unless backend: hf)
    noise.py      third-party lines known to be harmless, filtered at startup (VIRL_VERBOSE=1 shows them)
    sources.py    a data source string: hub id only if it looks like one; a missing path names its neighbours
"""
