"""What ships is what is tested: the images' Python environments, built by replaying docker/*.Dockerfile into
clean virtual environments (same COPY of the same build context, same ENV, the same pip commands with the
lock), then run: the operator from its image's venv against the local cluster through one TrainingJob and
one ModelService model check; the trainer from its image's venv through one real (CPU) training run.

The test venv has every extra; these venvs have exactly what each image has, so an import that only the
test venv satisfies (tritonclient in the operator, pytest in the trainer, ...) fails here.

A built venv is cached in ~/.cache/modelops/venvs/ (MODELOPS_VENV_CACHE), keyed by the hash of what decides
its dependencies (the Dockerfile, .dockerignore, the lock, pyproject and the Python version): any change
there replays the Dockerfile afresh; a change of the package's own files (operator/, README) only rebuilds
and reinstalls the package in the cached venv; an unchanged tree reuses it. The one liberty taken with
the Dockerfiles is dropping `--no-cache-dir`, so that pip may reuse what it already downloaded.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import REPO, condition, eventually, get_json

CACHE = Path(os.environ.get("MODELOPS_VENV_CACHE") or Path.home() / ".cache" / "modelops" / "venvs")
EXIT = "e2e.modelops.dev/exit-code"
# What only the test venv (or the other image) may have.
NOT_IN_OPERATOR = ["tritonclient", "numpy", "torch", "gevent", "sklearn", "pytest", "pytriton"]
NOT_IN_TRAINER = ["tritonclient", "gevent", "pytest", "pytriton"]
# The environment an image's pip runs in: nothing from this machine's pip configuration that would change
# what is resolved (local wheels, another constraints file; an index mirror may stay: the lock decides the
# versions), nothing from the test venv.
DROP_ENV = ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_NO_INDEX", "PIP_REQUIRE_VIRTUALENV", "PYTHONPATH",
            "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")


# ---- replaying a Dockerfile into a venv --------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(dockerfile: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))))
        elif stages:
            stages[-1].instructions.append((word.upper(), rest.strip()))
    return stages


def _ignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").replace("**/", "*/")))
    return rules


def in_context(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """.dockerignore's verdict on a path (last matching rule wins; a rule on a directory covers its files)."""
    parts = rel.split("/")
    verdict = True
    for include, pattern in rules:
        if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            verdict = include
    return verdict


def copied_files(stages: list[Stage]) -> list[str]:
    """Every build-context file some COPY instruction copies (relative to the repository)."""
    rules = _ignore_rules()
    files = set()
    for stage in stages:
        for word, rest in stage.instructions:
            if word != "COPY" or "--from=" in rest:
                continue
            for src in shlex.split(rest)[:-1]:
                path = REPO / src
                candidates = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                files |= {str(p.relative_to(REPO)) for p in candidates
                          if in_context(str(p.relative_to(REPO)), rules)}
    return sorted(files)


# The package's own files (sources, its readme); every other input decides the dependencies.
PACKAGE_FILES = ("operator/", "README.md")


