"""Executable layering (DESIGN.md "Inside the package"): the import contracts in pyproject.toml
([tool.importlinter], checked by lint-imports) and the type check of the package ([tool.mypy]), each run as a
developer runs it (`lint-imports`, `mypy` in the repository root), with its output shown on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "modelops"
BIN = Path(sys.executable).parent  # lint-imports and mypy: the test extra, in the same environment
CONTRACTS = {c["id"]: c for c in
             tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def lint_imports(source_root: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """lint-imports over the `modelops` found in source_root, with this repository's contracts."""
    env = {**os.environ, "PYTHONPATH": str(source_root), "COLUMNS": "400"}  # one line per contract
    return subprocess.run([str(BIN / "lint-imports"), "--no-logo", str(REPO / "pyproject.toml"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO / "operator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout, result.stdout


def test_the_operator_side_is_every_top_level_module_but_the_trainer() -> None:
    """The torch-free contract lists its modules one by one (a source cannot exclude a subpackage): a new
    top-level module must join it."""
    top = {f"modelops.{p.stem}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    top |= {f"modelops.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert set(CONTRACTS["operator-without-trainer-stack"]["source_modules"]) == top - {"modelops.trainer"}


# One import per contract that it forbids, added to a copy of the package.
PLANTED = {
    "layers": ("engine/pause.py", "from modelops import runner"),
    "operator-without-trainer-stack": ("api/base.py", "import torch"),
    "pure-core": ("rollout/canary.py", "import time"),
    "trainer-apart": ("trainer/files.py", "from modelops.kube import Kube"),
    "one-api-client": ("plugin/format.py", "from kubernetes import client"),
    "kopf-at-the-edge": ("controllers/common.py", "import kopf"),
    "kinds-apart": ("controllers/trainingjob.py", "from modelops.controllers import modelservice"),
}


def test_each_contract_catches_an_import_it_forbids(tmp_path: Path) -> None:
    assert set(PLANTED) == set(CONTRACTS), "plant a violation for every contract"
    copy = tmp_path / "modelops"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for module, line in PLANTED.values():
        with (copy / module).open("a") as source:
            source.write(f"\n{line}\n")
    result = lint_imports(tmp_path, "--no-cache", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = result.stdout.splitlines()  # "<name> BROKEN", or "<name> BROKEN (2 ignored imports)"
    kept = [c["name"] for c in CONTRACTS.values() if not any(v.startswith(f"{c['name']} BROKEN") for v in verdicts)]
    assert not kept, f"not broken by their planted imports: {kept}\n{result.stdout}"


def test_the_package_type_checks() -> None:
    """mypy with the [tool.mypy] configuration (cache: .mypy_cache): no error anywhere in the package."""
    result = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
