"""The ModelService API: spec and status models (the single source of its CRD)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, JsonValue, model_validator
from typing_extensions import Self

from modelops.api.base import (ApiModel, Condition, HostPathSource, LabelKey, LabelValue, ModelName,
                               PersistentVolumeClaimSource, Resources, Toleration, cel, checked, conditions_field,
                               image_reference, lit, node_selector_field, object_name)

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BF16", "BYTES"]
Metric = Literal["queueTimeMicroseconds", "inferenceRatePerReplica", "pendingRequests", "gpuUtilization"]


TENSOR_NAME = r"^[!#-\[\]-~]+$"
"""Printable ASCII without spaces, quotes or backslashes: the name goes into config.pbtxt as a string literal."""
TENSOR_NAME_WORDS = "tensor name must be non-empty printable ASCII without spaces, quotes or backslashes"
DIM_WORDS = "dims entries must be a size of at least 1, or -1 for a variable dimension"


def _dim(value: int) -> int:
    if value < 1 and value != -1:
        raise ValueError(DIM_WORDS)
    return value


Dim = Annotated[int, AfterValidator(_dim),
                Field(json_schema_extra={"x-kubernetes-validations": [cel("self >= 1 || self == -1", DIM_WORDS)]})]


class TensorSpec(ApiModel):
    name: checked(f"self.matches({lit(TENSOR_NAME)})", TENSOR_NAME_WORDS,  # type: ignore[valid-type]
                  lambda v: re.fullmatch(TENSOR_NAME, v) is not None, max_length=256)
    """The tensor's name as the model declares it (e.g. INPUT__0)."""
    datatype: Datatype
    dims: list[Dim] = Field(min_length=1, max_length=8)
    """Dimensions without the batch dimension; each at least 1, or -1 for a variable one."""


class ModelSignature(ApiModel):
    """The model's inputs and outputs, as Triton names them."""

    inputs: list[TensorSpec] = Field(min_length=1, max_length=16)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=16)


class ServedModel(ApiModel):
    """Which model version to serve: a pinned version, or the newest one a TrainingJob published."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.version) != has(self.fromTrainingJob)", "set exactly one of version or fromTrainingJob"),
        cel("has(self.fromTrainingJob) || has(self.signature)",
            "a pinned version needs its signature (inputs and outputs); a TrainingJob reports it itself"),
    ]})

    name: ModelName
    version: int | None = Field(None, ge=1)
    from_training_job: object_name("fromTrainingJob", "TrainingJob") | None = None  # type: ignore[valid-type]
    """Follow this TrainingJob (same namespace): every version it publishes is rolled out."""
    signature: ModelSignature | None = None


URI = r"^(s3|gs|as)://[^\s]+$"


class ServingRepository(ApiModel):
    """The Triton model repository: a PVC or hostPath (mounted read-only), or an object-store URI."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("[has(self.persistentVolumeClaim), has(self.hostPath), has(self.uri)].filter(x, x).size() == 1",
            "set exactly one of persistentVolumeClaim, hostPath or uri"),
    ]})

    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    host_path: HostPathSource | None = None
    uri: checked(f"self.matches({lit(URI)})",  # type: ignore[valid-type]
                 "uri must be an object-store URI: s3://, gs:// or as:// and the bucket path, without spaces",
                 lambda v: re.fullmatch(URI, v) is not None, max_length=2048) | None = None
    """Passed to Triton as --model-repository; the repository's own config.pbtxt is then used as-is."""


class DynamicBatching(ApiModel):
    """Triton's dynamic batcher (on when maxBatchSize > 0). The defaults are the measured best of
    e2e/bench/bench_serving.py: Triton already merges the requests that arrive while a model instance is busy,
    so batches grow with the load on their own, and any queue delay only adds latency."""

    preferred_batch_sizes: list[int] = Field([], max_length=8)
    """Batch sizes sent as soon as they are reached; empty: maxBatchSize is the only target (what TorchScript
    wants; fixed sizes matter for engines built for them)."""
    max_queue_delay_microseconds: int = Field(0, ge=0, le=10_000_000)
    """How long the first request of a batch may wait for more; 0: never (no latency cost at low load)."""


