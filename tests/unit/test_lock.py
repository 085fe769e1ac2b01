"""requirements/lock.txt against pyproject.toml, the environment the tests run in, what the code imports, and
the commands that install it (Makefile, docker/*.Dockerfile)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "lock.txt"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

_spec = importlib.util.spec_from_file_location("modelops_lock", REPO / "requirements" / "lock.py")
assert _spec and _spec.loader
lockgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockgen)


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        text = line.split("#")[0].strip()
        if not text:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;]+)", text)
        assert match, f"lock.txt:{number}: not an exact `name==version` pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"lock.txt:{number}: {name} pinned twice"
        found[name] = match[2]
    return found


def stated() -> dict[str, list[Requirement]]:
    """pyproject's requirements by where they are stated: dependencies, each extra, the build system."""
    groups = {"dependencies": PROJECT.get("dependencies", [])}
    groups |= {f"extra {k}": v for k, v in PROJECT.get("optional-dependencies", {}).items()}
    groups["build-system"] = PYPROJECT["build-system"]["requires"]
    return {where: [Requirement(r) for r in reqs] for where, reqs in groups.items()}


def installed() -> lockgen.Metadata:
    return {canonicalize_name(d.metadata["Name"]): (d.version, d.requires or [])
            for d in importlib.metadata.distributions()}


def test_every_stated_dependency_is_pinned_within_its_specifier() -> None:
    locked = pins()
    problems = []
    for where, reqs in stated().items():
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name not in locked:
                problems.append(f"{req} ({where}) is not pinned in requirements/lock.txt")
            elif not req.specifier.contains(locked[name], prereleases=True):
                problems.append(f"{req} ({where}) but the lock pins {name}=={locked[name]}")
    assert not problems, "pyproject.toml and the lock disagree (`make lock`):\n" + "\n".join(problems)


def test_the_lock_is_exactly_the_closure_of_pyproject() -> None:
    """Nothing missing (every requirement of every pinned distribution, with the extras asked of it, is pinned
    and satisfied), nothing left over, read from the installed distributions' metadata."""
    meta = installed()
    locked = pins()
    drift = {n: (v, meta[n][0]) for n, v in locked.items() if n in meta and meta[n][0] != v}
    assert not drift, f"this environment is not the locked one (`make venv`): {drift}"
    project, wanted = lockgen.roots()
    want = {n: v for n, (v, _) in lockgen.closure(project, wanted, meta).items()}
    assert want == locked, (f"missing from the lock: {sorted(set(want) - set(locked))}; "
                            f"pinned but not needed: {sorted(set(locked) - set(want))}")
    for name, version in locked.items():
        for text in meta[name][1]:
            req = Requirement(text)
            dep = canonicalize_name(req.name)
            if dep in locked and req.marker is None:
                assert req.specifier.contains(locked[dep], prereleases=True), f"{name} needs {req}"


def test_the_lock_file_is_what_the_generator_writes() -> None:
    """Hand edits show up: the file is byte for byte the rendering of its own pins' closure."""
    project, wanted = lockgen.roots()
    assert LOCK.read_text() == lockgen.render(lockgen.closure(project, wanted, installed()))


def _third_party_imports(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("modelops", "__future__")}


def _distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in importlib.metadata.packages_distributions().get(module, [])}


@pytest.mark.parametrize(("part", "groups", "provided_at_runtime"), [
    # the operator image: the package without extras
    ("operator", ["dependencies"], set()),
    # the trainer image: the trainer extra; and the python-backend runtime, which the operator only reads (it
    # runs inside Triton's python backend, with torch and numpy as the trainer has them)
    ("trainer", ["dependencies", "extra trainer"], {"triton_python_backend_utils"}),
])
def test_each_image_has_what_its_code_imports(part: str, groups: list[str], provided_at_runtime: set[str]) -> None:
    """Every import (also the lazy ones inside functions) in the operator's modules is a distribution in the
    closure of the base dependencies, and in the trainer's in base + trainer extra: never a test or serving
    package that only the test venv has (tritonclient, numpy in the operator, pytest, ...)."""
    project, _ = lockgen.roots()
    reqs = [r for g in groups for r in stated()[g]]
    allowed = set(lockgen.closure(project, reqs, installed()))
    root = REPO / "operator" / "modelops"
    runs_with_torch = [f for f in root.rglob("*.py")
                       if f.relative_to(root).parts[0] == "trainer" or f == root / "triton" / "python_model.py"]
    files = [f for f in root.rglob("*.py") if (f in runs_with_torch) == (part == "trainer")]
    assert files
    problems = []
    for path in files:
        for module in sorted(_third_party_imports(path) - provided_at_runtime):
            dists = _distributions_of(module)
            if not dists & allowed:
                problems.append(f"{path.relative_to(REPO)} imports {module} ({', '.join(dists) or 'not installed'})")
    assert not problems, f"not in the {part} image's dependencies ({' + '.join(groups)}):\n" + "\n".join(problems)


def _dockerfile_pip_commands(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(pip command, environment it runs with) for every pip in a Dockerfile's RUN instructions."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    found = []
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            env = {}
        elif word == "ENV":
            env |= dict(kv.split("=", 1) for kv in shlex.split(rest))
        elif word == "RUN":
            for command in rest.split("&&"):
                words = [w for w in shlex.split(command) if not w.startswith("--mount=")]
                local = dict(env)
                while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                    key, value = words.pop(0).split("=", 1)
                    local[key] = value
                if words and words[0] == "pip":
                    found.append((" ".join(words), local))
    return found


@pytest.mark.parametrize("dockerfile", ["operator.Dockerfile", "trainer.Dockerfile"])
def test_dockerfiles_install_with_the_lock(dockerfile: str) -> None:
    path = REPO / "docker" / dockerfile
    commands = _dockerfile_pip_commands(path)
    assert any(c.startswith(("pip install", "pip wheel")) for c, _ in commands), commands
    copied = re.findall(r"^COPY requirements/lock\.txt (\S+)", path.read_text(), re.M)
    assert copied, f"{dockerfile} does not copy requirements/lock.txt"
    for command, env in commands:
        assert env.get("PIP_CONSTRAINT", "").endswith("/requirements/lock.txt"), \
            f"{dockerfile}: `{command}` runs without the lock (PIP_CONSTRAINT)"
        assert "--upgrade" not in command and " -U" not in command
    assert "!requirements/lock.txt" in (REPO / ".dockerignore").read_text().split()


def test_the_operator_image_installs_the_package_without_extras() -> None:
    commands = [c for c, _ in _dockerfile_pip_commands(REPO / "docker" / "operator.Dockerfile")]
    assert any(c.endswith("pip wheel --no-cache-dir --wheel-dir /wheels .") for c in commands), commands
    assert any(c.split()[-1] == "modelops" for c in commands), commands
    assert not any("[" in c for c in commands), f"extras in the operator image: {commands}"


def test_make_installs_with_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^LOCK := requirements/lock\.txt$", makefile, re.M)
    assert re.search(r"^PIP_LOCKED := PIP_CONSTRAINT=\$\(CURDIR\)/\$\(LOCK\) ", makefile, re.M)
    recipe = re.search(r"^\$\(STAMP\): (.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "$(LOCK)" in recipe[1].split(), "the venv is not rebuilt when the lock changes"
    installs = [line for line in recipe[2].splitlines() if "pip" in line]
    assert installs and all(line.strip().startswith("$(PIP_LOCKED) install") for line in installs), installs
    assert re.search(r"^lock:\n\t\$\(PYTHON\) requirements/lock\.py", makefile, re.M)
