"""vi_gsm8k evaluation: scoring tables, --score-only, the `make eval` entry point on tiny models
(base and LoRA adapter), pass@k/maj@k, and the training-time callback."""

import json
import os
import re

import pytest
from conftest import ROOT, recorded, run_entry

import core.boot  # noqa: F401  (Unsloth before transformers, as in every entry point)
from core.cli import UserError
from core.noise import noise_lines
from evaluate.gsm8k import (
    VietnameseTokenizer,
    aggregate,
    default_run_name,
    evaluate_model,
    reasoning_text,
    score_completion,
    score_file,
    score_problem,
    scored_path,
    text_metrics,
)

FIXTURE = str(ROOT / "data" / "fixtures" / "vi_gsm8k_sample.jsonl")
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# completion, gold, correct (flexible), correct_strict, formatted, pred
SCORING_CASES = [
    ("Số táo là: 12 + 7 = 19 (quả).\n#### 19", "19", True, True, True, "19"),
    ("Số táo là 19 quả.\nĐáp số: 19", "19", True, False, False, "19"),  # right, not in the #### format
    ("3 × 125.000 = 375.000\n#### 375.000 đồng", "375000", True, True, True, "375000"),  # "." groups thousands
    ("120 : 48 = 2,5 (giờ)\n#### 2,5", "2.5", True, True, True, "2.5"),  # "," is the decimal mark
    ("Nhiệt độ: 5 - 8 = -3\n#### -3", "-3", True, True, True, "-3"),
    ("Tổng là 1.250.000 đồng", "1250000", True, False, False, "1250000"),  # last number, no marker
    ("Lan còn 17 quả.\n#### 18", "17", False, False, True, "18"),  # formatted but wrong: #### wins
    # The readings differ here: flexible takes the last "####" anywhere (16), strict the last line
    # STARTING with "####" (17) - the same rules as the correctness / correctness_strict rewards.
    ("#### 17\nà không, #### 16", "17", False, True, True, "16"),
    ("#### 17\nà không, 16", "17", True, True, True, "17"),  # strict: the last line STARTING with ####
    ("#### mười bảy", "17", False, False, False, None),  # a number in words is not read
    ("", "17", False, False, False, None),
    ("12 + 5 = 17\n#### 17.0", "17", True, True, True, "17"),
]


@pytest.mark.parametrize("completion, gold, correct, strict, formatted, pred", SCORING_CASES)
def test_score_completion(completion, gold, correct, strict, formatted, pred):
    scores = score_completion(completion, gold)
    assert scores == {"pred": pred, "correct": correct, "correct_strict": strict, "formatted": formatted}


def test_non_numeric_gold_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="not a number"):
        score_completion("#### 5", "năm")


@pytest.mark.parametrize(
    "completion, reasoning",
    [
        ("12 + 7 = 19\n#### 19", "12 + 7 = 19"),
        ("12 + 7 = 19\n#### 19\nThêm lời thừa", "12 + 7 = 19"),  # everything after the answer line goes
        ("Bước 1: 12 + 7 = 19\nĐáp số: 19", "Bước 1: 12 + 7 = 19\nĐáp số: 19"),  # no answer line: all
        ("### Bước 1\n12 + 7 = 19\n### 19", "### Bước 1\n12 + 7 = 19"),  # a markdown heading stays
        ("#### 19", ""),
    ],
)
def test_reasoning_text(completion, reasoning):
    assert reasoning_text(completion) == reasoning


def test_rouge_tokenizer_keeps_vietnamese_letters():
    from rouge_score import rouge_scorer

    assert VietnameseTokenizer().tokenize("Số táo của Lan là 1.250, còn 3,5 kg!") == [
        "số", "táo", "của", "lan", "là", "1.250", "còn", "3,5", "kg"]
    # Decomposed input (NFD) reads as the same words.
    assert VietnameseTokenizer().tokenize("Số".encode().decode("utf-8")) == VietnameseTokenizer().tokenize(
        __import__("unicodedata").normalize("NFD", "Số"))
    # "táo" (apple) and "tạo" (create) differ only in a diacritic: rouge-score's default tokenizer
    # strips both to "t o" and calls them equal; ours does not.
    default = rouge_scorer.RougeScorer(["rouge1"]).score("Lan có táo", "Lan có tạo")["rouge1"].fmeasure
    assert default == 1.0
    ours = text_metrics(["Lan có tạo"], ["Lan có táo"])["rouge1"]
    assert ours == pytest.approx(2 / 3)


