# Entry points. Every training/eval target takes CONFIG=path.yaml and ARGS="--key value ...".
# Several GPUs: NPROC=8 [ACCELERATE=configs/accelerate/zero2.yaml] goes through `accelerate launch`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?=
ARGS ?=
NPROC ?= 1
ACCELERATE ?=
TINY := runs/tiny

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

# One process: plain python. Several: accelerate launch (DDP, DeepSpeed or FSDP per ACCELERATE).
ifeq ($(NPROC),1)
LAUNCH := $(PY) -m
else
LAUNCH := $(VENV)/bin/accelerate launch --num_processes $(NPROC) $(if $(ACCELERATE),--config_file $(ACCELERATE)) -m
endif

# Tiny configs point at offline random models; build them first when one is used.
tiny_dep = $(if $(findstring tiny,$(1)),$(TINY)/.complete)

.PHONY: help install test test-slow lint tiny-models data sft grpo dpo ppo lm reward-model eval demo bench

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv and install the toolkit (instant when nothing changed)

$(TINY)/.complete: | $(STAMP)
	$(PY) -m recipes.tiny --out $(TINY)

tiny-models: $(TINY)/.complete ## build the tiny offline models used by configs/*/tiny.yaml

test: $(STAMP) ## run the default test suite (CPU, offline)
	$(PY) -m pytest -q

test-slow: $(STAMP) ## also run the slow tests (embedded model, demo-sized runs)
	$(PY) -m pytest -q -m "slow and not gpu"

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check .
