"""The TrainingJob API: spec and status models (the single source of its CRD)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from typing_extensions import Self

from modelops.api.base import (DNS1123_SUBDOMAIN, LABEL_KEY_WORDS, LABEL_VALUE, SUBDOMAIN_WORDS, ApiModel, Condition,
                               EnvVar, LabelKey, LabelValue, ModelName, ModelRepository, Resources, Toleration,
                               _fullmatch, cel, checked, conditions_field, image_reference, is_label_key,
                               is_label_value, label_key, label_key_rule, label_map_field, label_value, lit,
                               node_selector_field, object_name)
from modelops.api.modelservice import ModelSignature

DEFAULT_TRAINER_IMAGE = "ghcr.io/modelops/trainer:0.1.0"
RESERVED_PREFIX = "modelops.dev/"
MAX_NPROC_PER_NODE = 64
NPROC_WORDS = f"nprocPerNode must be 'auto' or an integer from 1 to {MAX_NPROC_PER_NODE}"
Phase = Literal["Queued", "Pending", "Running", "Succeeded", "Failed", "Suspended"]


def _nproc(value: object) -> object:
    """'auto' or an int in range; a numeric string is refused as the API server refuses it."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                           and 1 <= value <= MAX_NPROC_PER_NODE):
        return value
    raise ValueError(NPROC_WORDS)


NprocPerNode = Annotated[Literal["auto"] | int, BeforeValidator(_nproc), WithJsonSchema({
    "x-kubernetes-int-or-string": True,
    "description": "Ranks (processes) per pod, torchrun's --nproc-per-node: auto = the pod's GPU count "
                   "(1 without GPUs). WORLD_SIZE is workers x nprocPerNode.",
    "x-kubernetes-validations": [cel(f"type(self) == int ? (self >= 1 && self <= {MAX_NPROC_PER_NODE}) "
                                     ": self == 'auto'", NPROC_WORDS)],
})]

NODE_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")


class NodeSelectorRequirement(ApiModel):
    """One node label test, as a Pod's node affinity takes it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!(self.operator in ['In', 'NotIn']) || size(self.values) > 0",
            "node affinity operators In and NotIn need at least one value"),
        cel("!(self.operator in ['Exists', 'DoesNotExist']) || size(self.values) == 0",
            "node affinity operators Exists and DoesNotExist take no values"),
        cel("!(self.operator in ['Gt', 'Lt']) || (size(self.values) == 1 && self.values[0].matches('^-?[0-9]+$'))",
            "node affinity operators Gt and Lt take exactly one integer value"),
    ]})

    key: checked(label_key_rule("self"), f"node affinity keys must be {LABEL_KEY_WORDS}",  # type: ignore[valid-type]
                 is_label_key, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[checked(f"self.matches({lit(LABEL_VALUE)})",  # type: ignore[valid-type]
                         "node affinity values must be label values: empty, or at most 63 letters, digits, '-', "
                         "'_' or '.' that starts and ends with a letter or digit",
                         is_label_value, max_length=63)] = Field([], max_length=32)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError("node affinity operators In and NotIn need at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError("node affinity operators Exists and DoesNotExist take no values")
        if self.operator in ("Gt", "Lt") and (len(self.values) != 1 or not _fullmatch(r"^-?[0-9]+$")(self.values[0])):
            raise ValueError("node affinity operators Gt and Lt take exactly one integer value")
        return self


class NodeSelectorTerm(ApiModel):
    """Requirements that must all hold (terms of a list are alternatives)."""

    match_expressions: list[NodeSelectorRequirement] = Field(min_length=1, max_length=16)


class NodeSelector(ApiModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=8)


class PreferredSchedulingTerm(ApiModel):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(ApiModel):
    """A Pod's nodeAffinity (matchExpressions only)."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    """Nodes the worker pods may run on."""
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field([], max_length=8)
    """Nodes the scheduler prefers, by weight."""


class Affinity(ApiModel):
    node_affinity: NodeAffinity | None = None


if TYPE_CHECKING:  # str to a type checker, see api.base.ModelName
    SchedulerName = str