class TritonSpec(ApiModel):
    """How Triton serves the model; rendered into the config.pbtxt the pods mount."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.dynamicBatching.preferredBatchSizes.all(s, s >= 1 && s <= self.maxBatchSize)",
            "preferredBatchSizes must lie between 1 and maxBatchSize"),
    ]})

    image: image_reference() = DEFAULT_TRITON_IMAGE  # type: ignore[valid-type]
    backend: Literal["pytorch", "python"] = "pytorch"
    """pytorch runs model.pt through libtorch, python through the operator's python-backend runtime (CPU builds)."""
    max_batch_size: int = Field(64, ge=0, le=4096)
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching,
                                              json_schema_extra={"default": DynamicBatching().wire()})
    instance_count: int = Field(1, ge=1, le=16)
    extra_args: list[str] = Field([], max_length=32)


class ScalingRules(ApiModel):
    """HPA-style behaviour for one direction."""

    stabilization_window_seconds: int = Field(0, ge=0, le=3600)
    max_step_replicas: int = Field(4, ge=1, le=100)
    """At most this many replicas added (or removed) per period..."""
    max_step_percent: int = Field(100, ge=1, le=1000)
    """...or this percentage of the current replicas, whichever allows more."""
    period_seconds: int = Field(15, ge=1, le=1800)


ZERO_HPA = ("minReplicas 0 needs autoscaling.provider builtin: a HorizontalPodAutoscaler cannot scale to zero "
            "(HPAScaleToZero is an alpha feature gate), and only the operator brings a ModelService back from zero")


class Autoscaling(ApiModel):
    """Scale the serving replicas from Triton's metrics (through Prometheus)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"),
        cel("self.minReplicas >= 1 || self.provider == 'builtin'", ZERO_HPA),
    ]})

    min_replicas: int = Field(1, ge=0, le=1000)
    """0: scale to zero after scaleToZeroAfterSeconds without a request; the activator holds the requests that
    come while nothing is ready (docs/scale-to-zero.md)."""
    max_replicas: int = Field(4, ge=1, le=1000)
    metric: Metric = "queueTimeMicroseconds"
    target: float = Field(gt=0)
    """Target per replica: microseconds of queue time per request, requests/s, pending requests, or GPU %."""
    tolerance: float = Field(0.1, ge=0, le=1)
    provider: Literal["builtin", "hpa"] = "builtin"
    """builtin: the operator decides; hpa: emit a HorizontalPodAutoscaler (needs a Prometheus metrics adapter)."""
    scale_up: ScalingRules = Field(default_factory=ScalingRules, json_schema_extra={"default": ScalingRules().wire()})
    scale_down: ScalingRules = Field(
        default_factory=lambda: ScalingRules(stabilization_window_seconds=300),
        json_schema_extra={"default": ScalingRules(stabilization_window_seconds=300).wire()})
    scale_to_zero_after_seconds: int = Field(300, ge=10, le=86400)
    """With minReplicas 0: how long without a request (Triton's success and failure counters, and no request
    held by the activator) before the last replica or copy goes. 300 s is KEDA's cooldownPeriod default;
    Knative's 60 s window plus 30 s grace suits containers that start in a second, not a model that takes tens
    of seconds to load. Missing metrics never scale to zero."""

    @model_validator(mode="after")
    def _zero(self) -> Self:
        if self.min_replicas == 0 and self.provider != "builtin":
            raise ValueError(ZERO_HPA)
        return self


class RolloutStep(ApiModel):
    weight: int = Field(ge=1, le=100)
    """Share of the replicas (and so of the traffic) on the canary."""
    pause_seconds: int = Field(30, ge=0, le=86400)
    """How long the step runs before its analysis decides."""
    approval: bool = False
    """After its pause and analysis, the step holds until `kubectl annotate ms NAME modelops.dev/rollout=promote`
    (which approves this step only; the annotation at a step without approval promotes at once)."""


class Analysis(ApiModel):
    """Thresholds for the canary, from Triton's metrics in Prometheus."""

    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(1000, gt=0)
    min_requests: int = Field(20, ge=0)
    """Fewer canary (or stable) requests than this in a step make the analysis inconclusive (the step waits)."""
    max_latency_ratio: float | None = Field(2.0, ge=1, le=100)
    """Canary p99 over stable p99 in the same window (latencies under 1 ms count as 1 ms); null turns the
    comparison off."""
    max_error_rate_increase: float | None = Field(0.01, ge=0, le=1)
    """How much the canary's error rate may exceed the stable revision's in the same window; null turns it off."""


