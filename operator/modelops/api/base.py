"""Shared pieces of the API models: camelCase base model, conditions, volumes, scheduling types."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
MODEL_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"


def cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    """One CEL rule (x-kubernetes-validations entry), checked by the API server at admission."""
    return {"rule": rule, "message": message, **extra}


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored (the CRD schema prunes them)."""

    model_config = ConfigDict(alias_generator=AliasGenerator(alias=to_camel), populate_by_name=True,
                              extra="ignore", use_attribute_docstrings=True)

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(ApiModel):
    """A Kubernetes-style condition (kstatus conventions)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


def conditions_field() -> Any:
    """A status conditions list, merged by type (kstatus conventions)."""
    return Field([], json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


class PersistentVolumeClaimSource(ApiModel):
    claim_name: str = Field(min_length=1, max_length=253)
    """Name of a PersistentVolumeClaim in the resource's namespace."""


class HostPathSource(ApiModel):
    path: str = Field(min_length=1, pattern=r"^/")
    """Absolute directory on the node (for single-node and local clusters)."""


class ModelRepository(ApiModel):
    """Where the Triton model repository lives: exactly one of persistentVolumeClaim or hostPath."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.persistentVolumeClaim) != has(self.hostPath)",
            "set exactly one of persistentVolumeClaim or hostPath"),
    ]})

    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    """A PVC holding the repository (ReadWriteMany when trainers and servers run on different nodes)."""
    host_path: HostPathSource | None = None
    """A node directory holding the repository."""
    mount_path: str = Field("/models", pattern=r"^/")
    """Where the repository is mounted inside the pods."""


class Resources(ApiModel):
    """Per-pod compute resources; `gpus` becomes an nvidia.com/gpu limit plus the GPU toleration."""

    gpus: int = Field(0, ge=0, le=16)
    """NVIDIA GPUs per pod (nvidia.com/gpu)."""
    cpu: str | None = Field(None, pattern=QUANTITY)
    """CPU request and limit, e.g. "2" or "500m"."""
    memory: str | None = Field(None, pattern=QUANTITY)
    """Memory request and limit, e.g. "4Gi"."""


class Toleration(ApiModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EnvVar(ApiModel):
    """An environment variable; `valueFrom` takes the same sources as a Pod's."""

    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = Field(None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