else:
    SchedulerName = checked(f"self.matches({lit(DNS1123_SUBDOMAIN)})",
                            f"schedulerName must be a scheduler's name: {SUBDOMAIN_WORDS}",
                            _fullmatch(DNS1123_SUBDOMAIN), max_length=253)


class TrainerArgs(ApiModel):
    """Typed arguments of the built-in trainer (`python -m modelops.trainer`); used when `command` is unset."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!(has(self.dataset) && has(self.dataPath))", "set dataset or dataPath, not both"),
        cel("self.valFraction + self.testFraction < 1.0", "valFraction + testFraction must be below 1"),
        cel("!has(self.model) || self.model != 'transformer' || self.embeddingDim % self.heads == 0",
            "embeddingDim must be a multiple of heads for the transformer"),
    ]})

    dataset: Literal["digits", "synthetic-tabular", "synthetic-sequence"] | None = None
    """A built-in data set (default digits when dataPath is unset too)."""
    data_path: str | None = Field(None, min_length=1)
    """A CSV or NPZ file inside the pod (e.g. on the repository volume)."""
    label_column: str = "label"
    """The label column of a CSV file."""
    missing: Literal["drop", "fill"] = "drop"
    """What to do with rows holding missing values."""
    model: Literal["cnn", "mlp", "gru", "transformer"] | None = None
    """The architecture: cnn (images), mlp (tabular), gru or transformer (token sequences: a dataPath is then
    read as token ids); unset picks the one that fits the data (gru for synthetic-sequence)."""
    hidden_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field([64], min_length=1, max_length=8)
    """Widths of the hidden layers, each at least 1; sequence models: the first is the GRU state or the
    encoder's feed-forward width, the rest the classifier head's layers."""
    embedding_dim: int = Field(32, ge=1, le=4096)
    """Sequence models: the token (and position) embedding width; a multiple of heads for transformer."""
    layers: int = Field(1, ge=1, le=16)
    """Sequence models: GRU layers or encoder layers."""
    heads: int = Field(2, ge=1, le=64)
    """transformer: attention heads."""
    max_length: int = Field(64, ge=1, le=65536)
    """Sequences: longer rows are dropped in cleaning; serving cuts inputs at this many tokens."""
    vocab_size: int | None = Field(None, ge=3, le=10_000_000)
    """Sequences: token ids are 2..vocabSize-1 (0 pads, 1 is unknown); unset: the largest id in the data + 1."""
    epochs: int = Field(10, ge=1, le=10000)
    batch_size: int = Field(64, ge=1, le=65536)
    learning_rate: float = Field(0.001, gt=0, le=10)
    seed: int = Field(0, ge=0)
    augment: bool = True
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_batch_size: int = Field(64, ge=0, le=4096)
    """max_batch_size written into the published config.pbtxt."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Self:
        if self.model == "transformer" and self.embedding_dim % self.heads:
            raise ValueError("embeddingDim must be a multiple of heads for the transformer")
        return self


