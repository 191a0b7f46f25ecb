"""The `vllm` extra installs a consistent set, checked offline.

tests/vllm_extra_metadata.json holds the Requires-Dist lines of vLLM 0.33.0 and vllm-bnb-plugin
0.0.3 from PyPI's wheel metadata (where and how it was fetched is in the file). Here every package
that pyproject.toml's dependencies + the vllm extra, the installed stack they pull in (one level of
each dependency's own Requires-Dist) and that metadata all constrain must have one version that
satisfies them all - the question pip's resolver answers online.
"""

import json
from importlib import metadata

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python >= 3.11's tomllib (the vllm extra's Python)")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SNAPSHOT = json.loads((ROOT / "tests" / "vllm_extra_metadata.json").read_text(encoding="utf-8"))["packages"]
# Where vLLM installs: its wheels are Linux-only; Python 3.11 (the lowest vLLM 0.33 takes).
LINUX = {"python_version": "3.11", "python_full_version": "3.11.9", "sys_platform": "linux",
         "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}


def applies(requirement: Requirement, env: dict[str, str]) -> bool:
    """A requirement that installs in `env` (lines for other extras never do)."""
    if requirement.marker is None:
        return True
    return "extra" not in str(requirement.marker) and requirement.marker.evaluate(env)


def constraints(sources: dict[str, list[str]], env=LINUX) -> dict[str, list[tuple[SpecifierSet, str]]]:
    """Package name -> every (specifier, who asks) among the sources' requirement lines."""
    found: dict[str, list[tuple[SpecifierSet, str]]] = {}
    for who, lines in sources.items():
        for line in lines:
            requirement = Requirement(line)
            if applies(requirement, env):
                found.setdefault(canonicalize_name(requirement.name), []).append((requirement.specifier, who))
    return found


def conflicts(found: dict[str, list[tuple[SpecifierSet, str]]]) -> dict[str, list[str]]:
    """The packages no single version satisfies. The candidates are the versions the specifiers
    name and the installed one: when some version satisfies an AND of ranges, one of their bounds
    (or a version beside it, such as the installed one) does."""
    bad = {}
    for name, specs in found.items():
        candidates = set()
        for spec, _ in specs:
            for clause in spec:
                try:
                    candidates.add(Version(clause.version.rstrip(".*")))
                except InvalidVersion:
                    continue
        try:
            candidates.add(Version(metadata.version(name)))
        except metadata.PackageNotFoundError:
            pass
        if not any(all(spec.contains(v, prereleases=True) for spec, _ in specs) for v in candidates):
            bad[name] = [f"{who}: {spec or 'any'}" for spec, who in specs]
    return bad


def installed_requirements(names: list[str]) -> dict[str, list[str]]:
    """The installed distributions' own Requires-Dist, one level down."""
    return {name: metadata.requires(name) or [] for name in names}


def the_set(*extras: str) -> dict[str, list[str]]:
    """pyproject's dependencies and the named extras, what the installed dependencies require,
    and vLLM's and the plugin's metadata."""
    lines = list(PYPROJECT["dependencies"])
    for extra in extras:
        lines += PYPROJECT["optional-dependencies"][extra]
    names = [Requirement(x).name for x in lines if applies(Requirement(x), LINUX)]
    stack = installed_requirements([n for n in names if canonicalize_name(n) not in SNAPSHOT])
    return {"pyproject.toml": lines, **stack, **{n: p["requires_dist"] for n, p in SNAPSHOT.items()}}


def test_the_extra_pins_the_packages_the_snapshot_describes():
    pins = {canonicalize_name(r.name): str(r.specifier) for r in map(Requirement, PYPROJECT["optional-dependencies"]["vllm"])}
    assert pins["vllm"] == f"=={SNAPSHOT['vllm']['version']}"
    assert pins["vllm-bnb-plugin"] == f"=={SNAPSHOT['vllm-bnb-plugin']['version']}"  # 4-bit loading (vLLM >= 0.28)
    torch_pin = next(r for r in map(Requirement, SNAPSHOT["vllm"]["requires_dist"]) if r.name == "torch")
    assert pins["torch"] == str(torch_pin.specifier)  # said in the extra, not discovered on install


@pytest.mark.parametrize("python, installs", [("3.10", False), ("3.11", True), ("3.12", True), ("3.14", True)])
def test_the_extra_installs_where_vllm_does(python, installs):
    """The markers and vLLM's Requires-Python agree: on 3.10 the extra installs nothing (a run
    asking for vLLM says the extra needs Python >= 3.11) instead of failing to resolve."""
    env = {**LINUX, "python_version": python, "python_full_version": python + ".0"}
    for line in PYPROJECT["optional-dependencies"]["vllm"]:
        assert applies(Requirement(line), env) is installs, line
    assert SpecifierSet(SNAPSHOT["vllm"]["requires_python"]).contains(python + ".0") is installs
    assert not Marker("sys_platform == 'linux'").evaluate({**env, "sys_platform": "darwin"})


def test_the_base_install_and_the_vllm_extra_are_one_consistent_set():
    found = constraints(the_set("vllm"))
    assert {spec for spec, _ in found["torch"]} >= {SpecifierSet("==2.14.0")}
    assert not conflicts(found), conflicts(found)


def test_the_chat_page_cannot_share_the_set_which_is_why_it_is_an_extra():
    """The check can fail: gradio (the chat extra) holds pillow below 13, vLLM needs 13. If gradio
    lifts its cap, this fails, and gradio can return to the base install."""
    assert not any(Requirement(x).name == "gradio" for x in PYPROJECT["dependencies"])
    found = constraints(the_set("vllm", "chat"))
    assert set(conflicts(found)) == {"pillow"}


def test_the_chat_page_without_gradio_names_its_extra_before_loading(monkeypatch):
    """An environment holding the vllm extra may lack gradio: the page says which extra, in one
    line, before minutes of model loading (`--ask` needs no gradio)."""
    import importlib.util

    from core.cli import UserError
    from deploy import chat

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    monkeypatch.setattr(chat, "load_chat_model", lambda args: pytest.fail("loaded a model first"))
    with pytest.raises(UserError, match=r"the chat page needs gradio: pip install -e '\.\[chat\]'"):
        chat.main(["--model_name_or_path", "embedded"])
