"""Flux reads health with kstatus (sigs.k8s.io/cli-utils; e2e/tools/kstatus pins it and prints
`status.Compute` per object): what it makes of TrainingJobs and ModelServices in each state, on the objects
captured from the real operator (docs/argocd/.../testdata/), and where that differs from Argo CD's reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from argocd.health import (ARGOCD_IN_KSTATUS, KINDS, KSTATUS, KSTATUS_DIFFERS, fixture, health_tests, kstatus)
from modelops.dev.cluster import build_tools
from support import REPO


@pytest.fixture(scope="module")
def kstatus_tool() -> Path:
    tool = build_tools(REPO) / "kstatus"
    if not tool.exists():
        pytest.fail(f"{tool} is missing: e2e/tools/build.sh builds it (MODELOPS_BIN_DIR must hold it too)",
                    pytrace=False)
    return tool


def argocd_health() -> dict[tuple[str, str], str]:
    return {(kind, Path(t["inputPath"]).stem): t["healthStatus"]["status"]
            for kind in KINDS for t in health_tests(kind)}


def test_kstatus_reads_each_captured_object(kstatus_tool: Path) -> None:
    keys = sorted(argocd_health())
    results = kstatus(kstatus_tool, [fixture(kind, f"testdata/{name}.yaml") for kind, name in keys])
    assert [(r["kind"], r["name"]) for r in results] == \
        [(kind, fixture(kind, f"testdata/{name}.yaml")["metadata"]["name"]) for kind, name in keys]
    assert {key: r["status"] for key, r in zip(keys, results)} == KSTATUS


def test_kstatus_and_argocd_disagree_only_where_explained() -> None:
    health = argocd_health()
    assert set(KSTATUS) == set(health)
    differs = {key for key, status in KSTATUS.items() if ARGOCD_IN_KSTATUS[health[key]] != status}
    assert differs == set(KSTATUS_DIFFERS)


def test_kstatus_tool_reads_a_list_and_generations(kstatus_tool: Path) -> None:
    """kubectl get -o json hands a List; integers stay integers (kstatus compares the generations as int64)."""
    job = fixture("TrainingJob", "testdata/healthy_succeeded.yaml")
    stale = {**job, "metadata": {**job["metadata"], "generation": 7}}
    [current, in_progress] = kstatus(kstatus_tool, [{"apiVersion": "v1", "kind": "List", "items": [job, stale]}])
    assert current["status"] == "Current"
    assert in_progress == {"kind": "TrainingJob", "name": job["metadata"]["name"], "status": "InProgress",
                           "message": "TrainingJob generation is 7, but latest observed generation is 1"}