def cache_keys(dockerfile: Path) -> tuple[str, str]:
    """(what decides the installed dependencies: Python, Dockerfile, .dockerignore, lock, pyproject;
    the package's own files)."""
    deps, package = hashlib.sha256(sys.version.encode()), hashlib.sha256()
    for rel in [str(dockerfile.relative_to(REPO)), ".dockerignore", *copied_files(parse(dockerfile))]:
        digest = package if rel.startswith(PACKAGE_FILES) else deps
        digest.update(rel.encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return deps.hexdigest()[:16], package.hexdigest()[:16]


@dataclass
class Image:
    """The venv standing for an image's /usr/local, and what the image runs."""

    root: Path
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    built_in: float | None  # seconds, None when reused from the cache

    @property
    def venv(self) -> Path:
        return self.root / "image" / "venv"

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run_env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
        return {**base, **self.env, "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", **extra}


def _pip_env(stage_env: dict[str, str], bin_dir: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    return {**base, **stage_env, "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}


def _map_paths(text: str, fs: Path, mounts: dict[str, Path]) -> str:
    """An image path (/src/..., /wheels) as the path standing for it: a bind mount's source or the stage's fs/."""
    def one(match: re.Match[str]) -> str:
        path = match.group(0)
        for target, source in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if path == target or path.startswith(target + "/"):
                return str(source) + path[len(target):]
        return str(fs) + path
    return re.sub(r"(?<![\w./-])/[\w.][\w./-]*", one, text)


def replay(dockerfile: Path, root: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """Each stage is a fresh venv of this Python (the image's python + pip) and a directory standing for its
    file system. Every RUN that runs pip is replayed with its whole && chain; the others (user accounts) are
    not. Returns the last stage's ENTRYPOINT, CMD and ENV."""
    stages = parse(dockerfile)
    rules = _ignore_rules()
    fs_of: dict[str, Path] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    env: dict[str, str] = {}
    for index, stage in enumerate(stages):
        # the last stage is the image; the others are build stages
        stage_dir = root / ("image" if index == len(stages) - 1 else f"stage-{stage.name}")
        fs = fs_of[stage.name] = stage_dir / "fs"
        fs.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "venv", str(stage_dir / "venv")], check=True)
        workdir, env = "/", {}
        for word, rest in stage.instructions:
            if word == "WORKDIR":
                workdir = rest if rest.startswith("/") else f"{workdir.rstrip('/')}/{rest}"
                (fs / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif word == "ENV":
                for key, value in (kv.split("=", 1) for kv in shlex.split(rest)):
                    if key != "HOME":  # pip's cache stays where it is
                        env[key] = _map_paths(value, fs, {})
            elif word == "COPY":
                *sources, dest = shlex.split(rest)
                dest_path = fs / (dest if dest.startswith("/") else f"{workdir}/{dest}").lstrip("/")
                for src in sources:
                    path = REPO / src
                    if path.is_dir():
                        for file in path.rglob("*"):
                            rel = str(file.relative_to(REPO))
                            if file.is_file() and in_context(rel, rules):
                                target = dest_path / file.relative_to(path)
                                target.parent.mkdir(parents=True, exist_ok=True)
                                shutil.copy2(file, target)
                    else:
                        target = dest_path / path.name if dest.endswith("/") or len(sources) > 1 else dest_path
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, target)
            elif word == "RUN":
                mounts: dict[str, Path] = {}
                for option in re.findall(r"--mount=(\S+)", rest):
                    spec = dict(kv.split("=", 1) for kv in option.split(","))
                    mounts[spec["target"]] = fs_of[spec["from"]] / spec.get("source", "/").lstrip("/")
                script = re.sub(r"--mount=\S+\s*", "", rest)
                if not re.search(r"(^|&&|\s)pip\s", script):
                    continue
                script = _map_paths(script.replace(" --no-cache-dir", ""), fs, mounts)
                subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True,
                               cwd=fs / workdir.lstrip("/"), env=_pip_env(env, stage_dir / "venv" / "bin"))
            elif word == "ENTRYPOINT":
                entrypoint = json.loads(rest)
            elif word == "CMD":
                cmd = json.loads(rest)
    for stage_dir in root.glob("stage-*"):
        shutil.rmtree(stage_dir)  # build stages do not ship
    return entrypoint, cmd, env


def refresh_package(image_venv: Path, dockerfile: Path, work: Path) -> None:
    """The package alone, rebuilt from this checkout's files and reinstalled: what a fresh replay would put
    there when only the package's own files changed (same build with the lock, same dependencies)."""
    src, wheels = work / "src", work / "wheels"
    for rel in copied_files(parse(dockerfile)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    env = _pip_env({"PIP_CONSTRAINT": str(src / "requirements" / "lock.txt")}, image_venv / "bin")
    pip = [str(image_venv / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)], check=True, env=env)
    [wheel] = wheels.glob("modelops-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--force-reinstall", str(wheel)], check=True, env=env)


