"""Every GPU config shipped in configs/ runs end to end on the CPU, as shipped but for ONE table.

tests/test_configs.py only parses these files. Here each one runs through the entry point a user
runs (`python -m recipes.<name> --config configs/<dir>/<file>.yaml ...`, what `make <target>
CONFIG=...` runs in one process) on a tiny random model of its family, with only the keys in
`OVERRIDES` replaced on the command line. The overrides are derived from that table and the
config's own keys (`cpu_args`): a key the table does not name reaches the recipe as shipped, so a
config that grows a GPU-only key the table does not know fails here. Each run's outputs are
checked (adapter or model files, metrics.jsonl rows, run_info.json, config.yaml holding every kept
key unchanged), not only its exit code.

Some runs read another's output, as a user's would: configs/ppo/gpt2-vietnamese.yaml trains the
policy from configs/lm/gpt2-vietnamese.yaml with the classifier from
configs/reward_model/phobert.yaml, and configs/eval/published-100.yaml scores the adapter of
configs/sft/qwen2.5-3b.yaml (`producers`).

Time: a run is mostly Python start-up and imports (10-15 s of the 12-30 s each took alone on 2
shared cores); its training takes 1-7 s. The runs go two at a time (each with one thread,
OMP_NUM_THREADS=1): the 15 took 3.5 minutes together, so they are marked slow (`make test-slow`);
the checks of the table itself run in the default suite.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from tests.conftest import ROOT, run_entry

ENV = {"OMP_NUM_THREADS": "1"}
WORKERS = 2  # concurrent runs: each has one thread and spends most of its time importing

# Every shipped config except the CPU ones (tiny, demo) and accelerate's launch files.
GPU_CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("configs/*/*.yaml")
                     if p.parent.name != "accelerate" and p.stem not in ("tiny", "demo"))
MODULES = {"sft": "recipes.sft", "grpo": "recipes.grpo", "dpo": "recipes.dpo", "ppo": "recipes.ppo",
           "lm": "recipes.lm", "reward_model": "recipes.reward_model", "eval": "evaluate.gsm8k"}
# A shipped model id -> the tiny random model of that family (recipes/tiny.py).
FAMILIES = {"qwen2.5": "qwen2", "gpt2": "gpt2", "phobert": "classifier"}
# The project's offline fixture with the schema each recipe's loader reads.
FIXTURES = {
    "sft": "data/fixtures/vi_gsm8k_sample.jsonl",             # 60 problems
    "grpo": "data/fixtures/vi_gsm8k_sample.jsonl",
    "eval": "data/fixtures/vi_gsm8k_sample.jsonl",
    "dpo": "data/fixtures/preference_sample.jsonl",           # 48 pairs
    "lm": "data/fixtures/students_feedback_sample.jsonl",     # 180 sentences: 144 train / 36 held out
    "ppo": "data/fixtures/students_feedback_sample.jsonl",    # -> 101 training prompts, 27 held out
    "reward_model": "data/fixtures/students_feedback_sample.jsonl",
}
# What a config's own header tells the user to add: the eval config names no model.
USER_ARGS = {
    "configs/eval/published-100.yaml": ["--model_name_or_path", "runs/sft-qwen2.5-3b/adapter", "--run_name", "sft"],
}


def shipped(config: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))


def recipe(config: str) -> str:
    return Path(config).parent.name


# Where each shipped config writes, so that a path under it (runs/lm/gpt2-vietnamese/model) can be
# recognised as that config's output.
OUTPUT_DIRS = {shipped(c)["output_dir"]: c for c in GPU_CONFIGS if "output_dir" in shipped(c)}


def producers(config: str) -> list[str]:
    """The shipped configs whose output this one reads (its model, its reward model)."""
    values = shipped(config)
    refs = [values.get("model_name_or_path"), values.get("reward_model"), *USER_ARGS.get(config, [])]
    return sorted({c for ref in refs if isinstance(ref, str) for out, c in OUTPUT_DIRS.items()
                   if ref.startswith(out + "/")})


@dataclass
class Run:
    """One config's CPU run: its directory, and where the runs it reads from wrote."""

    config: str
    tmp: Path
    tiny: Path

    @property
    def dir(self) -> Path:
        return self.tmp / recipe(self.config) / Path(self.config).stem

    def local(self, path: str) -> str:
        """A shipped path under another config's output_dir -> the same path under that run."""
        for out, producer in OUTPUT_DIRS.items():
            if path.startswith(out + "/"):
                return str(Run(producer, self.tmp, self.tiny).dir) + path[len(out):]
        return path