class OutputSpec(ApiModel):
    """Where the trained model is published: <repository>/<modelName>/<next version>/."""

    model_name: ModelName
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
    """Pods in the group (torchrun's nnodes): 1 = single pod; more = DDP with MASTER_ADDR/PORT set."""
    nproc_per_node: NprocPerNode = "auto"
    resources: Resources = Field(default_factory=Resources, json_schema_extra={"default": Resources().wire()})
    node_selector: dict[LabelKey, LabelValue] = node_selector_field()
    """Label keys and values the worker pods' nodes must carry, as a Pod's nodeSelector."""
    tolerations: list[Toleration] = Field([], max_length=64)
    priority_class_name: object_name("priorityClassName", "PriorityClass",  # type: ignore[valid-type]
                                     namespaced=False) | None = None
    """The worker pods' PriorityClass (it must exist)."""
    scheduler_name: SchedulerName | None = None
    """The scheduler that places the worker pods (e.g. a gang scheduler); unset: the default scheduler."""
    affinity: Affinity | None = None
    """The worker pods' node affinity, as a Pod's."""
    pod_labels: dict[label_key("podLabels"), label_value("podLabels")] = label_map_field(  # type: ignore[valid-type]
        "podLabels", reserved_prefix=RESERVED_PREFIX)
    """Extra labels on the worker pods (e.g. for a queue or a cost report); modelops.dev/ keys are the operator's."""
    pod_annotations: dict[label_key("podAnnotations"),  # type: ignore[valid-type]
                          Annotated[str, Field(max_length=4096)]] = label_map_field(
        "podAnnotations", reserved_prefix=RESERVED_PREFIX)
    """Extra annotations on the worker pods; modelops.dev/ keys are the operator's."""
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

    @model_validator(mode="after")
    def _reserved(self) -> Self:
        for field, keys in (("podLabels", self.pod_labels), ("podAnnotations", self.pod_annotations)):
            if any(k.startswith(RESERVED_PREFIX) for k in keys):
                raise ValueError(f"{field} keys under {RESERVED_PREFIX} are reserved for the operator")
        return self

    def ranks_per_pod(self) -> int:
        """nprocPerNode resolved: auto is the pod's GPU count, 1 without GPUs."""
        if self.nproc_per_node == "auto":
            return max(1, self.resources.gpus)
        return int(self.nproc_per_node)

    def world_size(self) -> int:
        return self.workers * self.ranks_per_pod()


class WorkerCounts(ApiModel):
    desired: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class Progress(ApiModel):
    """The trainer's last report (pod annotation modelops.dev/progress of rank 0). What a preemption now
    would cost: the work from checkpointedEpoch to epoch (a restarted group resumes after checkpointedEpoch)."""

    phase: str | None = None
    epoch: int | None = None
    """The epoch in progress (1 = the first); once training ended, the last one trained."""
    epochs: int | None = None
    checkpointed_epoch: int | None = None
    """The last epoch whose checkpoint is saved (durably, atomically); 0 = none yet. Unset: the trainer keeps
    no checkpoints, so a restart starts over."""
    checkpoint_error: str | None = None
    """Why the last checkpoint could not be saved; unset once one is saved again."""
    step: int | None = None
    loss: float | None = None
    val_accuracy: float | None = None
    samples_per_second: float | None = None
    world_size: int | None = None
    """Ranks in the process group, as the trainer saw it."""
    updated: str | None = None


class PublishedModel(ApiModel):
    name: str
    version: int
    uri: str
    test_accuracy: float | None = None
    signature: ModelSignature | None = None
    """Inputs and outputs, as the trainer reported them (a following ModelService renders its config from it)."""
    dataset_fingerprint: str | None = Field(None, max_length=128)
    """The training data's fingerprint (lineage of the version)."""


class QueueStatus(ApiModel):
    """Where the job stands in Kueue (its Workload's state)."""

    name: str
    """The LocalQueue (label kueue.x-k8s.io/queue-name)."""
    workload: str | None = None
    cluster_queue: str | None = None
    """The ClusterQueue that admitted the workload."""
    state: Literal["Queued", "Admitted", "Evicted"] | None = None
    reason: str | None = None
    message: str | None = None
    """What Kueue says (why it waits, or why it evicted the workload)."""


class TrainingJobStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    conditions: list[Condition] = conditions_field()
    workers: WorkerCounts | None = None
    workers_ready: str | None = None
    """running/desired, for `kubectl get`."""
    restarts: int = 0
    """Group restarts after a worker failed (counted against backoffLimit)."""
    preemptions: int = 0
    """Group restarts after a worker was preempted, evicted or deleted, or Kueue evicted the job: not failures."""
    attempt: int | None = None
    """The attempt whose worker group was started last (pods <job>-a<attempt>-w<rank>)."""
    ended_attempts: dict[str, Literal["Failed", "Preempted", "Suspended"]] | None = None
    """How each earlier attempt ended (the record behind restarts and preemptions)."""
    queue: QueueStatus | None = None
    """The Kueue workload of a job labelled kueue.x-k8s.io/queue-name."""
    start_time: str | None = None
    completion_time: str | None = None
    progress: Progress | None = None
    progress_summary: str | None = None
    """A one-line summary of progress, for `kubectl get`."""
    model: PublishedModel | None = None
    """The published model version, on success."""
