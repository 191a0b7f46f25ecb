"""The Colab/Kaggle notebooks: committed without outputs, and each one run top to bottom.

Each notebook is executed by papermill exactly as a user would run it headless (`papermill
notebooks/grpo.ipynb out.ipynb -p GRPO_STEPS 60`): its `parameters` cell is overridden with the
tiny configs and random models, so every cell - install, the `make` targets, the curves, the
comparison table, the example answers, the chat - runs on a CPU in about a minute. A failing
command fails its cell (the notebooks' `sh` raises) and papermill fails the test.

What this cannot show: anything about a GPU. The T4 timings and the install steps that only run
on a GPU machine (the `vllm` extra, the CUDA 12.8 torch fallback, the chat page through Colab's
port forwarding) are not executed here.
"""

import ast
import json
import re
import subprocess
import sys
import time

import nbformat
import pytest

from tests.conftest import ROOT, child_env, run_entry

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]

# The parameters CI injects: tiny configs and the offline random models (make tiny-models).
TINY = {
    "grpo": {"MODEL": "runs/tiny/qwen2", "SFT_CONFIG": "configs/sft/tiny.yaml",
             "GRPO_CONFIG": "configs/grpo/tiny.yaml", "EVAL_CONFIG": "configs/eval/tiny.yaml",
             "SFT_STEPS": 2, "GRPO_STEPS": 2, "EVAL_LIMIT": 4, "CHAT_MAX_NEW_TOKENS": 8, "CHAT_PAGE": False},
    "dpo": {"MODEL": "runs/tiny/qwen2", "DPO_CONFIG": "configs/dpo/tiny.yaml", "SFT_FIRST_STEPS": 1,
            "DPO_STEPS": 2, "CHAT_PAGE": False},
    "ppo": {"REWARD_BASE": "runs/tiny/classifier", "LM_BASE": "runs/tiny/gpt2",
            "REWARD_MODEL_CONFIG": "configs/reward_model/tiny.yaml", "LM_CONFIG": "configs/lm/tiny.yaml",
            "PPO_CONFIG": "configs/ppo/tiny.yaml", "REWARD_MODEL_EPOCHS": 1, "LM_EPOCHS": 1,
            "PPO_EPISODES": 16, "EVAL_PROMPTS": 2},
}
# What each notebook's table must hold after the tiny run: its task and its rows.
TABLE_ROWS = {"grpo": ("## gsm8k", ["base", "sft", "grpo"]),
              "dpo": ("## preference", ["dpo"]),
              "ppo": ("## sentiment", ["ppo-before", "ppo-after"])}
# Training code belongs to the recipes, which run in .venv through `make`; the notebook's own Python
# (Colab's, not .venv's) imports none of the stack or the project's packages.
FORBIDDEN_IMPORTS = {"trl", "unsloth", "peft", "transformers", "torch", "datasets", "accelerate", "vllm",
                     "recipes", "rewards", "data", "evaluate", "deploy", "bench"}


def read(path):
    return nbformat.read(str(path), as_version=4)


def parameters(nb) -> dict:
    """The literal assignments of a notebook's `parameters` cell."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_there_is_a_notebook_per_method():
    assert NAMES == ["dpo", "grpo", "ppo"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_committed_notebook_is_valid_and_has_no_outputs(path):
    nb = read(path)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_one_parameters_cell_first_and_only_literals(path):
    nb = read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell, and only it, must be tagged 'parameters'"
    values = parameters(nb)
    assert set(TINY[path.stem]) <= set(values), "CI injects a parameter the notebook does not have"
    assert "OWNER" in values["REPO_URL"], "the repository address is a marked placeholder until the project has one"
    for name, value in values.items():
        if name.endswith("_CONFIG"):
            assert (ROOT / value).is_file(), f"{path.name}: {name} = {value} does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_drives_make_targets_and_holds_no_training_code(path):
    cells = [c.source for c in read(path).cells if c.cell_type == "code"]
    for source in cells:
        for node in ast.walk(ast.parse(source)):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [m for m in modules if m.split(".")[0] in FORBIDDEN_IMPORTS]
            assert not bad, f"{path.name} imports {bad} in the notebook's kernel: run it through a make target"
    source = "\n".join(cells)
    targets = set(re.findall(r'run_stage\("([a-z-]+)"', source)) | set(re.findall(r"make ([a-z-]+)", source))
    makefile = (ROOT / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{path.name}: no make target {target!r}"


def test_sh_fails_the_cell_when_the_command_fails(capsys):
    """The helper every notebook uses instead of IPython's `!` (which ignores exit codes)."""
    for path in NOTEBOOKS:
        setup = next(c.source for c in read(path).cells if "def sh(cmd)" in c.source)
        helpers = setup.split("\nif not Path")[0]  # the definitions, not the clone / chdir
        scope = {"EXTRA_ARGS": ""}
        exec(helpers, scope)  # noqa: S102 - the notebook's own cell
        scope["sh"]("echo streamed")
        assert "streamed" in capsys.readouterr().out
        with pytest.raises(RuntimeError, match="exit status 3"):
            scope["sh"]("exit 3")


