"""bench/grpo_prefix.py (`make bench-grpo`): the two arms take turns, sample the same completions,
and the report holds what the issue asks for. On the tiny model (plumbing; the embedded model's
numbers are in bench/results/grpo_shared_prefix.json)."""

import json

from bench.grpo_prefix import DEFAULT_SHAPES, SHAPES, summarize
from tests.conftest import run_entry


def test_default_shapes_cover_demo_gsm_and_a_g_sweep():
    assert any("demo" in name for name in DEFAULT_SHAPES) and any("gsm" in name for name in DEFAULT_SHAPES)
    demo, gsm = SHAPES["demo"], SHAPES["gsm"]
    assert (demo.generations, demo.completion, gsm.completion) == (8, 32, 250)
    sweep = [SHAPES[n] for n in DEFAULT_SHAPES if n.startswith("demo_1prompt")]
    assert [s.generations for s in sweep] == [4, 8, 16] and {s.prompts_per_step for s in sweep} == {1}


def test_ratios_are_per_pair_medians():
    def step(seconds, generation, loss, cpu, tokens):
        return {"time/step": seconds, "time/generation": generation, "time/forward_backward": loss, "cpu_s": cpu,
                "num_tokens": tokens, "peak_rss_gb": 2.0, "rss_start_gb": 1.5}

    records = {"stock": [step(9, 4, 5, 9, 100), step(10, 4, 6, 10, 200), step(30, 10, 20, 12, 300)],
               "ours": [step(5, 2, 3, 5, 100), step(4, 2, 2, 4, 200), step(5, 3, 2, 6, 300)]}
    out = summarize(records, warmup=1)
    # Pairs after the warm-up: 4/10 and 5/30 -> median of (0.4, 0.167); a noisy stock step (30 s)
    # moves one pair only.
    assert out["pair_step_ratios"] == [0.4, 0.167] and out["step_time_ratio"] == round((0.4 + 5 / 30) / 2, 3)
    assert out["stock"]["tokens_per_s"] == 6.7  # 100 tokens per step (cumulative counter) in 10 s and 30 s
    assert out["stock"]["step_rss_gb"] == 0.5


def test_bench_grpo_on_the_tiny_model(tiny_models, tmp_path):
    proc = run_entry(["python", "-m", "bench.grpo_prefix", "--model_name_or_path", str(tiny_models / "qwen2"),
                      "--shapes", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1", "--out", str(tmp_path)],
                     env={"OMP_NUM_THREADS": "1"}, timeout=300)
    report = json.loads((tmp_path / "grpo_shared_prefix.json").read_text())
    tiny = report["shapes"]["tiny"]
    assert tiny["same_completions_first_step"] is True  # same seed, same numbers: the same samples
    assert 0 <= tiny["max_abs_logprob_diff"] < 1e-4
    assert tiny["shared"]["loss"] and tiny["shared"]["generation"]
    for arm in ("stock", "ours"):
        assert len(tiny[arm]["steps"]) == 3 and tiny[arm]["peak_rss_gb"] > 0 and tiny[arm]["tokens_per_s"] > 0
        assert tiny[arm]["step_s"] >= tiny[arm]["generation_s"] > 0
    assert tiny["step_time_ratio"] > 0 and len(tiny["pair_step_ratios"]) == 2
    assert {"cpu", "flags", "threads", "load_1min_start", "load_1min_end"} <= set(report["machine"])
    assert report["precision"] == "float32"
    table = (tmp_path / "grpo_shared_prefix.md").read_text()
    assert table.startswith("| shape |") and "| tiny |" in table and "threads, float32" in table
    assert "[bench] tiny: stock" in proc.stdout
