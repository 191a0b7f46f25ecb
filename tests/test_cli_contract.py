"""One command-line contract for every entry point: no silent prefix matching, "did you mean" for
misspelt flags as for YAML keys, renamed options still working with a notice."""

from dataclasses import dataclass

import pytest

import core.boot  # noqa: F401
from core.cli import UserError
from core.config import parse_args
from tests.conftest import run_entry


@dataclass
class Toy:
    dataset_name: str = "hllj/vi_gsm8k"
    dataset_split: str = "test"
    max_steps: int = 1
    learning_rate: float = 1e-4


@pytest.mark.parametrize("argv,message", [
    (["--lerning_rate", "1e-3"], "--lerning_rate (did you mean --learning_rate?)"),
    (["--max_step", "2"], "--max_step (did you mean --max_steps?)"),  # not taken as --max_steps
    (["--max_steps=2", "--bogus"], "unknown command-line option(s): --bogus"),
])
def test_unknown_flags_fail_with_the_closest_name(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_args([Toy], argv)


def test_renamed_options_still_work_on_the_command_line_and_in_yaml(tmp_path, capsys):
    (args,) = parse_args([Toy], ["--dataset", "mine.jsonl", "--split=train"])
    assert (args.dataset_name, args.dataset_split) == ("mine.jsonl", "train")
    out = capsys.readouterr().out
    assert "--dataset is now --dataset_name" in out and "--split is now --dataset_split" in out
    config = tmp_path / "c.yaml"
    config.write_text("dataset: from-yaml.jsonl\nmax_steps: 3\n")
    (args,) = parse_args([Toy], ["--config", str(config), "--max_steps", "5"])
    assert (args.dataset_name, args.max_steps) == ("from-yaml.jsonl", 5)  # the command line wins
    assert "'dataset:' in the config is now 'dataset_name:'" in capsys.readouterr().out


def test_a_recipe_refuses_an_abbreviated_flag_in_one_line(tmp_path):
    proc = run_entry(["python", "-m", "recipes.sft", "--config", "configs/sft/tiny.yaml", "--backend", "hf",
                      "--output_dir", str(tmp_path / "x"), "--max_step", "2"], check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == ["error: unknown command-line option(s): --max_step "
                                                "(did you mean --max_steps?) 2"]
    assert not (tmp_path / "x").exists()


def test_commands_without_a_yaml_config_follow_the_same_contract(capsys):
    """The argparse-based commands (deploy, plots, data reports, the demo) use core.cli.ArgumentParser."""
    from core.cli import ArgumentParser

    parser = ArgumentParser(prog="x")
    parser.add_argument("--model_name_or_path", dest="model")
    parser.add_argument("--max_new_tokens", type=int, default=1)
    args = parser.parse_args(["--model", "runs/a/adapter"])  # the old name of make chat/export/serve
    assert args.model == "runs/a/adapter" and "--model is now --model_name_or_path" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--max_new_token", "5"])  # not abbreviated
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max_new_token (did you mean --max_new_tokens?)" in err
