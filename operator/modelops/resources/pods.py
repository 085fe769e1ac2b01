"""Pod pieces shared by training and serving: compute resources and the GPU toleration."""

from __future__ import annotations

from typing import Any

from modelops.api.base import Resources, Toleration

GPU_RESOURCE = "nvidia.com/gpu"
NVIDIA_PREFIX = "nvidia.com/"


def compute_resources(resources: Resources) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS); `gpus` becomes a limit of `gpuResource` (nvidia.com/gpu)."""
    limits: dict[str, str] = {}
    if resources.cpu:
        limits["cpu"] = resources.cpu
    if resources.memory:
        limits["memory"] = resources.memory
    if resources.gpus:
        limits[resources.gpu_resource] = str(resources.gpus)
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def gpu_taint_keys(resources: Resources) -> list[str]:
    """The taint keys GPU pools carry for this resource: its own name, and nvidia.com/gpu for every NVIDIA
    resource (MIG nodes keep the nvidia.com/gpu taint of the GPU operator)."""
    if not resources.gpus:
        return []
    keys = [resources.gpu_resource]
    if resources.gpu_resource.startswith(NVIDIA_PREFIX) and resources.gpu_resource != GPU_RESOURCE:
        keys.append(GPU_RESOURCE)
    return keys


def tolerations(user: list[Toleration], resources: Resources) -> list[dict[str, Any]]:
    """The user's tolerations, plus the ones GPU pools' NoSchedule taints need when GPUs are requested."""
    result = [t.wire() for t in user]
    for key in gpu_taint_keys(resources):
        result.append({"key": key, "operator": "Exists", "effect": "NoSchedule"})
    return result