def model_for(run: Run) -> str:
    name = shipped(run.config)["model_name_or_path"]
    if run.local(name) != name:
        return run.local(name)
    family = [tiny for pattern, tiny in FAMILIES.items() if pattern in name.lower()]
    assert len(family) == 1, f"{run.config}: no tiny model of {name}'s family; add it to FAMILIES"
    return str(run.tiny / family[0])


def fixture_for(run: Run) -> str:
    assert recipe(run.config) in FIXTURES, f"{run.config}: no fixture for this recipe; add one to FIXTURES"
    return FIXTURES[recipe(run.config)]


KEEP = object()  # a row that documents a GPU-looking key the CPU run keeps as shipped


@dataclass(frozen=True)
class Row:
    cpu: Any                         # the CPU value: a constant, KEEP, or a function of the Run
    why: str
    only: tuple[str, ...] = ()       # config directories it applies to (default: all)


# THE table. A row replaces its key in every config that states it (within `only`); a key that is
# in no row - or in a KEEP row - reaches the recipe as shipped. Times measured on 2 shared cores.
OVERRIDES: dict[str, Row] = {
    # ---- the network: the hub is unreachable offline
    "model_name_or_path": Row(model_for, "a hub id cannot be downloaded: the tiny random model of the same "
                              "family (Qwen2.5 -> qwen2, GPT-2 -> gpt2, PhoBERT -> classifier); a runs/... path "
                              "is another shipped config's output: that config's run here"),
    "reward_model": Row(lambda run: run.local(shipped(run.config)["reward_model"]),
                        "runs/reward_model/phobert/model is the output of configs/reward_model/phobert.yaml: "
                        "that run here"),
    "dataset_name": Row(fixture_for, "a hub dataset cannot be downloaded: the project's fixture of the same "
                        "schema in data/fixtures/"),
    # ---- where a run writes: never into the repository's runs/
    "output_dir": Row(lambda run: str(run.dir), "a temporary directory"),
    "results_dir": Row(lambda run: str(run.dir / "eval"), "the shared comparison table: a temporary one"),
    # ---- the GPU
    "use_vllm": Row(False, "TRL's vLLM generation needs CUDA and the vllm package (the recipe refuses "
                    "use_vllm on a CPU); server mode also needs a `trl vllm-serve` process on other GPUs. "
                    "Generation goes through HF generate; the vllm_* keys stay (GRPOConfig validates them, "
                    "nothing reads them without use_vllm)"),
    "fast_inference": Row(KEEP, "Unsloth's vLLM: on a CPU the loader says so and generates with HF generate "
                          "(asserted)"),
    "gpu_memory_utilization": Row(KEEP, "read only with fast_inference on a GPU"),
    "load_in_4bit": Row(KEEP, "bitsandbytes 4-bit runs on the CPU backend: a GRPO step of the tiny model "
                        "~0.5-1.5 s, a DPO step ~1-3 s"),
    "optim": Row(KEEP, "bitsandbytes 0.50's AdamW8bit and PagedAdamW8bit step on a CPU here (paged falls back "
                 "to unpaged), but Unsloth's CPU backend replaces any 8-bit/paged optimizer by "
                 "adamw_torch_fused and prints so (asserted); the backend-hf configs name adamw_torch"),
    "dtype": Row(KEEP, "auto (stated or default): core/precision.py picks bf16 where the CPU has it natively, "
                 "else float32; no config states bf16/fp16"),
    "attn_implementation": Row(KEEP, "sdpa runs on a CPU"),
    "gradient_checkpointing_mode": Row(KEEP, "unsloth (offloaded) and true both run on a CPU"),
    "report_to": Row(KEEP, "tensorboard writes its event files offline (asserted); no config names wandb"),
    # ---- run length: a couple of steps
    "max_steps": Row(2, "2 optimizer steps"),
    "num_train_epochs": Row(1, "one pass over the fixture, 5 steps at the shipped batch sizes, so that "
                            "per-epoch evaluation, saving and load_best_model_at_end happen once"),
    "total_episodes": Row(128, "2 PPO updates of 16 x 4 episodes"),
    "sft_first_steps": Row(2, "DPO's SFT pass on the chosen answers: 2 steps"),
    "save_steps": Row(2, "50-200 is never reached in 2 steps: a checkpoint (and GRPO's eval_every_save) at 2"),
    "logging_steps": Row(1, "5-50 is never reached in 2-5 steps: no row in metrics.jsonl otherwise"),
    # ---- data sizes: the fixtures are small
    "test_size": Row(12, "200 held-out pairs are more than the fixture's 48 (the recipe refuses); 12 = the "
                     "25 % that configs/dpo/tiny.yaml holds out"),
    "gradient_accumulation_steps": Row(4, "an update takes 16 x 8 = 128 distinct prompts (TRL drops a short "
                                       "batch) and the fixture has 101 (the recipe refuses); 16 x 4 = 64",
                                       only=("ppo",)),
    "eval_limit": Row(KEEP, "50 held-out problems x 64 tokens at the checkpoint: ~2 s"),
    "limit": Row(KEEP, "100 > the fixture's 60 problems: all 60 are scored (~2 s at 64 tokens)"),
    # ---- lengths, for time only
    "max_completion_length": Row(64, "a random model rarely emits eos, so at 768 every completion runs to "
                                 "~630 tokens: 11.7 s of generation per step and 45 s for the 50-problem "
                                 "checkpoint eval (measured, qwen2.5-3b); at 64: 0.5 s and 2 s. Prompt + "
                                 "completion are still checked against max_seq_length"),
    "max_new_tokens": Row(64, "at 1024 a random model never stops: 14 s for 16 problems, about a minute for "
                          "the fixture's 60 (measured); at 64: 2 s"),
}


