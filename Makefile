# Entry points. Every training/eval target takes CONFIG=path.yaml and ARGS="--key value ...".
# Several GPUs: NPROC=8 [ACCELERATE=configs/accelerate/zero2.yaml] goes through `accelerate launch`
# (docs/scaling.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?=
ARGS ?=
MODEL ?=
NPROC ?=
ACCELERATE ?=
LAUNCH_ARGS ?=
RUN ?=
OUT ?=
TINY := runs/tiny

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

# One process: plain python. NPROC>1, ACCELERATE=file or LAUNCH_ARGS: `accelerate launch` with that
# config (default configs/accelerate/multi_gpu.yaml, DDP); --num_processes NPROC overrides the
# file's num_processes. Several machines: LAUNCH_ARGS="--num_machines 2 --machine_rank 0
# --main_process_ip HOST --main_process_port 29500" (docs/scaling.md).
ifeq ($(strip $(ACCELERATE)$(LAUNCH_ARGS)$(filter-out 1,$(NPROC))),)
LAUNCH := $(PY) -m
else
LAUNCH := $(VENV)/bin/accelerate launch --config_file $(or $(ACCELERATE),configs/accelerate/multi_gpu.yaml) $(if $(NPROC),--num_processes $(NPROC)) $(LAUNCH_ARGS) -m
endif

# Tiny configs point at offline random models; build them first when one is used.
tiny_dep = $(if $(findstring tiny,$(1)),$(TINY)/.complete)
# Configs that say `model_name_or_path: embedded` (the demo configs, and any copy of them) run on
# the embedded SmolLM2-135M-Instruct: the model loader resolves the name itself (core/embedded.py,
# converted once, cached outside the repo). EMBEDDED is a recursive variable for the targets that
# need the directory here (data-report MODEL=embedded): `python -m core.embedded` runs only when
# one expands it, and its last stdout line is the model directory.
EMBEDDED = $(shell $(PY) -m core.embedded | tail -1)

.PHONY: help install test test-slow test-demo test-serve test-ci lint tiny-models data data-report pass-rate sft grpo dpo ppo lm reward-model eval eval-preference eval-sentiment plot demo demo-quick bench bench-grpo gpu-check chat export serve serve-install

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(PY) -m deploy.llamacpp --fetch
	touch $@

install: $(STAMP) ## create .venv and install the toolkit (instant when nothing changed)

$(TINY)/.complete: | $(STAMP)
	$(PY) -m recipes.tiny --out $(TINY)

tiny-models: $(TINY)/.complete ## build the tiny offline models used by configs/*/tiny.yaml

# The tests run every shipped config; the tiny ones name runs/tiny, built here first.
test: $(STAMP) $(TINY)/.complete ## the default test suite: CPU, offline (README: Tests)
	$(PY) -m pytest -q

# The slow tests run the embedded model: fetched here (PyPI, once, cached), never by a test.
test-slow: $(STAMP) $(TINY)/.complete ## the slow tests: every demo and GPU config run on the CPU, exports, the embedded model
	$(PY) -m core.embedded
	$(PY) -m pytest -q -m "slow and not gpu and not demo and not serve"

test-ci: test test-slow ## what CI runs (.ci/run): the default suite, then the slow tests

test-demo: $(STAMP) ## the full-length `make demo` as a test (report and summary agree; GRPO >= best SFT + 5 points, an expected failure until calibrated)
	$(PY) -m core.embedded
	$(PY) -m pytest -q -m demo

test-serve: serve-install $(TINY)/.complete ## install the serve extra (compiles llama.cpp once) and test `make serve`
	$(PY) -m pytest -q -m serve

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check .

# vi_gsm8k cached as JSON Lines (file targets: an existing file is kept, never rebuilt).
DATA_DIR ?= runs/data
SOURCE ?= hllj/vi_gsm8k

data: $(DATA_DIR)/vi_gsm8k-train.jsonl $(DATA_DIR)/vi_gsm8k-test.jsonl ## prepare vi_gsm8k train/test as JSONL in runs/data [SOURCE=hub-id|file DATA_DIR=dir]

$(DATA_DIR)/vi_gsm8k-%.jsonl: | $(STAMP)
	$(PY) -m data.vi_gsm8k --source $(SOURCE) --split $* --out $@

# A report on any source before training on it (data/report.py): rows kept/skipped, token lengths in
# MODEL's tokens and the limits they imply, duplicates, and contamination of TEST by SOURCE.
# MODEL=embedded counts in the embedded SmolLM2's tokens; OUT (default runs/data-report) is never
# overwritten.
TEST ?=
KIND ?= math
COLUMNS ?=
report_model = $(if $(filter embedded,$(MODEL)),$(or $(EMBEDDED),$(error core.embedded gave no model directory)),$(MODEL))