def shipped(dockerfile_name: str) -> Image:
    """The image's venv. Replayed from scratch when what decides its dependencies changed (or on first use);
    when only the package's own files changed, the cached venv gets the package alone rebuilt (its
    dependencies cannot have changed); else reused as it is."""
    dockerfile = REPO / "docker" / dockerfile_name
    image = dockerfile_name.removesuffix(".Dockerfile")
    deps_key, package_key = cache_keys(dockerfile)
    root = CACHE / f"{image}-{deps_key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{image}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one build of an image at a time
        done = root / "built.json"
        started = time.monotonic()
        if done.exists():
            saved = json.loads(done.read_text())
            if saved["package"] == package_key:
                return Image(root, saved["entrypoint"], saved["cmd"], saved["env"], None)
            shutil.rmtree(root / "refresh", ignore_errors=True)
            refresh_package(root / "image" / "venv", dockerfile, root / "refresh")
            shutil.rmtree(root / "refresh")
            done.write_text(json.dumps({**saved, "package": package_key}))
            took = time.monotonic() - started
            print(f"reinstalled the package in the {image} image's venv in {took:.1f}s: {root}")
            return Image(root, saved["entrypoint"], saved["cmd"], saved["env"], took)
        shutil.rmtree(root, ignore_errors=True)
        entrypoint, cmd, env = replay(dockerfile, root)
        took = time.monotonic() - started
        done.write_text(json.dumps({"entrypoint": entrypoint, "cmd": cmd, "env": env, "package": package_key,
                                    "seconds": round(took, 1)}))
        for old in CACHE.glob(f"{image}-*"):
            if old != root and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)  # only the newest of each image is kept
        print(f"built the {image} image's venv in {took:.1f}s: {root}")
        return Image(root, entrypoint, cmd, env, took)


def assert_is_the_shipped_set(image: Image, absent: list[str]) -> None:
    """modelops comes from the venv (not this checkout), the lock's versions are installed, and what the image
    must not have is not importable."""
    probe = ("import importlib.util, json, importlib.metadata as m, modelops; print(json.dumps({"
             "'file': modelops.__file__, 'present': [n for n in %r if importlib.util.find_spec(n)], "
             "'dists': {d.metadata['Name']: d.version for d in m.distributions()}}))" % (absent,))
    out = subprocess.run([image.bin("python"), "-c", probe], check=True, capture_output=True, text=True,
                         cwd=image.root, env=image.run_env())
    seen = json.loads(out.stdout)
    assert Path(seen["file"]).is_relative_to(image.venv), seen["file"]
    assert seen["present"] == [], f"the image has what it must not: {seen['present']}"
    from packaging.utils import canonicalize_name

    locked = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line.split("#")[0].strip():
            name, version = line.split("#")[0].strip().split("==")
            locked[canonicalize_name(name)] = version
    dists = {canonicalize_name(k): v for k, v in seen["dists"].items()}
    # pip and setuptools came with the image's python (the last stage's pip only installs from a directory
    # holding one wheel of each distribution: it has nothing to choose)
    off = {n: v for n, v in dists.items() if n not in ("modelops", "pip", "setuptools", "wheel")
           and locked.get(n) != v}
    assert off == {}, f"installed but not at the locked version (or not locked): {off}"
    # and what pip itself says about the image's requirements
    check = subprocess.run([image.bin("python"), "-m", "pip", "check"], capture_output=True, text=True,
                           env=image.run_env())
    assert check.returncode == 0, check.stdout + check.stderr


# ---- the operator image -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def operator_image() -> Image:
    return shipped("operator.Dockerfile")


def _job(name: str) -> str:
    return json.dumps({
        "apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/tmp/models"}}},
                 "trainer": {"epochs": 2}}})


def _model_service(name: str) -> str:
    signature = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
                 "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
    return json.dumps({
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {"model": {"name": "digits", "version": 1, "signature": signature},
                 "repository": {"hostPath": {"path": "/tmp/models"}}}})


@pytest.fixture
def shipped_operator(operator_image: Image, kube, crds_installed, tmp_path: Path) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """`modelops run` from the image's venv, as the image's ENTRYPOINT + CMD, for the test's namespace; run from
    outside this checkout with nothing of the test venv in its environment."""
    log_path = tmp_path / "operator.log"
    argv = [operator_image.bin(operator_image.entrypoint[0]), *operator_image.entrypoint[1:], *operator_image.cmd,
            "-n", kube.namespace, "--liveness-port", "0", "--metrics-port", "0", "--verbose"]
    env = operator_image.run_env(KUBECONFIG=str(kube.kubeconfig), MODELOPS_PROMETHEUS_URL="")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        yield log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"--- operator log ({log_path}) ---\n{log_path.read_text(errors='replace')[-6000:]}")