def cpu_args(run: Run) -> list[str]:
    """The command-line overrides of one config: its keys that have a (non-KEEP) row in OVERRIDES."""
    args = []
    for key in shipped(run.config):
        row = OVERRIDES.get(key)
        if row is None or row.cpu is KEEP or (row.only and recipe(run.config) not in row.only):
            continue
        value = row.cpu(run) if callable(row.cpu) else row.cpu
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def command(run: Run) -> list[str]:
    user = [run.local(a) for a in USER_ARGS.get(run.config, [])]
    return ["python", "-m", MODULES[recipe(run.config)], "--config", run.config, *user, *cpu_args(run)]


def overridden(run: Run) -> set[str]:
    argv = cpu_args(run) + USER_ARGS.get(run.config, [])
    return {a[2:] for a in argv if a.startswith("--")}


# ------------------------------------------------------------------------------------ the runs
@dataclass
class Result:
    run: Run
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class Runner:
    """Starts the selected configs' runs (and the runs they read from), WORKERS at a time.

    Producers are submitted before the runs that read them, so a worker that waits for a producer
    never waits for one still queued behind it.
    """

    def __init__(self, tmp: Path, tiny: Path):
        self.tmp, self.tiny = tmp, tiny
        self.pool = ThreadPoolExecutor(WORKERS)
        self.futures: dict[str, Future] = {}

    def start(self, config: str) -> Future:
        if config not in self.futures:
            needs = [self.start(p) for p in producers(config)]
            self.futures[config] = self.pool.submit(self._run, Run(config, self.tmp, self.tiny), needs)
        return self.futures[config]

    @staticmethod
    def _run(run: Run, needs: list[Future]) -> Result:
        for need in needs:
            if need.result().returncode != 0:
                return Result(run, [], -1, "", f"{need.result().run.config} failed: nothing to read", 0.0)
        argv = command(run)
        started = time.perf_counter()
        proc = run_entry(argv, env=ENV, check=False)
        return Result(run, argv, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)

    def result(self, config: str) -> Result:
        return self.start(config).result()


@pytest.fixture(scope="module")
def runner(request, tiny_models, tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("gpu-configs"), tiny_models)
    # Only the runs this session selected (-k, -m), and what they read from.
    selected = [item.callspec.params["config"] for item in request.session.items
                if item.name.startswith("test_gpu_config_runs_on_the_cpu[")]
    read = {p for c in GPU_CONFIGS for p in producers(c)}
    # Producers first, so that their readers can start early; readers last.
    for config in sorted(selected, key=lambda c: (c not in read, len(producers(c)), c)):
        runner.start(config)
    yield runner
    runner.pool.shutdown(wait=True, cancel_futures=True)
    for config, future in sorted(runner.futures.items()):
        if future.done() and not future.cancelled():
            print(f"[gpu-configs] {config}: {future.result().seconds:.1f} s")


