"""The TrainingJob API: spec and status models (the single source of its CRD)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from modelops.api.base import (ApiModel, Condition, EnvVar, LabelKey, LabelValue, ModelName, ModelRepository,
                               Resources, Toleration, cel, conditions_field, image_reference, node_selector_field,
                               object_name)
from modelops.api.modelservice import ModelSignature

DEFAULT_TRAINER_IMAGE = "ghcr.io/modelops/trainer:0.1.0"
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class TrainerArgs(ApiModel):
    """Typed arguments of the built-in trainer (`python -m modelops.trainer`); used when `command` is unset."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!(has(self.dataset) && has(self.dataPath))", "set dataset or dataPath, not both"),
        cel("self.valFraction + self.testFraction < 1.0", "valFraction + testFraction must be below 1"),
    ]})

    dataset: Literal["digits", "synthetic-tabular"] | None = None
    """A built-in data set (default digits when dataPath is unset too)."""
    data_path: str | None = Field(None, min_length=1)
    """A CSV or NPZ file inside the pod (e.g. on the repository volume)."""
    label_column: str = "label"
    """The label column of a CSV file."""
    missing: Literal["drop", "fill"] = "drop"
    """What to do with rows holding missing values."""
    model: Literal["cnn", "mlp"] | None = None
    """The architecture: cnn (images) or mlp (tabular); unset picks the one that fits the data."""
    hidden_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field([64], min_length=1, max_length=8)
    """Widths of the hidden layers, each at least 1."""
    epochs: int = Field(10, ge=1, le=10000)
    batch_size: int = Field(64, ge=1, le=65536)
    learning_rate: float = Field(0.001, gt=0, le=10)
    seed: int = Field(0, ge=0)
    augment: bool = True
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_batch_size: int = Field(64, ge=0, le=4096)
    """max_batch_size written into the published config.pbtxt."""


class OutputSpec(ApiModel):
    """Where the trained model is published: <repository>/<modelName>/<next version>/."""

    model_name: ModelName  # type: ignore[valid-type]
    repository: ModelRepository


class TrainingJobSpec(ApiModel):
    """One worker pod, or a PyTorch DDP group of `workers` pods, that trains and publishes a model version."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.command) || size(self.command) > 0", "command, when set, must not be empty"),
    ]})

    image: image_reference() = DEFAULT_TRAINER_IMAGE  # type: ignore[valid-type]
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    command: list[str] | None = None
    """Overrides the built-in trainer; the DDP rendezvous variables are set either way."""
    args: list[str] | None = None
    """Overrides the arguments generated from `trainer`."""
    env: list[EnvVar] = Field([], max_length=128)
    trainer: TrainerArgs = Field(default_factory=TrainerArgs, json_schema_extra={"default": TrainerArgs().wire()})
    workers: int = Field(1, ge=1, le=128)
    """Pods in the group: 1 = single worker; more = DDP with MASTER_ADDR/PORT, WORLD_SIZE and RANK set."""
    resources: Resources = Field(default_factory=Resources, json_schema_extra={"default": Resources().wire()})
    node_selector: dict[LabelKey, LabelValue] = node_selector_field()  # type: ignore[valid-type]
    """Label keys and values the worker pods' nodes must carry, as a Pod's nodeSelector."""
    tolerations: list[Toleration] = Field([], max_length=64)
    priority_class_name: object_name("priorityClassName", "PriorityClass",  # type: ignore[valid-type]
                                     namespaced=False) | None = None
    """The worker pods' PriorityClass (it must exist)."""
    service_account_name: object_name("serviceAccountName", "ServiceAccount") | None = None  # type: ignore[valid-type]
    """The pods' ServiceAccount; needs get/patch on its own pod for progress reports."""
    output: OutputSpec
    backoff_limit: int = Field(3, ge=0, le=100)
    """Group restarts allowed after a worker fails."""
    active_deadline_seconds: int | None = Field(None, ge=1)
    """Running time allowed (counted from the start, reset by suspend) before the job fails."""
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    """Delete the finished job (and its pods) this long after it succeeded or failed."""
    suspend: bool = False
    """True removes the worker pods; false again starts a fresh group."""


class WorkerCounts(ApiModel):
    desired: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class Progress(ApiModel):
    """The trainer's last report (pod annotation modelops.dev/progress of rank 0)."""

    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    loss: float | None = None
    val_accuracy: float | None = None
    samples_per_second: float | None = None
    updated: str | None = None


class PublishedModel(ApiModel):
    name: str
    version: int
    uri: str
    test_accuracy: float | None = None
    signature: ModelSignature | None = None
    """Inputs and outputs, as the trainer reported them (a following ModelService renders its config from it)."""


class TrainingJobStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    conditions: list[Condition] = conditions_field()
    workers: WorkerCounts | None = None
    workers_ready: str | None = None
    """running/desired, for `kubectl get`."""
    restarts: int = 0
    """Group restarts so far."""
    start_time: str | None = None
    completion_time: str | None = None
    progress: Progress | None = None
    progress_summary: str | None = None
    """A one-line summary of progress, for `kubectl get`."""
    model: PublishedModel | None = None
    """The published model version, on success."""
