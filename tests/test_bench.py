"""bench/: the Unsloth-vs-HF benchmark runs the real recipes on the tiny shape (CPU) and writes a JSON
and a Markdown report that hold numbers; the summary arithmetic; the Qwen2.5 shapes."""

import json

import pytest

from bench.models import QWEN25_SHAPES
from bench.run import ratios, summarize
from tests.conftest import recorded, run_entry

THREADS = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The random tiny-shape model, built once for the module."""
    return tmp_path_factory.mktemp("bench-work")


def run_bench(tmp_path, work, *args):
    out = tmp_path / "results"
    proc = run_entry(["python", "-m", "bench.run", "--shapes", "tiny", "--steps", "2", "--warmup", "1",
                      "--out", str(out), "--logs", str(tmp_path / "logs"), "--work-dir", str(work), *args],
                     env=THREADS)
    (report_json,) = out.glob("*.json")
    (report_md,) = out.glob("*.md")
    assert report_json.stem == report_md.stem and "-cpu-" in report_json.stem
    return proc, {**json.loads(report_json.read_text()), "__stem": report_json.stem}, report_md.read_text()


def check_numbers(report, recipes):
    assert [(r["recipe"], r["backend"]) for r in report["results"]] == \
        [(recipe, backend) for recipe in recipes for backend in ("unsloth", "hf")]
    for r in report["results"]:
        assert r["status"] == "ok", r
        assert r["steps_measured"] == 1
        assert recorded(r["step_seconds"]) and recorded(r["tokens_per_second"]) and r["tokens_per_step"] > 0
        # Each backend ran in its own process; the hf one never imported Unsloth.
        assert r["unsloth_imported"] == (r["backend"] == "unsloth")
    assert [(r["shape"], r["recipe"]) for r in report["ratios"]] == [("tiny", recipe) for recipe in recipes]
    for r in report["ratios"]:
        assert recorded(r["step_seconds"]) and recorded(r["tokens_per_second"])
    assert report["versions"]["trl"] == "1.12.0" and report["device"].startswith("CPU")


@pytest.mark.slow
def test_bench_both_recipes_tiny_on_cpu(tmp_path, work):
    """Both recipes on both backends (slow: four real runs; CI runs it)."""
    proc, report, markdown = run_bench(tmp_path, work)
    check_numbers(report, ["grpo", "dpo"])
    for recipe in ("grpo", "dpo"):
        assert f"| tiny | 0.3M | {recipe} | unsloth |" in markdown and f"| tiny | 0.3M | {recipe} | hf |" in markdown
        assert f"[bench] tiny {recipe} hf: ok" in proc.stdout
    assert "Every hf run ran without importing Unsloth" in markdown
    # Per-run logs and metrics are kept in --logs; adapters stay in the work directory.
    kept = {p.name for p in (tmp_path / "logs").rglob("*") if p.is_file()}
    assert kept == {"log.txt", "metrics.jsonl", "run_info.json"}
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [report["__stem"] + ".json",
                                                                          report["__stem"] + ".md"]


def test_a_failed_run_is_reported_not_fatal(tmp_path, work):
    """A run that fails (here: a recipe that does not exist) is recorded with its error, the others go on,
    and the report is still written; the exit code says something failed."""
    out = tmp_path / "results"
    proc = run_entry(["python", "-m", "bench.run", "--shapes", "tiny", "--steps", "2", "--recipes", "nope",
                      "--out", str(out), "--logs", str(tmp_path / "logs"), "--work-dir", str(work)],
                     env=THREADS, check=False)
    assert proc.returncode == 1
    (report_json,) = out.glob("*.json")
    entries = json.loads(report_json.read_text())["results"]
    assert [e["backend"] for e in entries] == ["unsloth", "hf"]
    for entry in entries:
        assert entry["status"] == "failed (exit 1)" and "No module named recipes.nope" in entry["error"]
    assert "failed (exit 1): " in next(out.glob("*.md")).read_text()


@pytest.mark.parametrize("rows, warmup, expected", [
    # num_tokens is cumulative: per-step tokens are its differences; the warm-up step is dropped.
    ([{"step_seconds": 9.0, "num_tokens": 100.0}, {"step_seconds": 1.0, "num_tokens": 300.0},
      {"step_seconds": 2.0, "num_tokens": 700.0}], 1,
     {"steps_measured": 2, "step_seconds": 1.5, "tokens_per_step": 300.0, "tokens_per_second": 200.0}),
    # Peak memory is the maximum over the whole run, warm-up included (model load happens there).
    ([{"step_seconds": 1.0, "num_tokens": 10.0, "peak_memory_gb": 5.0, "peak_reserved_gb": 6.0},
      {"step_seconds": 1.0, "num_tokens": 20.0, "peak_memory_gb": 4.0, "peak_reserved_gb": 6.5}], 1,
     {"steps_measured": 1, "step_seconds": 1.0, "tokens_per_second": 10.0, "peak_memory_gb": 5.0,
      "peak_reserved_gb": 6.5}),
    ([{"step_seconds": 1.0}], 1, {"steps_measured": 0}),
])
def test_summarize(rows, warmup, expected):
    summary = summarize(rows, warmup)
    for key, value in expected.items():
        assert summary[key] == value, key


def test_ratios_are_unsloth_over_hf_and_need_both_runs():
    results = [
        {"shape": "0.5b", "recipe": "grpo", "backend": "unsloth", "status": "ok", "step_seconds": 2.0,
         "tokens_per_second": 300.0, "peak_memory_gb": 3.0, "peak_reserved_gb": 4.0},
        {"shape": "0.5b", "recipe": "grpo", "backend": "hf", "status": "ok", "step_seconds": 4.0,
         "tokens_per_second": 150.0, "peak_memory_gb": 6.0, "peak_reserved_gb": None},
        {"shape": "0.5b", "recipe": "dpo", "backend": "unsloth", "status": "ok", "step_seconds": 1.0},
        {"shape": "0.5b", "recipe": "dpo", "backend": "hf", "status": "timeout (300 s)"},
    ]
    assert ratios(results) == [{"shape": "0.5b", "recipe": "grpo", "step_seconds": 0.5, "tokens_per_second": 2.0,
                                "peak_memory_gb": 0.5, "peak_reserved_gb": None}]


@pytest.mark.parametrize("shape, billions", [("0.5b", 0.494), ("1.5b", 1.544), ("3b", 3.086)])
def test_qwen25_shapes_have_the_published_sizes(shape, billions):
    """Parameter counts of Qwen2.5-0.5B/1.5B/3B (tied embeddings), counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from bench.models import COMMON

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_SHAPES[shape], **COMMON))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.001)