def test_readme_links_every_notebook_to_colab():
    readme = (ROOT / "README.md").read_text()
    for name in NAMES:
        link = f"https://colab.research.google.com/github/OWNER/vi-rl/blob/main/notebooks/{name}.ipynb"
        assert link in readme, f"README lacks the Colab link of {name}.ipynb"


def outputs_of(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """All three notebooks run by papermill's command line, side by side: most of each run is one
    process importing torch/transformers/TRL after another, on one core, so two cores run three
    notebooks in little more than the time of the longest. Returns name -> (process, output
    notebook, runs folder, seconds)."""
    tmp = tmp_path_factory.mktemp("notebooks")
    env = child_env()  # the notebooks' tiny configs on the CPU, GPU or not
    # The tiny models first, once: three notebooks building them at the same moment would race.
    run_entry(["make", "-s", "tiny-models"])
    started, procs = time.monotonic(), {}
    for name in NAMES:
        params = dict(TINY[name], RUN_ROOT=str(tmp / name / "runs"))
        args = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{name}.ipynb"),
                str(tmp / f"{name}.out.ipynb"), "--cwd", str(ROOT), "--kernel", "python3", "--no-progress-bar",
                "--execution-timeout", "900"]
        for key, value in params.items():
            args += ["-r" if isinstance(value, str) else "-p", key, str(value)]
        log = open(tmp / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    results = {}
    for name, (proc, log) in procs.items():
        proc.wait(timeout=1800)
        log.close()
        results[name] = (proc.returncode, (tmp / f"{name}.log").read_text(), tmp / f"{name}.out.ipynb",
                         tmp / name / "runs", time.monotonic() - started)
    print("notebooks ran in " + ", ".join(f"{n} {r[4]:.0f} s" for n, r in results.items()))
    return results


@pytest.mark.slow  # three notebooks, ~2.5 min on 2 cores: `make test-slow` (CI) runs them
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_on_tiny_models(name, executed):
    code, log, out, runs, _ = executed[name]
    assert code == 0, f"{name}.ipynb failed (papermill's report, with the failing cell):\n{log[-6000:]}"
    outputs = outputs_of(read(out))
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]

    assert "[precision]" in text  # the machine check ran in .venv
    task, rows = TABLE_ROWS[name]
    assert task in markdown, f"{name}: no comparison table shown"
    for row in rows:
        assert re.search(rf"^\| {re.escape(row)} \|", markdown, re.M), f"{name}: no row {row!r} in the table"
    assert len(images) >= 2, f"{name}: the curves and the comparison chart should show ({len(images)} images)"
    if name == "grpo":
        assert "[chat] assistant:" in text and "[chat] extracted answer:" in text
        assert text.count("(read: ") == 9  # 3 problems x the base, SFT and GRPO answers
    if name == "dpo":
        assert "# Generations, side by side" in markdown
    if name == "ppo":
        assert "before (" in text and "after  (" in text
    # The run folders a user finds afterwards, each training run with its curves or its model.
    trained = {"grpo": ["sft", "grpo"], "dpo": ["dpo"], "ppo": ["reward_model", "lm", "ppo"]}[name]
    for run in trained:
        assert (runs / run / "config.yaml").is_file()
    # The table shown came from the results file a user keeps: every run recorded there under the
    # task is a row of the table, the expected ones among them.
    results = json.loads((runs / "eval" / "results.json").read_text())[task.removeprefix("## ")]
    assert set(rows) <= set(results), results
    for run in results:
        assert re.search(rf"^\| {re.escape(run)} \|", markdown, re.M), f"{name}: {run!r} recorded but not shown"
