"""The Argo CD health scripts (docs/argocd/) and kstatus run for real: a Lua interpreter on the scripts, the
pinned kstatus tool on the objects, and the argocd-cm snippet rendered from the scripts."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "docs" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations" / "modelops.dev"
ARGOCD_CM = ARGOCD / "argocd-cm.yaml"
HARNESS = Path(__file__).with_name("run_health.lua")
KINDS = ("TrainingJob", "ModelService", "ModelPool")
GROUP = "modelops.dev"


# What kstatus (sigs.k8s.io/cli-utils, pinned in e2e/tools/kstatus: the reader of Flux's health checks) computes
# for each fixture (kind, testdata file name).
KSTATUS: dict[tuple[str, str], str] = {
    ("TrainingJob", "healthy_succeeded"): "Current",
    ("TrainingJob", "progressing_new"): "Current",
    ("TrainingJob", "progressing_running"): "InProgress",
    ("TrainingJob", "progressing_stale"): "InProgress",
    ("TrainingJob", "progressing_unschedulable"): "InProgress",
    ("TrainingJob", "progressing_update_refused"): "InProgress",
    ("TrainingJob", "degraded_failed"): "Failed",
    ("TrainingJob", "degraded_name_conflict"): "Failed",
    ("TrainingJob", "suspended"): "InProgress",
    ("ModelService", "healthy"): "Current",
    ("ModelService", "progressing_canary"): "InProgress",
    ("ModelService", "progressing_new"): "Current",
    ("ModelService", "progressing_replicas_not_ready"): "InProgress",
    ("ModelService", "progressing_stale"): "InProgress",
    ("ModelService", "progressing_waiting_for_job"): "InProgress",
    ("ModelService", "degraded_model_check_failed"): "Failed",
    ("ModelService", "degraded_rolled_back"): "Failed",
    ("ModelService", "suspended_scaled_to_zero"): "InProgress",
    ("ModelPool", "healthy"): "Current",
    ("ModelPool", "progressing_new"): "Current",
    ("ModelPool", "progressing_servers_starting"): "InProgress",
    ("ModelPool", "progressing_stale"): "InProgress",
    ("ModelPool", "degraded_unplaced"): "Failed",
    ("ModelPool", "suspended_no_servers"): "Current",
}
# Fixtures the live capture cannot reach, and where each comes from instead.
NOT_LIVE = {
    ("ModelPool", "healthy"): "a pool is Healthy only once its servers' Triton answers, and kwok pods run no Triton: "
                              "the object is the status a whole pass writes with an in-memory Triton "
                              "(tests/unit/test_passes.py, test_a_pool_places_its_model_services...)",
}
# Argo CD's health in kstatus's words: where the two readers agree.
ARGOCD_IN_KSTATUS = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed", "Suspended": "Current"}
# Where kstatus reads a fixture otherwise than ARGOCD_IN_KSTATUS says, and why.
NO_STATUS_YET = ("no status yet: kstatus has nothing to read (no observedGeneration, no conditions), so it calls "
                 "the object Current before the operator has seen it")
SUSPENDED = ("kstatus has no Suspended: with Reconciling and Stalled False it falls back on Ready, which is False, "
             "and reads InProgress")
KSTATUS_DIFFERS = {
    ("TrainingJob", "progressing_new"): NO_STATUS_YET,
    ("ModelService", "progressing_new"): NO_STATUS_YET,
    ("ModelPool", "progressing_new"): NO_STATUS_YET,
    ("TrainingJob", "suspended"): SUSPENDED,
    ("ModelService", "suspended_scaled_to_zero"): SUSPENDED,
}


def script(kind: str) -> Path:
    return CUSTOMIZATIONS / kind / "health.lua"


def cm_key(kind: str) -> str:
    """The argocd-cm key Argo CD reads a kind's health script from (group_Kind)."""
    return f"resource.customizations.health.{GROUP}_{kind}"


def render_argocd_cm() -> str:
    """docs/argocd/argocd-cm.yaml: the scripts, character for character, as argocd-cm entries."""
    lines = [
        "# Argo CD health checks for modelops.dev resources, as entries of Argo CD's argocd-cm ConfigMap.",
        "# Merge the data keys into your argocd-cm (kubectl -n argocd patch configmap argocd-cm --patch-file",
        "# docs/argocd/argocd-cm.yaml), or set them through your Argo CD install's values. Generated from",
        "# resource_customizations/modelops.dev/*/health.lua (python tests/argocd/health.py); a test keeps",
        "# the two identical.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "  labels:",
        "    app.kubernetes.io/name: argocd-cm",
        "    app.kubernetes.io/part-of: argocd",
        "data:",
    ]
    for kind in KINDS:
        lines.append(f"  {cm_key(kind)}: |")
        lines += [f"    {line}" if line else "" for line in script(kind).read_text().splitlines()]
    return "\n".join(lines) + "\n"


def lua_interpreter() -> str | None:
    return shutil.which("lua5.4") or shutil.which("lua5.3")


def lua_literal(value: Any) -> str:
    """A JSON-like value as a Lua table constructor, the way Argo CD hands `obj` to a script: objects and
    arrays are tables, integers stay integers, null is nil."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no Lua literal for {value}")
        return repr(value)
    if isinstance(value, str):
        out = []
        for byte in value.encode():
            char = chr(byte)
            if char in '"\\':
                out.append("\\" + char)
            elif 32 <= byte < 127:
                out.append(char)
            else:
                out.append(f"\\{byte:03d}")
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def health(kind: str, obj: dict[str, Any], lua: str) -> tuple[str, str]:
    """(status, message) that the kind's health.lua gives `obj`, run by the real interpreter `lua`."""
    result = subprocess.run([lua, str(HARNESS), str(script(kind))], input=lua_literal(obj), capture_output=True,
                            text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{kind} health.lua failed: {result.stderr.strip()}")
    status, _, message = result.stdout.partition("\n")
    return status, message


def health_tests(kind: str) -> list[dict[str, Any]]:
    """The kind's health_test.yaml (Argo CD's format): [{healthStatus: {status, message}, inputPath}]."""
    return yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())["tests"]


def fixture(kind: str, input_path: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((CUSTOMIZATIONS / kind / input_path).read_text())
    return obj


def kstatus(binary: Path, objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What sigs.k8s.io/cli-utils' kstatus (Flux's health reader) computes for each object, in order."""
    stream = "".join("---\n" + yaml.safe_dump(obj, sort_keys=False) for obj in objects)
    result = subprocess.run([str(binary)], input=stream, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise AssertionError(f"kstatus failed: {result.stderr.strip()}")
    return [json.loads(line) for line in result.stdout.splitlines()]


if __name__ == "__main__":
    ARGOCD_CM.write_text(render_argocd_cm())
    print(f"wrote {ARGOCD_CM.relative_to(REPO)}")
