"""The shipped package stands alone: nothing in it reaches above itself into a checkout (e2e/, the repository
root); the local cluster's tools come from a checkout it is given (`modelops dev cluster up --repo`,
MODELOPS_REPO) or from tools built before (MODELOPS_BIN_DIR); its data files ship in the wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modelops import cli
from modelops.dev.cluster import ClusterError, build_tools

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "modelops"


def test_the_package_reaches_no_file_above_itself() -> None:
    """Paths taken from __file__ name the module's neighbours only: an installed package has no checkout
    around it."""
    reaches = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
               for path in sorted(PACKAGE.rglob("*.py"))
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if "__file__" in line and re.search(r"\.parents\b|\.parent\.parent|dirname\(.*dirname\(", line)]
    assert not reaches


def test_the_wheel_holds_every_file_of_the_package(tmp_path: Path) -> None:
    """Built as the operator image builds it (pip wheel of pyproject, README and operator/): data files such as
    dev/kwok-stages.yaml included, not only modules."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "operator", source / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, timeout=300)
    [wheel] = (tmp_path / "wheel").glob("modelops-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("modelops/")}
    files = {f"modelops/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    assert "modelops/dev/kwok-stages.yaml" in files
    assert files - shipped == set()


def test_build_tools_without_a_checkout_says_what_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELOPS_BIN_DIR", raising=False)
    with pytest.raises(ClusterError, match=r"no e2e/tools/build\.sh in .*--repo DIR.*MODELOPS_REPO.*MODELOPS_BIN_DIR"):
        build_tools(tmp_path)


def test_build_tools_takes_tools_built_before_without_a_checkout(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELOPS_BIN_DIR", str(tmp_path / "bin"))
    assert build_tools(tmp_path / "not-a-checkout") == tmp_path / "bin"


@pytest.mark.parametrize("given", ["cwd", "env", "flag"])
def test_cluster_up_builds_from_the_checkout_it_is_given(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The current directory, else MODELOPS_REPO, else --repo: here a directory that is no checkout, so the
    command stops before starting anything, naming it."""
    checkout = (tmp_path / "checkout").resolve()
    checkout.mkdir()
    monkeypatch.delenv("MODELOPS_BIN_DIR", raising=False)
    monkeypatch.delenv("MODELOPS_REPO", raising=False)
    monkeypatch.chdir(checkout if given == "cwd" else tmp_path)
    if given == "env":
        monkeypatch.setenv("MODELOPS_REPO", str(checkout))
    state = tmp_path / "cluster"
    argv = ["dev", "cluster", "up", "--dir", str(state), *(["--repo", str(checkout)] if given == "flag" else [])]
    assert cli.main(argv) == 1
    assert f"no e2e/tools/build.sh in {checkout}:" in capsys.readouterr().err
    assert not state.exists()