@pytest.mark.cluster
@pytest.mark.slow
def test_the_operator_image_runs_a_training_job_and_a_model_check(operator_image: Image, shipped_operator: Path,
                                                                    kube) -> None:  # type: ignore[no-untyped-def]
    assert_is_the_shipped_set(operator_image, NOT_IN_OPERATOR)
    assert operator_image.entrypoint == ["modelops"] and operator_image.cmd[0] == "run"

    # One TrainingJob to Succeeded: a worker pod, its progress and model reported, its exit.
    kube.kubectl("apply", "-f", "-", stdin=_job("one"))
    pod = eventually(lambda: next((p for p in get_json(kube, "pods", "-l", "modelops.dev/training-job=one")["items"]
                                   if p["status"].get("phase") == "Running"), None), 60, "a running worker pod")
    name = pod["metadata"]["name"]
    progress = {"phase": "Succeeded", "epoch": 2, "epochs": 2, "testAccuracy": 0.96,
                "model": {"name": "digits", "version": 1, "uri": "/models/digits/1"}}
    kube.kubectl("annotate", "pod", name, "--overwrite", f"modelops.dev/progress={json.dumps(progress)}")
    kube.kubectl("annotate", "pod", name, f"{EXIT}=0", "--overwrite")
    done = eventually(lambda: (j := get_json(kube, "tj", "one")).get("status", {}).get("phase") == "Succeeded" and j,
                      60, "TrainingJob Succeeded")
    assert done["status"]["model"] == {"name": "digits", "version": 1, "uri": "/models/digits/1",
                                       "testAccuracy": 0.96}
    assert condition(done, "Ready")["status"] == "True"

    # One ModelService: its Deployment, and the model check run on its pod (kwok pods run no Triton: pending).
    kube.kubectl("apply", "-f", "-", stdin=_model_service("digits"))
    eventually(lambda: get_json(kube, "deployments", "-l", "modelops.dev/model-service=digits")["items"], 60,
               "the revision Deployment")
    pods = eventually(lambda: [p for p in get_json(kube, "pods", "-l", "modelops.dev/model-service=digits")["items"]
                               if condition(p, "modelops.dev/model-ready")], 60, "the model check's gate condition")
    gate = condition(pods[0], "modelops.dev/model-ready")
    assert gate["status"] == "False" and gate["reason"] == "ModelCheckPending", gate

    log = shipped_operator.read_text(errors="replace")
    assert "ModuleNotFoundError" not in log and "ImportError" not in log, log[-4000:]


# ---- the trainer image --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_trainer_image_trains_and_publishes_a_model(tmp_path: Path) -> None:
    image = shipped("trainer.Dockerfile")
    assert_is_the_shipped_set(image, NOT_IN_TRAINER)
    repository = tmp_path / "models"
    repository.mkdir()
    run = subprocess.run(
        [image.bin("python"), "-m", "modelops.trainer", "--dataset", "digits", "--epochs", "1", "--model", "mlp",
         "--repository", str(repository), "--model-name", "digits", "--device", "cpu", "--num-threads", "2"],
        capture_output=True, text=True, cwd=tmp_path, env=image.run_env(), timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    published = sorted(str(p.relative_to(repository)) for p in repository.rglob("*") if p.is_file()
                       and ".checkpoints" not in p.parts)
    assert "digits/config.pbtxt" in published and any(p.startswith("digits/1/") for p in published), published


def test_replay_maps_image_paths_and_honours_dockerignore() -> None:
    """The replay's own rules, without building anything."""
    fs, mounts = Path("/x/fs"), {"/wheels": Path("/b/fs/wheels"), "/requirements": Path("/b/fs/src/requirements")}
    assert _map_paths("PIP_CONSTRAINT=/requirements/lock.txt pip install --find-links=/wheels modelops", fs,
                      mounts) == ("PIP_CONSTRAINT=/b/fs/src/requirements/lock.txt pip install "
                                  "--find-links=/b/fs/wheels modelops")
    assert _map_paths("pip wheel --wheel-dir /wheels . && rm -rf /src", fs, {}) == \
        "pip wheel --wheel-dir /x/fs/wheels . && rm -rf /x/fs/src"
    rules = _ignore_rules()
    assert in_context("operator/modelops/runner.py", rules)
    assert in_context("requirements/lock.txt", rules)
    assert not in_context("requirements/lock.py", rules)
    assert not in_context("operator/modelops/__pycache__/runner.cpython-311.pyc", rules)
    assert not in_context("operator/modelops.egg-info/PKG-INFO", rules)
    assert not in_context("tests/support.py", rules)
    files = copied_files(parse(REPO / "docker" / "operator.Dockerfile"))
    assert {"pyproject.toml", "README.md", "requirements/lock.txt", "operator/modelops/runner.py"} <= set(files)