# --------------------------------------------------------------------------- what runs wrote
def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_rows(run_dir: Path, key: str = "loss") -> list[dict]:
    return [r for r in jsonl(run_dir / "metrics.jsonl") if key in r and "train_runtime" not in r]


def steps_per_epoch(rows: int, values: dict) -> int:
    batches = math.ceil(rows / values["per_device_train_batch_size"])
    return math.ceil(batches / values.get("gradient_accumulation_steps", 1))


def check_kept_keys(result: Result, run_dir: Path) -> None:
    """config.yaml (the resolved config) holds every shipped key the table did not replace, unchanged."""
    values, resolved = shipped(result.run.config), yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in values.items():
        if key in overridden(result.run):
            continue
        if key == "optim" and "8bit" in value and resolved.get("backend") == "unsloth":
            # Unsloth's CPU backend swaps it (see the table) and says so.
            assert f"Unsloth (CPU): optim = '{value}' needs a GPU" in result.stdout
            continue
        got = resolved[key]
        assert got == value or (key == "report_to" and got == [value]), (key, value, got)


def check_adapter(adapter: Path, values: dict) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json"):
        assert (adapter / name).is_file(), adapter / name
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (values["lora_r"], values["lora_alpha"])
    assert config["use_rslora"] == values.get("use_rslora", False)
    assert sorted(config["target_modules"]) == sorted(values["lora_target_modules"])