REPOSITORY_FILE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.npz$"
"""A path inside the model repository: relative, segments without a leading '.' (so no '..'), ending .npz."""
SHA256 = r"^[0-9a-f]{64}$"


class ReferenceSet(ApiModel):
    """A fixed evaluation set in the model repository that no training run produced (a curated, checked set):
    every candidate and the stable revision are scored on it."""

    path: checked(f"self.matches({lit(REPOSITORY_FILE)})",  # type: ignore[valid-type]
                  "referenceSet.path must be a relative path inside the model repository, ending in .npz, "
                  "without '..' or segments starting with '.'",
                  lambda v: re.fullmatch(REPOSITORY_FILE, v) is not None, max_length=512)
    """The .npz file (arrays x, y and optionally classes: the class name of each label index), relative to the
    repository's root, e.g. digits/reference.npz."""
    sha256: checked(f"self.matches({lit(SHA256)})",  # type: ignore[valid-type]
                    "referenceSet.sha256 must be 64 lowercase hexadecimal digits",
                    lambda v: re.fullmatch(SHA256, v) is not None, max_length=64) | None = None
    """When set, the file must have this digest, or the gate fails (the reference changed under it)."""


class EvaluationGate(ApiModel):
    """Before a revision takes traffic, it is scored on evidence it did not produce as well as its own: its
    version's held-out set (published with it by the trainer), the stable version's held-out set, and the
    referenceSet when one is named; the stable revision is scored on the same rows of each set."""

    enabled: bool = True
    """On by default; a version is skipped (a condition says so) only when no set can be scored."""
    min_accuracy: float | None = Field(None, ge=0, le=1)
    """Absolute floor for the new version's accuracy on each set it is scored on."""
    max_regression: float = Field(0.01, ge=0, le=1)
    """How far below the stable revision's accuracy the new version may score, on each set (on any set more
    than this refuses it)."""
    reference_set: ReferenceSet | None = None
    image: image_reference() | None = None  # type: ignore[valid-type]
    """Image of the evaluation pod (needs Python with numpy); default: the operator's trainer image (never the
    candidate's own trainer image: the candidate does not write its exam)."""
    timeout_seconds: int = Field(300, ge=10, le=86400)
    """An evaluation pod still running after this long counts as a failed evaluation."""


class Gates(ApiModel):
    evaluation: EvaluationGate = Field(default_factory=EvaluationGate,
                                       json_schema_extra={"default": EvaluationGate().wire()})


class Rollout(ApiModel):
    steps: list[RolloutStep] = Field([RolloutStep(weight=20), RolloutStep(weight=50)], min_length=1, max_length=20,
                                     json_schema_extra={"default": [{"weight": 20, "pauseSeconds": 30},
                                                                    {"weight": 50, "pauseSeconds": 30}]})
    analysis: Analysis = Field(default_factory=Analysis, json_schema_extra={"default": Analysis().wire()})
    gates: Gates = Field(default_factory=Gates, json_schema_extra={"default": Gates().wire()})
    progress_deadline_seconds: int = Field(600, ge=5, le=86400)
    """A canary whose pods are not serving a verified model by then is rolled back."""


POOL_URI = ("a pooled ModelService reads its model from the pool's repository: set persistentVolumeClaim or "
            "hostPath (the same repository as the pool's), not uri")
POOL_COMPUTE = ("a pooled ModelService runs on the pool's servers: resources.gpus and resources.cpu belong to the "
                "ModelPool (resources.memory is the declared size of one copy)")
