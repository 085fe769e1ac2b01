"""Pod pieces shared by training and serving: compute resources and the GPU toleration."""

from __future__ import annotations

from typing import Any

from modelops.api.base import Resources, Toleration

GPU_RESOURCE = "nvidia.com/gpu"


def compute_resources(resources: Resources) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS); `gpus` becomes nvidia.com/gpu."""
    limits: dict[str, str] = {}
    if resources.cpu:
        limits["cpu"] = resources.cpu
    if resources.memory:
        limits["memory"] = resources.memory
    if resources.gpus:
        limits[GPU_RESOURCE] = str(resources.gpus)
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def tolerations(user: list[Toleration], resources: Resources) -> list[dict[str, Any]]:
    """The user's tolerations, plus the one GPU pools' NoSchedule taint needs when GPUs are requested."""
    result = [t.wire() for t in user]
    if resources.gpus:
        result.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return result
