"""Pod pieces shared by training and serving: compute resources, the GPU toleration, and why a pod waits
(the scheduler's or the kubelet's own words) with the rule for saying so once per change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops.api.base import Resources, Toleration
from modelops.resources.conditions import Event

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


def scheduling(tolerations: list[dict[str, Any]], node_selector: dict[str, str],
               priority_class_name: str | None) -> dict[str, Any]:
    """The pod spec's scheduling fields that are set (an unset one stays out of the spec, so that a pod
    template's hash and a server-side apply see no empty field)."""
    fields: dict[str, Any] = {"tolerations": tolerations, "nodeSelector": node_selector,
                              "priorityClassName": priority_class_name}
    return {key: value for key, value in fields.items() if value}


# ---- why a pod waits ---------------------------------------------------------------------------------

# Container waiting reasons that mean the pod cannot start or stay up without someone changing something
# (ContainerCreating and PodInitializing are normal waits, not listed).
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff")
WAIT_MESSAGE_LIMIT = 1024
"""The most a condition message quoting a wait carries (the scheduler's messages list every node)."""


@dataclass(frozen=True)
class Wait:
    """Why one pod cannot go on: a reason (Unschedulable, ImagePullBackOff, FailedCreate...) and the words of
    whoever said so (the scheduler, the kubelet, the ReplicaSet controller)."""

    reason: str
    message: str = ""

    @property
    def quote(self) -> str:
        """What a later status must still contain for the wait to count as unchanged (fits the message)."""
        return (self.message or self.reason)[:WAIT_MESSAGE_LIMIT // 2]

    def said(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else self.reason


def pod_wait(status: dict[str, Any]) -> Wait | None:
    """Why a pod cannot go on, or None for a normal wait: not scheduled (PodScheduled=False, as the scheduler
    wrote it, while the pod is pending), or a container stuck waiting (image pull, config, crash loop)."""
    pending = status.get("phase") in (None, "Pending")
    for cond in status.get("conditions") or []:
        if pending and isinstance(cond, dict) and cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return Wait(str(cond.get("reason") or "Unschedulable"), str(cond.get("message") or ""))
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = ((cs or {}).get("state") or {}).get("waiting") or {}
        if isinstance(waiting, dict) and waiting.get("reason") in STUCK_REASONS:
            return Wait(str(waiting["reason"]), str(waiting.get("message") or ""))
    return None


def limited(text: str) -> str:
    """`text` cut to fit a condition message quoting a wait."""
    return text if len(text) <= WAIT_MESSAGE_LIMIT else text[:WAIT_MESSAGE_LIMIT - 3] + "..."


def wait_event(old_ready: dict[str, Any], ready: dict[str, Any], wait: Wait | None) -> list[Event]:
    """A Warning quoting why pods wait, once per change of what the scheduler or kubelet says (the Ready
    condition carries the quote, so a pass that finds it there again says nothing)."""
    if wait is None or (old_ready.get("reason") == ready.get("reason") and wait.quote in old_ready.get("message", "")):
        return []
    return [Event("Warning", wait.reason, str(ready.get("message") or wait.said()))]