POOL_ARGS = "triton.extraArgs are server-wide: a pooled ModelService cannot set them (they belong to the ModelPool)"
POOL_HPA = ("a pooled ModelService has no pods of its own for a HorizontalPodAutoscaler: use autoscaling.provider "
            "builtin (the pool sets its copies from Triton's per-model metrics)")
POOL_RULES: list[JsonValue] = [
    cel("!has(self.pool) || !has(self.repository.uri)", POOL_URI),
    cel("!has(self.pool) || (self.resources.gpus == 0 && !has(self.resources.cpu))", POOL_COMPUTE),
    cel("!has(self.pool) || !has(self.triton.extraArgs) || self.triton.extraArgs.size() == 0", POOL_ARGS),
    cel("!has(self.pool) || !has(self.autoscaling) || self.autoscaling.provider == 'builtin'", POOL_HPA),
]


class ModelServiceSpec(ApiModel):
    """Serves a model version with Triton; new versions roll out as a metric-checked canary."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": POOL_RULES})

    model: ServedModel
    repository: ServingRepository
    triton: TritonSpec = Field(default_factory=TritonSpec, json_schema_extra={"default": TritonSpec().wire()})
    resources: Resources = Field(default_factory=Resources, json_schema_extra={"default": Resources().wire()})
    replicas: int = Field(1, ge=0, le=1000)
    """Serving replicas (ignored while the builtin autoscaler is on); `kubectl scale ms` sets it."""
    autoscaling: Autoscaling | None = None
    rollout: Rollout = Field(default_factory=Rollout, json_schema_extra={"default": Rollout().wire()})
    node_selector: dict[LabelKey, LabelValue] = node_selector_field()
    """Label keys and values the serving pods' nodes must carry, as a Pod's nodeSelector."""
    tolerations: list[Toleration] = Field([], max_length=64)
    priority_class_name: object_name("priorityClassName", "PriorityClass",  # type: ignore[valid-type]
                                     namespaced=False) | None = None
    """The serving pods' PriorityClass (it must exist). Higher than the TrainingJobs' so that serving, scaling
    out onto full GPU nodes, preempts training workers (their job resumes from its checkpoint)."""
    pool: object_name("pool", "ModelPool") | None = None  # type: ignore[valid-type]
    """Serve as copies on this ModelPool's servers (same namespace) instead of pods of its own: replicas (or
    autoscaling's min/max) count copies, resources.memory is the declared size of one copy (the first estimate
    until measured)."""

    @model_validator(mode="after")
    def _pooled(self) -> Self:
        if self.pool is None:
            return self
        if self.repository.uri:
            raise ValueError(POOL_URI)
        if self.resources.gpus or self.resources.cpu:
            raise ValueError(POOL_COMPUTE)
        if self.triton.extra_args:
            raise ValueError(POOL_ARGS)
        if self.autoscaling and self.autoscaling.provider != "builtin":
            raise ValueError(POOL_HPA)
        return self


class EvaluationSetScore(ApiModel):
    """Both revisions' scores on one evaluation set (the same rows for both)."""

    name: Literal["candidate", "stable", "reference"]
    """Whose set: the candidate version's own held-out set, the stable version's, or the spec's referenceSet."""
    source: str
    """Where the set came from (a version's held-out set, the reference file)."""
    accuracy: float | None = None
    """The candidate's score (none: it could not be scored on this set; note says why)."""
    stable_accuracy: float | None = None
    samples: int | None = None
    """Rows both scores were computed on."""
    sha256: str | None = None
    note: str | None = None
    """Rows left out, a score missing, and why."""


class EvaluationStatus(ApiModel):
    """The evaluation gate's record for one revision (also on its Deployment, annotation modelops.dev/evaluation)."""

    verdict: Literal["Pending", "Passed", "Failed", "Skipped"]
    metric: str | None = None
    accuracy: float | None = None
    """The candidate's score on its own held-out set."""
    stable_accuracy: float | None = None
    """The stable revision's score on the same held-out set."""
    stable_revision: str | None = None
    samples: int | None = None
    sha256: str | None = None
    """Fingerprint of the held-out set both scores were computed on."""
    sets: list[EvaluationSetScore] | None = None
    """Each set the candidate was scored on (its own, the stable version's, the reference set), both scores."""
    attempts: int | None = None
    message: str = ""