def test_text_metrics_bounds():
    ref = "Số quả táo Lan còn lại là: 25 - 8 = 17 (quả).\nVậy Lan còn lại 17 quả táo."
    same = text_metrics([ref], [ref])
    assert same["rouge1"] == pytest.approx(1.0) and same["rougeL"] == pytest.approx(1.0)
    assert same["sacrebleu"] == pytest.approx(100.0)
    unrelated = text_metrics(["Trời hôm nay đẹp"], [ref])
    assert unrelated["rouge1"] == 0.0 and unrelated["sacrebleu"] < 5


def test_pass_and_maj_at_2():
    rows = [
        score_problem({"answer": "5"}, ["#### 5", "#### 6"], [3, 4]),  # one of two right; tie -> first: right
        score_problem({"answer": "8"}, ["#### 7", "#### 7"], [3, 3]),  # both wrong
        score_problem({"answer": "2"}, ["Đáp số: 2", "#### 2"], [5, 3]),  # both right, one strictly
        score_problem({"answer": "9"}, ["#### 1", "#### 9"], [3, 3]),  # tie 1 vs 9: first (wrong) wins
    ]
    assert [r["maj_pred"] for r in rows] == ["5", "7", "2", "1"]
    assert [r["maj_correct"] for r in rows] == [True, False, True, False]
    m = aggregate(rows)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)
    assert m["accuracy_strict"] == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)
    assert m["format_rate"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert m["pass@2"] == pytest.approx(3 / 4)
    assert m["maj@2"] == pytest.approx(2 / 4)
    assert m["mean_completion_tokens"] == pytest.approx(27 / 8)
    assert "rouge1" not in m  # no reference explanations given
    assert "greedy_accuracy" not in m  # no greedy answers given


def test_greedy_beside_the_samples_is_scored_and_survives_rescoring(tmp_path):
    """also_greedy: the greedy answer is scored with the same checker, per problem and in the metrics,
    next to pass@k and maj@k - the sharpening a reader looks for."""
    rows = [
        score_problem({"answer": "5"}, ["#### 5", "#### 6"], [3, 4], greedy=("#### 6", 3)),  # greedy wrong, pass@2
        score_problem({"answer": "8"}, ["#### 7", "#### 7"], [3, 3], greedy=("8 rồi\n#### 8", 6)),  # greedy right only
        score_problem({"answer": "2"}, ["#### 2", "#### 2"], [3, 3], greedy=("Đáp số: 2", 4)),  # right, not strict
    ]
    assert [r["greedy_correct"] for r in rows] == [False, True, True]
    assert [r["greedy_pred"] for r in rows] == ["6", "8", "2"] and rows[1]["greedy_completion"] == "8 rồi\n#### 8"
    m = aggregate(rows)
    assert m["greedy_accuracy"] == pytest.approx(2 / 3) and m["greedy_accuracy_strict"] == pytest.approx(1 / 3)
    assert m["greedy_format_rate"] == pytest.approx(2 / 3) and m["greedy_mean_completion_tokens"] == pytest.approx(13 / 3)
    assert m["pass@2"] == pytest.approx(2 / 3) and m["maj@2"] == pytest.approx(2 / 3)  # a 5/6 tie: the first
    assert m["accuracy"] == pytest.approx((0.5 + 0 + 1) / 3)  # the samples' own accuracy is unchanged
    # --score-only re-reads the greedy completion and scores it again
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({**r, "greedy_correct": None}, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    rescored = aggregate(score_file(path)[0])
    assert rescored["greedy_accuracy"] == m["greedy_accuracy"] and rescored["maj@2"] == m["maj@2"]


@pytest.mark.parametrize("pairs, expected", [
    (None, {}),
    (["ood=data/x.jsonl"], {"ood": "data/x.jsonl"}),
    (["a=1.jsonl", "b-2=dir/2.jsonl"], {"a": "1.jsonl", "b-2": "dir/2.jsonl"}),
    (["data/x.jsonl"], "NAME=FILE"),  # no name
    (["../up=x.jsonl"], "NAME=FILE"),  # a name must not leave the run directory
    (["ood="], "NAME=FILE"),
    (["a=x.jsonl", "a=y.jsonl"], "twice"),
])
def test_parse_extra_datasets(pairs, expected):
    from evaluate.gsm8k import parse_extra_datasets

    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            parse_extra_datasets(pairs)
    else:
        assert parse_extra_datasets(pairs) == expected


@pytest.mark.parametrize(
    "model, name",
    [("runs/grpo/adapter", "grpo-adapter"), ("runs/sft/checkpoint-200/", "sft-checkpoint-200"),
     ("unsloth/Qwen2.5-3B-Instruct", "Qwen2.5-3B-Instruct"), ("runs/demo/merged", "demo-merged")],
)
def test_default_run_name(model, name):
    assert default_run_name(model) == name


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_eval_configs_parse(config):
    from core.config import ModelArguments, parse_args
    from evaluate.gsm8k import EvalArguments

    margs, eargs = parse_args([ModelArguments, EvalArguments], ["--config", str(config), "--model_name_or_path", "m"])
    assert eargs.max_new_tokens > 0 and eargs.results_dir


# ----------------------------------------------------------------------------- --score-only
def test_score_only_scores_good_lines_and_reports_bad_ones_by_line(tmp_path):
    good = {"question": "Lan có 25 quả táo...", "answer": "17", "explanation": "25 - 8 = 17 (quả).",
            "completion": "25 - 8 = 17 (quả).\n#### 17"}
    lines = [
        json.dumps(good, ensure_ascii=False),  # 1: right
        json.dumps({"answer": "1250000", "completion": "Đáp số: 1.250.000 đồng"}, ensure_ascii=False),  # 2: right
        json.dumps({"answer": 83, "completion": "45 + 38 = 84\n#### 84"}),  # 3: wrong (numeric gold ok)
        json.dumps({"answer": "5", "completion": ""}),  # 4: empty completion: wrong
        '{"answer": "5", "completion": "#### 5"',  # 5: malformed JSON
        json.dumps({"completion": "#### 5"}),  # 6: no answer
        json.dumps({"answer": "năm", "completion": "#### 5"}),  # 7: gold not a number
        "",  # blank lines are skipped
        json.dumps(["not", "an", "object"]),  # 9
        json.dumps({"answer": "4", "samples": [{"completion": "#### 4"}, {"completion": "#### 3"}]}),  # 10: k=2
    ]
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_entry(["python", "-X", "importtime", "-m", "evaluate.gsm8k", "--score-only", str(path)], env=ENV)
    # Fast path: no torch, no Unsloth, no transformers.
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "unsloth", "transformers", "datasets"}
    errors = [line for line in proc.stderr.splitlines() if line.startswith(str(path))]
    assert [e.split(":")[1] for e in errors] == ["5", "6", "7", "9"]
    assert "malformed JSON" in errors[0] and "'answer'" in errors[1] and "not a number" in errors[2]
    metrics = json.loads(proc.stdout)
    assert metrics["n"] == 5 and metrics["malformed_lines"] == 4
    # Per problem: 1, 1, 0, 0, and 0.5 for the two samples.
    assert metrics["accuracy"] == pytest.approx(2.5 / 5)
    assert metrics["format_rate"] == pytest.approx((1 + 0 + 1 + 0 + 1) / 5)
    scored = [json.loads(line) for line in scored_path(path).read_text(encoding="utf-8").splitlines()]
    assert scored_path(path).name == "preds.scored.jsonl"
    assert [r["correct"] for r in scored] == [True, True, False, False, True]
    assert [r["pred"] for r in scored] == ["17", "1250000", "84", None, "4"]
    assert scored[0]["question"] == good["question"]  # the other fields are kept
    assert scored[4]["samples"][1]["correct"] is False and scored[4]["maj_pred"] == "4"


def test_score_only_with_nothing_to_score_fails(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n", encoding="utf-8")
    proc = run_entry(["python", "-m", "evaluate.gsm8k", "--score-only", str(path)], check=False)
    assert proc.returncode == 2 and "no line" in proc.stderr
    proc = run_entry(["python", "-m", "evaluate.gsm8k", "--score-only", str(tmp_path / "missing.jsonl")], check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


# ---------------------------------------------------------------------- end to end (tiny models)
@pytest.fixture(scope="module")
def lora_adapter(tiny_models, tmp_path_factory):
    """A LoRA adapter on the tiny Qwen2 with random (non-zero) weights, so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lora") / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_models / "qwen2", dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_models / "qwen2").save_pretrained(out)
    return out


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_make_eval_base_then_lora_sampled_builds_the_comparison(tiny_models, lora_adapter, tmp_path):
    res = tmp_path / "eval"
    common = f"--dataset_name {FIXTURE} --limit 6 --seed 1 --max_new_tokens 16 --results_dir {res}"
    # 1. The user entry point, default (Unsloth) backend, greedy.
    proc = run_entry(["make", "eval", f"MODEL={tiny_models / 'qwen2'}", f"ARGS={common} --run_name base --dtype float32"],
                     env=ENV)
    assert "problems/s" in proc.stdout
    assert "[eval] Vietnamese: " in proc.stdout and "of the completions drift to another language" in proc.stdout
    assert not noise_lines(proc.stdout + proc.stderr), noise_lines(proc.stdout + proc.stderr)
    base_dir = res / "base"
    preds = _read_jsonl(base_dir / "predictions.jsonl")
    assert len(preds) == 6
    assert set(preds[0]) >= {"question", "answer", "explanation", "completion", "pred", "correct", "correct_strict",
                             "tokens"}
    metrics = json.loads((base_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n"] == 6 and metrics["settings"]["decoding"] == "greedy" and metrics["settings"]["seed"] == 1
    assert metrics["accuracy"] == pytest.approx(sum(p["correct"] for p in preds) / 6)
    assert recorded(metrics["problems_per_s"]) and recorded(metrics["elapsed_s"])
    assert {"rouge1", "rouge2", "rougeL", "sacrebleu", "format_rate", "accuracy_strict", "vi_word_share",
            "drift_rate", "cjk_rate"} <= set(metrics)
    assert all({"vi_share", "drift"} <= set(p) for p in preds)
    assert (base_dir / "config.yaml").is_file() and (base_dir / "run_info.json").is_file()
    assert not any(p.name.endswith(".tmp") for p in base_dir.iterdir())
    # The same seeded subset as the data module's --limit/--seed.
    from data.vi_gsm8k import load_vi_gsm8k

    assert [p["question"] for p in preds] == load_vi_gsm8k(FIXTURE, limit=6, seed=1)["question"]

    # 2. A LoRA adapter directory, plain HF backend, two samples per problem and a greedy answer,
    # on the test set and on a second one (loaded once).
    other = tmp_path / "other.jsonl"
    other.write_text("".join(open(FIXTURE, encoding="utf-8").readlines()[-3:]), encoding="utf-8")
    proc = run_entry(["python", "-m", "evaluate.gsm8k", "--model_name_or_path", str(lora_adapter), "--backend", "hf",
                      *common.split(), "--run_name", "lora", "--num_samples", "2", "--temperature", "1.0",
                      "--baseline", "lora", "--also_greedy", "true", "--extra_datasets", f"other={other}"], env=ENV)
    # Evaluation trains nothing and must not say it does.
    assert f"with the LoRA adapter {lora_adapter}" in proc.stdout and "continuing" not in proc.stdout
    lora = _read_jsonl(res / "lora" / "predictions.jsonl")
    assert [p["question"] for p in lora] == [p["question"] for p in preds]
    assert all(len(p["samples"]) == 2 and "maj_pred" in p for p in lora)
    lora_metrics = json.loads((res / "lora" / "metrics.json").read_text(encoding="utf-8"))
    assert lora_metrics["settings"]["decoding"] == "sampled T=1 top_p=0.95 k=2"
    assert lora_metrics["pass@2"] >= lora_metrics["accuracy"] and "maj@2" in lora_metrics
    assert lora_metrics["greedy_accuracy"] == pytest.approx(sum(p["greedy_correct"] for p in lora) / 6)
    assert all(p["greedy_correct"] == score_completion(p["greedy_completion"], p["answer"])["correct"] for p in lora)
    on_other = _read_jsonl(res / "lora" / "other" / "predictions.jsonl")
    assert [p["question"] for p in on_other] == [json.loads(line)["question"] for line in other.read_text().splitlines()]
    other_metrics = json.loads((res / "lora" / "other" / "metrics.json").read_text(encoding="utf-8"))
    assert other_metrics["n"] == 3 and "greedy_accuracy" in other_metrics and "pass@2" in other_metrics
    assert other_metrics["settings"]["dataset"] == str(other)
    # A question both sets hold gets the same greedy answer from both (greedy is deterministic).
    shared = {p["question"]: p["greedy_completion"] for p in lora}
    assert all(shared[p["question"]] == p["greedy_completion"] for p in on_other if p["question"] in shared)
    # The adapter was applied: its completions are not the base model's.
    assert [p["completion"] for p in lora] != [p["completion"] for p in preds]

    # 3. The comparison: both rows, the paired interval against the baseline the user named (not
    # the first run recorded), the dataset actually scored, the chart.
    md = (res / "comparison.md").read_text(encoding="utf-8")
    assert f"## gsm8k on {FIXTURE}" in md
    assert "| base | 6 |" in md and "| lora | 6 |" in md
    paired = md.split("Paired difference")[1]
    assert "vs **lora** (the baseline named with --baseline)" in paired and "| base | 6 |" in paired
    assert (res / "comparison.png").read_bytes().startswith(b"\x89PNG")

    # 4. Re-scoring the predictions without a model gives the same numbers.
    rescored = aggregate(score_file(res / "lora" / "predictions.jsonl")[0])
    for key in ("accuracy", "accuracy_strict", "format_rate", "pass@2", "maj@2", "rouge1", "sacrebleu", "vi_word_share",
                "drift_rate"):
        assert rescored[key] == pytest.approx(lora_metrics[key]), key

    # 5. An existing eval directory is never overwritten (checked before any model is loaded).
    before = (base_dir / "predictions.jsonl").read_bytes()
    with pytest.raises(UserError, match="--run_name NEW_NAME or --output_dir NEW_DIR"):
        evaluate_model(["--model_name_or_path", "no/such-model", *common.split(), "--run_name", "base"])
    assert (base_dir / "predictions.jsonl").read_bytes() == before
    with pytest.raises(UserError, match="--baseline sft: no such run"):  # a misspelt baseline, before any work
        evaluate_model(["--model_name_or_path", "no/such-model", *common.split(), "--run_name", "x", "--baseline", "sft"])


# ------------------------------------------------------------------ generation and training eval
def _load(path, backend="hf"):
    from core.config import ModelArguments
    from core.models import load_model_and_tokenizer

    margs = ModelArguments(model_name_or_path=str(path), dtype="float32", backend=backend, max_seq_length=512)
    return load_model_and_tokenizer(margs, for_training=False)


def test_generation_order_and_batching_do_not_change_greedy_outputs(lora_adapter):
    from data.vi_gsm8k import load_vi_gsm8k
    from evaluate.generation import DecodingSettings, generate

    model, tokenizer = _load(lora_adapter)
    prompts = list(load_vi_gsm8k(FIXTURE, limit=10, seed=0)["prompt"])
    one = generate(model, tokenizer, prompts, DecodingSettings(max_new_tokens=12, batch_size=1), progress=False)
    many = generate(model, tokenizer, prompts, DecodingSettings(max_new_tokens=12, batch_size=4), progress=False)
    # Longest-first batching with left padding maps every completion back to its own prompt.
    assert many.texts == one.texts and many.tokens == one.tokens
    assert len({t[0] for t in one.texts}) > 5  # outputs depend on the prompt
    single = generate(model, tokenizer, prompts[3:4], DecodingSettings(max_new_tokens=12), progress=False)
    assert single.texts[0] == one.texts[3]
    # Sampling is reproducible by seed and leaves the caller's RNG alone (it may be mid-training).
    import torch

    state = torch.random.get_rng_state()
    sampled = [generate(model, tokenizer, prompts[:3], DecodingSettings(max_new_tokens=8, num_samples=2, seed=5),
                        progress=False).texts for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sampled[0] == sampled[1] and sampled[0][0][0] != sampled[0][0][1]


def test_training_eval_callback_logs_and_restores_the_model(tiny_models, tmp_path):
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from core.runs import JsonlMetricsCallback
    from data.vi_gsm8k import load_vi_gsm8k
    from evaluate.gsm8k import TRAIN_EVAL_FILE, make_training_eval_callback

    model, tokenizer = _load(tiny_models / "qwen2")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    tokenizer.padding_side = "right"  # what an SFT collator might use; must survive the callback
    ids = tokenizer(["Lan có 12 quả táo. #### 12"] * 4)["input_ids"]
    train = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    held_out = load_vi_gsm8k(FIXTURE, split="test", limit=5, seed=0)

    seen = []

    class Probe(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            seen.append((model.training, tokenizer.padding_side))

    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=2, save_steps=1, logging_steps=1,
                             per_device_train_batch_size=2, report_to=[], use_cpu=True, save_only_model=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[JsonlMetricsCallback(str(out))])
    trainer.add_callback(make_training_eval_callback(held_out, tokenizer, out, limit=3, max_new_tokens=8,
                                                     batch_size=2, trainer=trainer))
    trainer.add_callback(Probe())
    trainer.train()

    assert seen == [(True, "right"), (True, "right")]  # train mode and padding side restored
    rows = _read_jsonl(out / TRAIN_EVAL_FILE)
    assert [r["step"] for r in rows] == [1, 2] and all(r["n"] == 3 for r in rows)
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 and "eval_format_rate" in r for r in rows)
    logged = [r for r in _read_jsonl(out / "metrics.jsonl") if "eval_accuracy" in r]
    assert [r["step"] for r in logged] == [1, 2]
    assert sum("eval_format_rate" in h for h in trainer.state.log_history) == 2
    assert os.path.isdir(out / "checkpoint-2")


def _tiny_lora_trainer(tiny_models, tmp_path, dev_limit):
    """A real Trainer on the tiny Qwen2 with LoRA, four one-line rows, up to 20 steps, and dev
    problems from the fixture: what the target-stop tests drive (their scores are scripted)."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from data.vi_gsm8k import load_vi_gsm8k

    model, tokenizer = _load(tiny_models / "qwen2")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = tokenizer(["Lan có 12 quả táo. #### 12"] * 4)["input_ids"]
    train = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    dev = load_vi_gsm8k(FIXTURE, split="test", limit=dev_limit, seed=0)
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=20, save_strategy="no", logging_steps=1,
                             per_device_train_batch_size=2, report_to=[], use_cpu=True)
    return model, tokenizer, Trainer(model=model, args=args, train_dataset=train), dev, out


def test_target_stop_callback_checks_every_n_steps_and_stops_when_reached(tiny_models, tmp_path, monkeypatch):
    """The SFT priming's stop-by-target: a check every 2 steps, training ends at the first check
    that reaches the target (the scores are scripted; the trainer, the steps and the file are real)."""
    import evaluate.gsm8k as gsm8k

    scripted = iter([0.25, 0.75, 0.95, 1.0])
    monkeypatch.setattr(gsm8k, "_score_now", lambda *a, **k: ({"n": 3, "accuracy": 0.1, "accuracy_strict": 0.1,
                                                              "format_rate": next(scripted),
                                                              "mean_completion_tokens": 9.0}, 0.5))
    _, tokenizer, trainer, dev, out = _tiny_lora_trainer(tiny_models, tmp_path, dev_limit=5)
    target = gsm8k.make_target_stop_callback(dev, tokenizer, out, metric="format_rate", target=0.9, every=2, limit=3)
    trainer.add_callback(target)
    trainer.train()

    assert trainer.state.global_step == 6 and target.reached_at == 6  # checks at 2, 4, 6: 0.25, 0.75, 0.95
    rows = _read_jsonl(out / gsm8k.TRAIN_EVAL_FILE)
    assert [(r["step"], r["target_format_rate"]) for r in rows] == [(2, 0.25), (4, 0.75), (6, 0.95)]


def test_target_stop_callback_stops_when_the_dev_score_stops_rising(tiny_models, tmp_path, monkeypatch, capsys):
    """The SFT baseline's plateau stop: no target value, patience 2: the run ends at the second check
    in a row that does not beat the best (ties do not count as a rise), and leaves the best check's
    weights."""
    import torch
    from transformers import TrainerCallback

    import evaluate.gsm8k as gsm8k

    scripted = iter([0.25, 0.5, 0.5, 0.75, 0.5, 0.75, 1.0])
    monkeypatch.setattr(gsm8k, "_score_now", lambda *a, **k: ({"n": 4, "accuracy": next(scripted),
                                                              "accuracy_strict": 0.1, "format_rate": 1.0,
                                                              "mean_completion_tokens": 9.0}, 0.5))
    model, tokenizer, trainer, dev, out = _tiny_lora_trainer(tiny_models, tmp_path, dev_limit=4)
    seen = {}  # the LoRA weights after each step, recorded before the stop callback runs

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    trainer.add_callback(Record())
    stop = gsm8k.make_target_stop_callback(dev, tokenizer, out, metric="accuracy", every=1, limit=4, patience=2)
    trainer.add_callback(stop)
    trainer.train()

    # 0.25, 0.5 (best), 0.5 (tie: 1), 0.75 (best), 0.5 (1), 0.75 (tie: 2) -> stop at step 6
    assert trainer.state.global_step == 6 and stop.plateau_at == 6 and stop.reached_at is None
    assert (stop.plateau.best, stop.plateau.best_step) == (0.75, 4)
    assert [r["target_accuracy"] for r in _read_jsonl(out / gsm8k.TRAIN_EVAL_FILE)] == [0.25, 0.5, 0.5, 0.75, 0.5, 0.75]
    # The model left is the best check's (step 4), not the stopping step's.
    assert stop.restored_step == 4
    final = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(final[n], w) for n, w in seen[4].items())
    assert any(not torch.equal(final[n], w) for n, w in seen[6].items())
    assert "[target] the weights of step 4 (the best check) are restored" in capsys.readouterr().out


@pytest.mark.parametrize("values, patience, min_delta, stops_at", [
    ([0.1, 0.2, 0.3, 0.4], 1, 0.0, None),  # always rising
    ([0.5, 0.5], 1, 0.0, 1),  # a tie is no rise
    ([0.5, 0.4, 0.6, 0.6, 0.6], 2, 0.0, 4),  # the count restarts at a new best
    ([0.50, 0.52, 0.52, 0.54], 2, 0.025, 2),  # 0.52 is no rise of more than min_delta over 0.50...
    ([0.50, 0.52, 0.56, 0.56, 0.57], 2, 0.025, 4),  # ...0.56 is; then 0.56 and 0.57 are not (best 0.56)
])
def test_plateau(values, patience, min_delta, stops_at):
    from evaluate.gsm8k import Plateau

    plateau = Plateau(patience, min_delta)
    flags = [plateau.update(v, step) for step, v in enumerate(values)]
    assert (flags.index(True) if True in flags else None) == stops_at


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "accuracy"}, "a target value, a plateau patience, or both"),
    ({"metric": "loss", "target": 0.9}, "target metric must be one of"),
    ({"metric": "format_rate", "target": 0.0}, "must lie in (0, 1]"),
    ({"metric": "accuracy", "target": 0.5, "every": 0}, "every N >= 1 steps"),
])
def test_target_stop_callback_refuses_bad_settings(kwargs, message):
    from data.vi_gsm8k import load_vi_gsm8k
    from evaluate.gsm8k import make_target_stop_callback

    dev = load_vi_gsm8k(FIXTURE, split="test", limit=2, seed=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        make_target_stop_callback(dev, None, "unused", **kwargs)