def check_sft(result: Result, run_dir: Path, values: dict) -> None:
    check_adapter(run_dir / "adapter", values)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["recipe"] == "sft" and info["train_rows"] == 60
    steps = 2 if "max_steps" in values else steps_per_epoch(60, values)
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, steps + 1))
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in train_rows(run_dir))
    assert (run_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()


def check_grpo(result: Result, run_dir: Path, values: dict) -> None:
    from recipes.grpo import LOSS_KEYS

    check_adapter(run_dir / "adapter", values)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["generation"] == "HF generate" and len(info["reward_names"]) == len(values["reward_funcs"])
    assert info["objective"] == {k: values[k] for k in LOSS_KEYS}  # the stated objective reached the trainer
    if values.get("fast_inference"):
        assert "[model] fast_inference (vLLM) needs a CUDA GPU: generating with Hugging Face generate" in result.stdout
    rows = train_rows(run_dir, "reward")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for name in info["reward_names"]:
            assert isinstance(row[f"rewards/{name}/mean"], float), name
        assert 0 < row["completions/mean_length"] <= 64 and "frac_reward_zero_std" in row
    assert (run_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()
    # eval_every_save: held-out accuracy at the checkpoint, on eval_limit problems (the fixture has 60).
    evals = jsonl(run_dir / "train_eval.jsonl")
    assert [(e["step"], e["n"]) for e in evals] == [(2, min(values["eval_limit"], 60))]


def check_dpo(result: Result, run_dir: Path, values: dict) -> None:
    check_adapter(run_dir / "adapter", values)
    check_adapter(run_dir / "sft" / "adapter", values)  # the SFT pass: DPO's reference
    assert [r["step"] for r in train_rows(run_dir / "sft")] == [1, 2]
    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all({"rewards/accuracies", "rewards/margins", "logps/chosen"} <= set(r) for r in rows)
    assert (run_dir / "checkpoint-2").is_dir()
    evaluated = json.loads((run_dir / "preference_eval.json").read_text())
    name = run_dir.name
    assert evaluated["states"] == {"qwen2": "base", f"{name}-sft": "reference", name: "policy"}
    assert all(m["pairs"] == 12 for m in evaluated["metrics"].values())
    table = json.loads((run_dir / "eval" / "results.json").read_text())["preference"]
    assert list(table) == ["qwen2", f"{name}-sft", name]
    generations = (run_dir / "preference_generations.md").read_text(encoding="utf-8")
    assert generations.count("\n## ") + generations.startswith("## ") >= values["eval_generations"]


def check_eval(result: Result, run_dir: Path, values: dict) -> None:
    assert "[model] fast_inference (vLLM) needs a CUDA GPU" in result.stdout
    out = run_dir / "eval" / "sft"
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["settings"]
    assert metrics["n"] == 60 and len(jsonl(out / "predictions.jsonl")) == 60  # limit 100 > 60 problems
    assert settings["load_in_4bit"] and settings["generation"] == "hf"
    assert settings["decoding"] == "sampled T=0.7 top_p=0.95 k=1" and settings["batch_size"] == 16
    assert settings["model"].endswith("sft/qwen2.5-3b/adapter")
    assert "sft" in json.loads((run_dir / "eval" / "results.json").read_text())["gsm8k"]


def check_lm(result: Result, run_dir: Path, values: dict) -> None:
    assert (run_dir / "model" / "model.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["policy"] == str(run_dir / "model") and metrics["n_train"] == 144
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    steps = steps_per_epoch(144, values)
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, steps + 1))
    assert (run_dir / f"checkpoint-{steps}").is_dir()  # save_strategy epoch


def check_reward_model(result: Result, run_dir: Path, values: dict) -> None:
    model = run_dir / "model"
    assert (model / "model.safetensors").is_file()
    assert json.loads((model / "text_preprocessing.json").read_text())["word_segmentation"] is True
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_train"] == 144 and metrics["n_eval"] == 36 and 0 <= metrics["f1_weighted"] <= 1
    steps = steps_per_epoch(144, values)
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, steps + 1))
    # eval and save per epoch, the best checkpoint chosen by metric_for_best_model.
    state = json.loads((run_dir / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{steps}")
    assert state["best_metric"] == pytest.approx(metrics["f1_weighted"])


def check_ppo(result: Result, run_dir: Path, values: dict) -> None:
    assert (run_dir / "model" / "model.safetensors").is_file()
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert (summary["updates"], summary["episodes"]) == (2, 128)
    assert summary["reward_model"].endswith("reward_model/phobert/model") and summary["reward_label"] == "negative"
    rows = [r for r in jsonl(run_dir / "metrics.jsonl") if "objective/scores" in r]
    assert len(rows) == 2 and all("objective/kl" in r for r in rows)
    samples = jsonl(run_dir / "samples.jsonl")
    assert {r["step"] for r in samples} == {1, 2} and len(samples) == 2 * values["sample_prompts"]
    assert "word segmentation on" in result.stdout  # the classifier's saved preprocessing was read


CHECKS: dict[str, Callable[[Result, Path, dict], None]] = {
    "sft": check_sft, "grpo": check_grpo, "dpo": check_dpo, "eval": check_eval, "lm": check_lm,
    "reward_model": check_reward_model, "ppo": check_ppo,
}


@pytest.mark.slow
@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_gpu_config_runs_on_the_cpu(config, runner):
    result = runner.result(config)
    assert result.returncode == 0, (f"{' '.join(result.argv)} exited {result.returncode}\n"
                                    f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-5000:]}")
    run_dir, values = result.run.dir, shipped(config)
    out = run_dir / "eval" / "sft" if recipe(config) == "eval" else run_dir
    assert (out / "config.yaml").is_file() and (out / "run_info.json").is_file()
    check_kept_keys(result, out)
    if values.get("report_to") == "tensorboard":
        assert list(run_dir.glob("runs/*/events.out.tfevents.*")), "no tensorboard event file"
    CHECKS[recipe(config)](result, run_dir, values)


# ------------------------------------------------------------------ the table itself (no runs)
def test_every_gpu_config_is_run_and_every_row_is_used():
    # The glob finds the GPU configs of every recipe, and none of the CPU ones.
    assert {recipe(c) for c in GPU_CONFIGS} == set(MODULES) and len(GPU_CONFIGS) >= 15
    assert not [c for c in GPU_CONFIGS if "tiny" in c or "demo" in c or "accelerate" in c]
    stated = {key for c in GPU_CONFIGS for key in shipped(c)}
    assert set(OVERRIDES) <= stated, f"rows for keys no GPU config states: {sorted(set(OVERRIDES) - stated)}"
    assert producers("configs/ppo/gpt2-vietnamese.yaml") == ["configs/lm/gpt2-vietnamese.yaml",
                                                              "configs/reward_model/phobert.yaml"]
    assert producers("configs/eval/published-100.yaml") == ["configs/sft/qwen2.5-3b.yaml"]


def test_bitsandbytes_8bit_adamw_steps_on_the_cpu():
    """Why `optim` is a KEEP row: the 8-bit optimizers the configs name work on a CPU (bitsandbytes
    0.50; paged ones fall back to unpaged memory). Unsloth's CPU backend swaps them all the same."""
    import bitsandbytes as bnb
    import torch

    for optimizer in (bnb.optim.AdamW8bit, bnb.optim.PagedAdamW8bit):
        weight = torch.nn.Parameter(torch.randn(64, 128))  # >= 4096 values: 8-bit optimizer state
        before = weight.detach().clone()
        step = optimizer([weight], lr=1e-3)
        weight.grad = torch.randn_like(weight)
        step.step()
        assert step.state[weight]["state1"].dtype == torch.uint8
        assert not torch.equal(weight.detach(), before)


def test_overrides_are_derived_from_the_table_and_the_config(tmp_path):
    run = Run("configs/grpo/qwen2.5-3b-vllm-server.yaml", tmp_path, tmp_path / "tiny")
    args = dict(zip(cpu_args(run)[::2], cpu_args(run)[1::2], strict=True))
    assert args == {"--dataset_name": FIXTURES["grpo"], "--model_name_or_path": str(tmp_path / "tiny" / "qwen2"),
                    "--use_vllm": "false", "--output_dir": str(run.dir), "--max_steps": "2",
                    "--max_completion_length": "64", "--save_steps": "2", "--logging_steps": "1"}
    ppo = Run("configs/ppo/gpt2-vietnamese.yaml", tmp_path, tmp_path / "tiny")
    args = dict(zip(cpu_args(ppo)[::2], cpu_args(ppo)[1::2], strict=True))
    assert args["--model_name_or_path"] == str(tmp_path / "lm" / "gpt2-vietnamese" / "model")
    assert args["--reward_model"] == str(tmp_path / "reward_model" / "phobert" / "model")
    assert args["--gradient_accumulation_steps"] == "4"  # a PPO-only row
    dpo = Run("configs/dpo/qwen2.5-3b.yaml", tmp_path, tmp_path / "tiny")
    assert "--gradient_accumulation_steps" not in cpu_args(dpo) and "--optim" not in cpu_args(dpo)


@pytest.mark.parametrize("config, key, message", [
    ("configs/grpo/qwen2.5-3b-vllm-server.yaml", "use_vllm", "use_vllm needs a CUDA GPU"),
    ("configs/dpo/qwen2.5-3b.yaml", "test_size", "a held-out split of 200 preference pairs needs more than the 48"),
    ("configs/ppo/gpt2-vietnamese.yaml", "gradient_accumulation_steps", "16 x 8 x 1 = 128 distinct prompts"),
])
def test_a_row_is_there_because_the_run_fails_without_it(config, key, message, tiny_models, tmp_path):
    """Without the row the run stops (before any model loads), with the recipe's one-line reason."""
    import importlib

    from core.cli import UserError

    run = Run(config, tmp_path, tiny_models)
    args = cpu_args(run)
    where = args.index(f"--{key}")
    del args[where:where + 2]
    if recipe(config) == "ppo":  # its producers' outputs do not exist here: the tiny models instead
        args[args.index("--model_name_or_path") + 1] = str(tiny_models / "gpt2")
        args[args.index("--reward_model") + 1] = str(tiny_models / "classifier")
    with pytest.raises(UserError, match=message):
        importlib.import_module(MODULES[recipe(config)]).main(["--config", str(ROOT / config), *args])


def test_a_gpu_only_key_the_table_does_not_know_breaks_the_run(tiny_models, tmp_path):
    """The overrides come from the table only: a config that gains `device: cuda` keeps it, and the
    CPU run fails with the recipe's reason - so the slow test above would fail too."""
    import recipes.grpo as grpo
    from core.cli import UserError

    config = tmp_path / "qwen2.5-0.5b-cuda.yaml"
    config.write_text((ROOT / "configs/grpo/qwen2.5-0.5b.yaml").read_text(encoding="utf-8") + "device: cuda\n",
                      encoding="utf-8")
    args = cpu_args(Run("configs/grpo/qwen2.5-0.5b.yaml", tmp_path, tiny_models))
    assert "--device" not in args
    with pytest.raises(UserError, match="device: cuda was requested but no CUDA GPU"):
        grpo.main(["--config", str(config), *args])