data-report: $(STAMP) $(if $(filter $(TINY)/%,$(MODEL)),$(TINY)/.complete) ## lengths, bad rows, duplicates, contamination -> runs/data-report/report.md: SOURCE=file|hub-id [TEST=file MODEL=embedded|dir|hub-id KIND=math|preference|feedback COLUMNS=question=cau_hoi,... OUT=dir]
	$(PY) -m data.report --source '$(SOURCE)' --kind $(KIND) --out '$(or $(OUT),runs/data-report)' $(if $(TEST),--test '$(TEST)') $(if $(COLUMNS),--columns '$(COLUMNS)') $(if $(MODEL),--model_name_or_path '$(report_model)') $(ARGS)

# Pass-rate filtering (evaluate/pass_rate.py): K samples per training problem from the policy GRPO will
# start from; keeps the problems it solves only sometimes (GRPO learns nothing from the others).
# Train GRPO on OUT/kept.jsonl. MODEL=embedded samples the embedded SmolLM2; OUT is never overwritten.
pass-rate: $(STAMP) $(if $(filter $(TINY)/%,$(MODEL)),$(TINY)/.complete) ## keep the problems a policy solves only sometimes -> OUT/kept.jsonl, report.json: MODEL=dir|adapter|hub-id|embedded SOURCE=file|hub-id [OUT=runs/pass-rate ARGS="--k 8 --temperature 1.0 --keep greedy_wrong"]
	$(PY) -m evaluate.pass_rate $(if $(MODEL),--model_name_or_path '$(report_model)') --dataset_name '$(SOURCE)' --output_dir '$(or $(OUT),runs/pass-rate)' $(ARGS)

sft: $(STAMP) $(call tiny_dep,$(CONFIG)) ## SFT + chain-of-thought baseline: CONFIG=configs/sft/{qwen2.5-3b,tiny}.yaml [ARGS="--resume"]
	$(LAUNCH) recipes.sft --config $(or $(CONFIG),configs/sft/qwen2.5-3b.yaml) $(ARGS)

grpo: $(STAMP) $(call tiny_dep,$(CONFIG)) ## GRPO on vi_gsm8k: CONFIG=configs/grpo/{qwen2.5-3b,qwen2.5-1.5b,qwen2.5-0.5b,tiny}.yaml [ARGS="--resume"]
	$(LAUNCH) recipes.grpo --config $(or $(CONFIG),configs/grpo/qwen2.5-3b.yaml) $(ARGS)

eval: $(STAMP) $(call tiny_dep,$(CONFIG)) $(if $(filter $(TINY)/%,$(MODEL)),$(TINY)/.complete) ## vi_gsm8k accuracy + Vietnamese drift -> runs/eval/comparison.md: MODEL=hub-id|dir|adapter [ARGS="--limit 100 --run_name grpo --baseline sft"] or CONFIG=
	$(PY) -m evaluate.gsm8k $(if $(CONFIG),--config $(CONFIG)) $(if $(MODEL),--model_name_or_path $(MODEL)) $(ARGS)

dpo: $(STAMP) $(call tiny_dep,$(CONFIG)) ## DPO on preference pairs: CONFIG=configs/dpo/{qwen2.5-3b,qwen2.5-1.5b,demo,tiny}.yaml [ARGS="--beta 0.2"]
	$(LAUNCH) recipes.dpo --config $(or $(CONFIG),configs/dpo/qwen2.5-3b.yaml) $(ARGS)

eval-preference: $(STAMP) $(if $(filter $(TINY)/%,$(MODEL)),$(TINY)/.complete) ## held-out preference accuracy/margin + side-by-side answers: MODEL=run/adapter [ARGS="--dataset_name f.jsonl"]
	$(PY) -m evaluate.preference $(if $(MODEL),--model_name_or_path $(MODEL)) $(ARGS)

# PPO sentiment steering: reward-model and lm prepare the classifier and the policy, ppo steers it,
# eval-sentiment compares the policy before and after PPO (all read the same CONFIG family).
reward-model: $(STAMP) $(call tiny_dep,$(CONFIG)) ## sentiment classifier for PPO's reward: CONFIG=configs/reward_model/{phobert,tiny}.yaml
	$(LAUNCH) recipes.reward_model --config $(or $(CONFIG),configs/reward_model/phobert.yaml) $(ARGS)

lm: $(STAMP) $(call tiny_dep,$(CONFIG)) ## adapt PPO's policy to the feedback corpus as a causal LM: CONFIG=configs/lm/{gpt2-vietnamese,demo,tiny}.yaml
	$(LAUNCH) recipes.lm --config $(or $(CONFIG),configs/lm/gpt2-vietnamese.yaml) $(ARGS)

ppo: $(STAMP) $(call tiny_dep,$(CONFIG)) ## PPO: steer the LM to negative feedback with the classifier reward: CONFIG=configs/ppo/{gpt2-vietnamese,demo,tiny}.yaml
	$(LAUNCH) recipes.ppo --config $(or $(CONFIG),configs/ppo/gpt2-vietnamese.yaml) $(ARGS)