class LastEvaluation(EvaluationStatus):
    revision: str
    version: int | None = None


class TrainingJobReference(ApiModel):
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class Lineage(ApiModel):
    """Where a served version came from (metadata.json of the version, and the TrainingJob that published it)."""

    training_job: TrainingJobReference | None = None
    image: str | None = None
    """The trainer image that produced the version."""
    dataset_fingerprint: str | None = None
    test_accuracy: float | None = None
    """The trainer's own test accuracy."""
    created_at: str | None = None


class RevisionStatus(ApiModel):
    name: str
    version: int
    replicas: int = 0
    ready_replicas: int = 0
    accuracy: float | None = None
    """Held-out accuracy: measured through this revision by the evaluation gate, else the trainer's."""
    evaluation: EvaluationStatus | None = None
    lineage: Lineage | None = None


class CanaryStatus(RevisionStatus):
    step: int = 0
    weight: int = 0
    step_started_at: str | None = None
    started_at: str | None = None


class AnalysisStatus(ApiModel):
    time: str
    verdict: Literal["Passed", "Failed", "Inconclusive"]
    error_rate: float | None = None
    p99_latency_ms: float | None = None
    requests: float | None = None
    stable_error_rate: float | None = None
    stable_p99_latency_ms: float | None = None
    stable_requests: float | None = None
    latency_ratio: float | None = None
    """Canary p99 over stable p99 in the same window."""
    message: str = ""


class AutoscalingStatus(ApiModel):
    metric: str
    value: float | None = None
    target: float
    desired_replicas: int
    last_scale_time: str | None = None
    reason: str = ""


class PooledStatus(ApiModel):
    """Where a pooled ModelService's copies serve."""

    name: str
    """The ModelPool."""
    copies: int = 0
    """Ready copies of the version the Service routes to."""
    servers: list[str] = []
    """The pool servers the Service's EndpointSlice lists."""
    canary_servers: list[str] | None = None
    """Where the new version is ready, while it is placed."""


class ColdStartStatus(ApiModel):
    """Scale from zero, as the operator sees it (the activator's histogram has every cold start)."""

    held_since: str | None = None
    """When the activator reported the first request held now (unset while nothing is held)."""
    held: int | None = None
    """Requests the activators hold now."""
    woken_at: str | None = None
    """When the operator saw demand with nothing ready (cleared once a replica is ready)."""
    last_seconds: float | None = None
    """The last cold start: demand seen to the model ready on a pod (or copy)."""
    last_time: str | None = None


class ModelServiceStatus(ApiModel):
    observed_generation: int | None = None
    phase: Literal["Pending", "Progressing", "Ready", "Degraded"] | None = None
    conditions: list[Condition] = conditions_field()
    model_version: int | None = None
    """The version the stable revision serves."""
    replicas: int = 0
    ready_replicas: int = 0
    ready: str | None = None
    """ready/desired replicas, for `kubectl get`."""
    selector: str | None = None
    """Label selector of the serving pods (the scale subresource's)."""
    stable: RevisionStatus | None = None
    canary: CanaryStatus | None = None
    canary_summary: str | None = None
    last_analysis: AnalysisStatus | None = None
    rejected_revision: str | None = None
    """The last revision rolled back; it is not retried until the spec changes."""
    last_evaluation: LastEvaluation | None = None
    """The evaluation gate's last verdict (kept after a rejected revision is gone)."""
    autoscaling: AutoscalingStatus | None = None
    url: str | None = None
    pool: PooledStatus | None = None
    """A pooled ModelService's copies (spec.pool)."""
    cold_start: ColdStartStatus | None = None
    """Scale to zero (autoscaling.minReplicas 0): requests held, and the last cold start's duration."""
