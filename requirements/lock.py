#!/usr/bin/env python3
"""Write requirements/lock.txt: an exact `==` pin for every Python distribution that pyproject.toml brings
in (the operator's dependencies, every extra, the build backend, pip itself) and everything they need in
turn, for CPython 3.11 on Linux x86_64. The Makefile and the Dockerfiles install with it as a pip
constraints file (`PIP_CONSTRAINT`, which also covers the isolated build of the package itself).

    python3 requirements/lock.py                  # `make lock`: resolve against PyPI, keeping every pin
                                                  # that still fits pyproject (new dependencies get the
                                                  # newest version that fits)
    python3 requirements/lock.py --upgrade        # `make lock UPGRADE=1`: the newest of everything
    python3 requirements/lock.py --from-venv .venv   # what an existing virtual environment has installed

Resolving is `pip install --dry-run --ignore-installed --report -`: pip's own resolver, reading metadata
only (nothing is installed, torch is not downloaded). No pip-tools needed.
Only the standard library and pip's vendored `packaging` are used, so any python3 >= 3.11 can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a python3 without packaging: pip always carries it
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
# The installer is pinned too: how pip resolves (and whether PIP_CONSTRAINT reaches isolated builds)
# depends on its version.
TOOLS = ["pip"]

# {canonical name: (version, [requirement strings])}
Metadata = dict[str, tuple[str, list[str]]]


def roots(pyproject: Path = REPO / "pyproject.toml") -> tuple[str, list[Requirement]]:
    """The project's name and every requirement it states: dependencies, each extra, build requires."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    reqs += data.get("build-system", {}).get("requires", [])
    return project["name"], [Requirement(r) for r in reqs + TOOLS]


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(project: str, wanted: list[Requirement], meta: Metadata) -> dict[str, tuple[str, set[str]]]:
    """{name: (version, {who requires it})} for everything `wanted` needs, from the distributions' metadata."""
    found: dict[str, tuple[str, set[str]]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[Requirement, str]] = [(r, project) for r in wanted]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if name == canonicalize_name(project) or not _applies(req, frozenset()):
            continue
        if name not in meta:
            raise SystemExit(f"{name} (needed by {parent}) is not in the resolved set")
        version, requires = meta[name]
        found.setdefault(name, (version, set()))[1].add(parent)
        key = (name, frozenset(canonicalize_name(e) for e in req.extras))
        if key in seen:
            continue
        seen.add(key)
        for text in requires:
            sub = Requirement(text)
            if _applies(sub, key[1]):
                todo.append((Requirement(str(sub).split(";")[0]), name))
    return found


def render(found: dict[str, tuple[str, set[str]]]) -> str:
    lines = [
        "# Exact versions of every Python distribution pyproject.toml brings in (dependencies, the trainer,",
        "# serving and test extras, the build backend, pip) and of everything they need, resolved for",
        f"# CPython {sys.version_info.major}.{sys.version_info.minor} on Linux x86_64. A pip constraints file: the Makefile"
        " and docker/*.Dockerfile",
        "# install with PIP_CONSTRAINT pointing here. Do not edit by hand: `make lock` re-resolves it keeping",
        "# the pins that still fit, `make lock UPGRADE=1` takes the newest of everything (requirements/lock.py);",
        "# tests/unit/test_lock.py checks it against pyproject.toml.",
    ]
    width = max(len(f"{n}=={v}") for n, (v, _) in found.items())
    for name in sorted(found):
        version, via = found[name]
        lines.append(f"{name}=={version}".ljust(width) + "  # via " + ", ".join(sorted(via)))
    return "\n".join(lines) + "\n"


def from_venv(venv: Path) -> Metadata:
    """The installed distributions of a virtual environment (run inside its own interpreter)."""
    code = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: "
            "[d.version, d.requires or []] for d in m.distributions()}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True)
    return {canonicalize_name(k): (v, r) for k, (v, r) in json.loads(out.stdout).items()}


def resolve(project: str, wanted: list[Requirement], constraints: list[str]) -> Metadata:
    """pip's resolver over PyPI for this interpreter, as if nothing were installed: metadata only."""
    with tempfile.TemporaryDirectory(prefix="modelops-lock-") as tmp:
        cfile = Path(tmp) / "constraints.txt"
        cfile.write_text("\n".join(constraints) + "\n")
        extras = ",".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                          .get("optional-dependencies", {}))
        # Local wheels and a constraint from the caller's environment would make the lock depend on this machine.
        env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_NO_INDEX")}
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run",
               "--ignore-installed", "--quiet", "--report", "-", "-c", str(cfile), f"{REPO}[{extras}]",
               *[str(r) for r in wanted if canonicalize_name(r.name) != canonicalize_name(project)]]
        out = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        if out.returncode:
            raise SystemExit("pip could not resolve pyproject.toml within the kept pins; "
                             "`make lock UPGRADE=1` resolves everything afresh")
        report = json.loads(out.stdout)
    return {canonicalize_name(item["metadata"]["name"]): (item["metadata"]["version"],
                                                          item["metadata"].get("requires_dist") or [])
            for item in report["install"]}


def kept_pins(wanted: list[Requirement]) -> list[str]:
    """The current lock's pins, minus those a changed pyproject specifier no longer allows."""
    if not LOCK.exists():
        return []
    specs: dict[str, list[Requirement]] = defaultdict(list)
    for r in wanted:
        specs[canonicalize_name(r.name)].append(r)
    pins = []
    for line in LOCK.read_text().splitlines():
        pin = line.split("#")[0].strip()
        if not pin:
            continue
        name, version = pin.split("==")
        if all(r.specifier.contains(version, prereleases=True) for r in specs.get(canonicalize_name(name), [])):
            pins.append(pin)
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--upgrade", action="store_true", help="ignore the current pins: newest of everything")
    mode.add_argument("--from-venv", type=Path, help="pin what this virtual environment has installed")
    parser.add_argument("--output", type=Path, default=LOCK)
    args = parser.parse_args()
    project, wanted = roots()
    if args.from_venv:
        meta = from_venv(args.from_venv)
    else:
        meta = resolve(project, wanted, [] if args.upgrade else kept_pins(wanted))
    found = closure(project, wanted, meta)
    text = render(found)
    if args.output.exists() and args.output.read_text() == text:
        print(f"{args.output}: unchanged ({len(found)} pins)")
    else:
        args.output.write_text(text)
        print(f"{args.output}: {len(found)} pins written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
