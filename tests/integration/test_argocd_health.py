"""Argo CD health for TrainingJob, ModelService and ModelPool: the Lua scripts in docs/argocd/ run by a real Lua
interpreter on their fixtures (objects captured from the real operator, see tests/argocd/capture_fixtures.py)
and on the live objects, against health_test.yaml; the argocd-cm snippet is the scripts' very text."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from argocd.capture_fixtures import capture, write
from argocd.health import (ARGOCD_CM, CUSTOMIZATIONS, KINDS, KSTATUS, NOT_LIVE, cm_key, fixture, health, health_tests,
                           kstatus, lua_interpreter, render_argocd_cm, script)
from support import OperatorProcess

STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended"}


@pytest.fixture(scope="module")
def lua() -> str:
    found = lua_interpreter()
    if found is None:
        pytest.fail("no Lua interpreter (lua5.4 or lua5.3): `make deps` installs Debian's lua5.4", pytrace=False)
    return found


def cases() -> list[Any]:
    return [pytest.param(kind, t["inputPath"], t["healthStatus"], id=f"{kind}-{Path(t['inputPath']).stem}")
            for kind in KINDS for t in health_tests(kind)]


def test_argocd_cm_holds_the_scripts_verbatim() -> None:
    text = ARGOCD_CM.read_text()
    data = yaml.safe_load(text)["data"]
    assert set(data) == {cm_key(kind) for kind in KINDS}
    for kind in KINDS:
        assert data[cm_key(kind)] == script(kind).read_text(), f"argocd-cm's {kind} script differs from health.lua"
    assert text == render_argocd_cm(), "docs/argocd/argocd-cm.yaml is stale: python tests/argocd/health.py"


def test_health_tests_list_every_fixture_and_every_status() -> None:
    for kind in KINDS:
        tests = health_tests(kind)
        listed = [test["inputPath"] for test in tests]
        on_disk = sorted(f"testdata/{p.name}" for p in (CUSTOMIZATIONS / kind / "testdata").glob("*.yaml"))
        assert sorted(listed) == on_disk and len(set(listed)) == len(listed)
        assert {test["healthStatus"]["status"] for test in tests} == STATUSES, kind


@pytest.mark.cluster
def test_argocd_cm_merges_into_an_existing_configmap(local_cluster) -> None:  # type: ignore[no-untyped-def]
    """What docs/install.md tells Argo CD users to run: the scripts land beside argocd-cm's other keys."""
    local_cluster.kubectl("create", "namespace", "argocd")
    try:
        def kubectl(*args: str) -> str:
            return str(local_cluster.kubectl("-n", "argocd", *args).stdout)

        kubectl("create", "configmap", "argocd-cm", "--from-literal=timeout.reconciliation=180s")
        kubectl("patch", "configmap", "argocd-cm", "--patch-file", str(ARGOCD_CM))
        data = json.loads(kubectl("get", "configmap", "argocd-cm", "-o", "json"))["data"]
        assert data == {"timeout.reconciliation": "180s", **{cm_key(kind): script(kind).read_text() for kind in KINDS}}
    finally:
        local_cluster.kubectl("delete", "namespace", "argocd", "--wait=false", check=False)


@pytest.mark.parametrize("kind, input_path, expected", cases())
def test_health_script_on_captured_objects(lua: str, kind: str, input_path: str, expected: dict[str, str]) -> None:
    status, message = health(kind, fixture(kind, input_path), lua)
    assert {"status": status, "message": message} == expected


@pytest.mark.cluster
def test_health_of_live_objects_in_each_state(kube, crds_installed, lua, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The operator driven into every state the fixtures show: the scripts (and kstatus) read the live
    objects as health_test.yaml (and KSTATUS) say. MODELOPS_WRITE_FIXTURES=1 also rewrites the fixtures
    (then check health_test.yaml's messages: the fixtures' own tests compare them word for word)."""
    operator = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / "operator.log")
    try:
        found = capture(kube, operator.start, operator.stop)
    except BaseException:
        print(f"--- operator log ---\n{operator.log()[-6000:]}")
        raise
    finally:
        operator.stop()
    if os.environ.get("MODELOPS_WRITE_FIXTURES") == "1":
        write(found)

    # The states, not the operator's wording (the fixtures' tests pin the messages).
    expected = {(kind, Path(test["inputPath"]).stem): test["healthStatus"]["status"]
                for kind in KINDS for test in health_tests(kind) if (kind, Path(test["inputPath"]).stem) not in NOT_LIVE}
    assert sorted(found) == sorted(expected)
    seen = {key: health(key[0], obj, lua) for key, obj in found.items()}
    assert {key: status for key, (status, _) in seen.items()} == expected
    assert all(message for _, message in seen.values())

    read = kstatus(kube.cluster.bin_dir / "kstatus", list(found.values()))
    assert {key: r["status"] for key, r in zip(found, read)} == {k: v for k, v in KSTATUS.items() if k not in NOT_LIVE}
