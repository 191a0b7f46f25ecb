"""Imports point one way: core/ (the shared layer) <- data/, rewards/ <- evaluate/ <- recipes/, deploy/.

Read from the source (every import, also those inside functions), so the rule stays true."""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# package -> the project packages it must never import
FORBIDDEN = {
    "core": {"recipes", "evaluate", "deploy", "data", "rewards", "bench"},
    "data": {"recipes", "evaluate", "deploy", "bench"},
    "rewards": {"recipes", "evaluate", "deploy", "bench"},
    "evaluate": {"recipes", "deploy", "bench"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level package of every module `path` imports, with the line."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((ROOT / package).glob("*.py"))
             for name, line in sorted(imported_packages(path)) if name in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from recipes.common import run_cli\n    import evaluate.gsm8k\n")
    assert {name for name, _ in imported_packages(module)} == {"recipes", "evaluate"}


def test_shared_layer_files_stay_small():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "core").glob("*.py")}
    assert max(sizes.values()) <= 320, sizes
