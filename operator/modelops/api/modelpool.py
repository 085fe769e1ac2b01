"""The ModelPool API: shared Triton servers in explicit model-control mode that hold the copies of many
ModelServices' model versions (the single source of its CRD).

A pool owns its server pods, not the models: each ModelService with `spec.pool` asks for copies of its
version(s), and the pool's planner places them by measured memory. The scale subresource moves
`spec.minServers`, the floor: how many servers run is the planner's decision (resident memory and load), so
what `kubectl scale` or an external autoscaler can say is "at least N" (never above maxServers: the CEL rule
refuses that scale at admission)."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from modelops.api.base import (ApiModel, Condition, HostPathSource, LabelKey, LabelValue, PersistentVolumeClaimSource,
                               Resources, Toleration, cel, conditions_field, image_reference, node_selector_field,
                               object_name, quantity)
from modelops.api.modelservice import DEFAULT_TRITON_IMAGE


class PoolRepository(ApiModel):
    """The pool's model repository, mounted whole and read-only in every server (at /repository): a PVC or a
    node directory. The ModelServices of the pool publish into, and are evaluated from, this same repository."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.persistentVolumeClaim) != has(self.hostPath)",
            "set exactly one of persistentVolumeClaim or hostPath"),
    ]})

    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    host_path: HostPathSource | None = None


class ModelPoolSpec(ApiModel):
    """Shared Triton servers holding copies of many models, placed by measured memory."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minServers <= self.maxServers", "minServers must not exceed maxServers"),
    ]})

    image: image_reference() = DEFAULT_TRITON_IMAGE  # type: ignore[valid-type]
    """The Triton server image."""
    resources: Resources = Field(default_factory=Resources, json_schema_extra={"default": Resources().wire()})
    """Each server pod's CPU, memory and GPUs."""
    repository: PoolRepository
    capacity: quantity("capacity", "8Gi or 512Mi")  # type: ignore[valid-type]
    """Memory one server gives to resident models (GPU memory with GPUs, else host memory)."""
    overcommit: float = Field(0.0, ge=0, le=1)
    """A server holds at most capacity x (1 + overcommit) of models (their measured sizes)."""
    min_servers: int = Field(1, ge=0, le=1000)
    """The fewest servers (the scale subresource's replicas)."""
    max_servers: int = Field(4, ge=1, le=1000)
    node_selector: dict[LabelKey, LabelValue] = node_selector_field()
    tolerations: list[Toleration] = Field([], max_length=64)
    priority_class_name: object_name("priorityClassName", "PriorityClass",  # type: ignore[valid-type]
                                     namespaced=False) | None = None


class ResidentModelStatus(ApiModel):
    name: str
    version: int
    ready: bool = False
    bytes: int | None = None
    """Measured size (the declared one until measured)."""
    measured: bool = False
    last_inference: str | None = None
    """Triton's last inference time of this copy (RFC 3339), absent if never."""
    leaving: bool = False
    """To be unloaded: out of its Service's endpoints first, then unloaded."""


class ServerStatus(ApiModel):
    name: str
    ready: bool = False
    draining: bool = False
    """Its unloads stopped giving memory back: its copies move elsewhere, then it is replaced."""
    bytes_used: int = 0
    capacity_bytes: int = 0
    """capacity x (1 + overcommit)."""
    models: list[ResidentModelStatus] = []


class PoolTotals(ApiModel):
    loads: int = 0
    unloads: int = 0
    evictions: int = 0


class UnplacedModel(ApiModel):
    model_service: str
    model: str
    version: int | None = None
    reason: str
    message: str = ""


class ModelPoolStatus(ApiModel):
    observed_generation: int | None = None
    phase: str | None = None
    conditions: list[Condition] = conditions_field()
    replicas: int = 0
    """Server pods (the scale subresource's status replicas)."""
    ready_servers: int = 0
    servers_ready: str | None = None
    """ready/desired servers, for `kubectl get`."""
    selector: str | None = None
    """Label selector of the server pods (the scale subresource's)."""
    models: int = 0
    """Model versions with at least one resident copy."""
    copies: int = 0
    memory: str | None = None
    """bytes used / capacity over all servers, for `kubectl get`."""
    servers: list[ServerStatus] = []
    totals: PoolTotals = Field(default_factory=PoolTotals)
    unplaced: list[UnplacedModel] = []
    """Copies asked for that could not be placed, and why."""