eval-sentiment: $(STAMP) $(call tiny_dep,$(CONFIG)) ## PPO policy before/after: negative share, reward, distinct-n, perplexity: CONFIG=configs/ppo/....yaml
	$(PY) -m evaluate.sentiment --config $(or $(CONFIG),configs/ppo/gpt2-vietnamese.yaml) $(ARGS)

RUN ?=
bench: $(STAMP) ## Unsloth vs HF speed/memory, GRPO + DPO -> bench/results/ (GPU: 0.5b,1.5b shapes; CPU: tiny) [ARGS="--shapes 3b"]
	$(PY) -m bench.run $(ARGS)

# The GPU check (bench/gpu_check.py; README: "The GPU check"): every recipe on Unsloth's GPU path,
# each check under its own time limit, the report rewritten after every check. VLLM=1 first installs
# the vllm extra (several GB; it moves torch to 2.14.0).
VLLM ?=
gpu-check: $(STAMP) ## GPU path check, fits 15 min of GPU time -> bench/results/gpu_check.{json,md} after every check [VLLM=1 ARGS="--budget 600 --only sft_learns,vllm_grpo"]
	$(if $(VLLM),$(VENV)/bin/pip install -q -e '.[vllm]')
	$(PY) -m bench.gpu_check --out bench/results $(ARGS)

# Stock TRL's GRPO step against the toolkit's (each prompt encoded once per group: recipes/grpo_prefix.py),
# steps taken in turns in one process. The embedded model is fetched here (PyPI, once), never by the bench.
bench-grpo: $(STAMP) ## GRPO step time, stock TRL vs shared prompt, embedded model, CPU float32 (about 8 min on 2 free cores) -> bench/results/grpo_shared_prefix.{json,md} [ARGS="--shapes demo --threads 1 --steps 3"]
	$(PY) -m core.embedded
	$(PY) -m bench.grpo_prefix $(ARGS)

plot: $(STAMP) ## plot and compare runs from their metrics.jsonl, live ones too: RUN="runs/a runs/b" [OUT=dir] -> PNGs + summary.md
	$(PY) -m evaluate.plots $(or $(RUN),$(error name the run directories: make plot RUN="runs/a runs/b")) $(if $(OUT),--out $(OUT))

# The offline demo: every stage is one of the targets above, run by recipes/demo.py with the
# configs/{eval,sft,grpo}/demo.yaml settings on the embedded model and synthetic problems.
demo: $(STAMP) ## GRPO against the best SFT the same FLOPs buy, on a CPU, offline (about 2 h; not yet calibrated; README): SFT to its plateau -> pass-rate filter -> GRPO vs SFT continued -> runs/demo/report.md, summary.json [ARGS="--resume"]
	$(PY) -m recipes.demo $(ARGS)

demo-quick: $(STAMP) $(TINY)/.complete ## the demo's plumbing on the tiny random model (~2 min) -> runs/demo-quick/report.md, summary.json
	$(PY) -m recipes.demo --quick --model_name_or_path $(TINY)/qwen2 --output_dir runs/demo-quick $(ARGS)

# Use a trained model (README, "Use the trained model"). MODEL: a hub id, a model directory, a LoRA
# adapter or a merged model; empty means the embedded SmolLM2-135M-Instruct.
FORMAT ?= gguf
QUANT ?=
model_dep = $(if $(filter $(TINY)/%,$(MODEL)),$(TINY)/.complete)

chat: $(STAMP) $(model_dep) ## Gradio chat page on 127.0.0.1:7860, streamed replies: MODEL=dir|adapter|hub-id [ARGS="--port 7861 --do_sample true"]
	$(PY) -m deploy.chat $(if $(MODEL),--model_name_or_path $(MODEL)) $(ARGS)

export: $(STAMP) $(model_dep) ## export + reload check: MODEL=adapter|dir FORMAT=merged|gguf|adapter [QUANT=f16|bf16|q8_0|q4_k_m OUT=dir ARGS="--push_to_hub user/repo"]
	$(PY) -m deploy.export $(if $(MODEL),--model_name_or_path $(MODEL)) --format $(FORMAT) $(if $(QUANT),--quant $(QUANT)) $(if $(OUT),--output_dir $(OUT)) $(ARGS)

serve: $(STAMP) ## OpenAI-compatible server: MODEL=export-dir|file.gguf (CPU, llama.cpp; make serve-install first) or adapter|dir (GPU, vLLM) [ARGS="--port 8000"]
	$(PY) -m deploy.serve $(if $(MODEL),--model_name_or_path $(MODEL)) $(ARGS)

# The serve extra compiles llama.cpp from source, which takes long on a CPU: say so before, and let
# pip show the compiler's progress (-v) instead of a spinner that stays silent for half an hour.
serve-install: $(STAMP) ## install the serve extra for `make serve` on a CPU: compiles llama.cpp once, showing its progress
	@echo "[serve-install] compiling llama.cpp for the serve extra: 20 to 41 min on 2 cores (README, Serve); its progress follows"
	$(VENV)/bin/pip install -v -e '.[serve]'
