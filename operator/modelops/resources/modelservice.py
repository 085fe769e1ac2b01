"""Pure builders for a ModelService's children: one Deployment + ConfigMap per revision, a Service, extras.

A revision is one model version served with one set of serving settings; its name carries the version
and a hash of everything that shapes its pods, so the same spec always gives the same names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from modelops import API_VERSION
from modelops.api.modelservice import ModelServiceSpec, ModelSignature
from modelops.quantities import quantity
from modelops.resources.meta import MANAGED_BY, MANAGED_BY_LABEL, OwnerMeta
from modelops.resources.pods import compute_resources, scheduling, tolerations
from modelops.resources.naming import dns1035_label, dns_label
from modelops.triton.config import PYTHON_MODEL_FILE, Backend, InstanceKind, python_model_source, render_config
from modelops.triton.signature import Signature, TensorSpec

LABEL_SERVICE = "modelops.dev/model-service"
LABEL_REVISION = "modelops.dev/revision"
LABEL_VERSION = "modelops.dev/model-version"
LABEL_EVALUATES = "modelops.dev/evaluates"
"""On an evaluation pod: the revision it evaluates (not the serving label: it must never join the Service)."""
MODEL_READY_GATE = "modelops.dev/model-ready"
# What the readiness-gate check needs, carried on each pod so it never has to look anything else up.
ANNOTATION_MODEL = "modelops.dev/model"
ANNOTATION_SIGNATURE = "modelops.dev/signature"
ANNOTATION_SERVICE_NAME = "modelops.dev/model-service-name"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
REPOSITORY_ROOT = "/models"
"""Where a pod mounts the published version folder it serves (read-only), and Triton's repository for pytorch."""
SERVING_ROOT = "/serving"
"""Triton's repository for the python backend: only the revision's config.pbtxt and the operator's runtime."""
SUMMARY_QUANTILES = "0.5:0.05,0.99:0.001"
"""Triton's latency summaries: quantile:error pairs (p99 within 0.1% rank, as Triton's default)."""


@dataclass(frozen=True)
class Target:
    """The model version the spec asks for, with its signature (None when unknown)."""

    version: int
    signature: dict[str, Any] | None
    lineage: dict[str, Any] | None = None
    """What the followed TrainingJob says of the version (its name, uid, image, dataset fingerprint)."""


@dataclass(frozen=True)
class ServiceMeta(OwnerMeta):
    kind: ClassVar[str] = "ModelService"

    @property
    def label(self) -> str:
        return dns_label(self.name)

    @property
    def selector(self) -> dict[str, str]:
        return {LABEL_SERVICE: self.label}


def model_ready_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's model-ready condition (its readiness gate, set by the model check), if set."""
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == MODEL_READY_GATE),
                None)


def revision_name(ms: ServiceMeta, spec: ModelServiceSpec, target: Target) -> str:
    """<ms>-v<version>-<hash of what shapes the pods>: the rendered pod template and config.pbtxt (as
    Kubernetes' pod-template-hash), not the spec's fields, so a field added to the API with a default that
    changes nothing in the pods never renames every revision (which would roll a canary everywhere)."""
    placeholder = "revision"
    shaping = {"template": deployment(ms, spec, placeholder, target, replicas=0)["spec"]["template"],
               "config": config_map(ms, spec, placeholder, target)["data"] if target.signature else None}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:5]
    return dns_label(ms.name, f"-v{target.version}-{digest}")


def revision_version(ms: ServiceMeta, name: str) -> int | None:
    """The model version a revision of `ms` serves, as its name says (a name cannot be edited; a label can),
    or None when `name` is not one of its revisions' names."""
    found = re.search(r"-v(\d+)-([0-9a-f]{5})$", name)
    if not found or dns_label(ms.name, f"-v{found.group(1)}-{found.group(2)}") != name:
        return None
    return int(found.group(1))


def revision_labels(ms: ServiceMeta, revision: str, version: int) -> dict[str, str]:
    """The labels a revision's Deployment carries (the managed-by label comes with its child metadata)."""
    return {**ms.selector, LABEL_REVISION: revision, LABEL_VERSION: str(version)}


def service_name(ms: ServiceMeta) -> str:
    return dns1035_label(ms.name)


def _metadata(ms: ServiceMeta, name: str, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return ms.child_metadata(name, {**ms.selector, **(labels or {})}, annotations)


def triton_signature(signature: dict[str, Any]) -> Signature:
    parsed = ModelSignature.model_validate(signature)

    def tensors(items: list[Any]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.dims)) for t in items)

    classes = parsed.outputs[0].dims[-1]
    return Signature(inputs=tensors(parsed.inputs), outputs=tensors(parsed.outputs), num_classes=max(classes, 0))


def config_map(ms: ServiceMeta, spec: ModelServiceSpec, revision: str, target: Target) -> dict[str, Any]:
    """The revision's config.pbtxt: serving settings from the spec, the version pinned; for the python backend
    also the operator's runtime (model.py), so that every version, whenever published, is served by it. Both
    are in the revision's hash: a new runtime rolls the python-backend revisions like any other change."""
    assert target.signature is not None
    backend = Backend(spec.triton.backend)
    python = backend is Backend.PYTHON
    text = render_config(
        spec.model.name, triton_signature(target.signature), backend=backend,
        max_batch_size=spec.triton.max_batch_size,
        preferred_batch_sizes=spec.triton.dynamic_batching.preferred_batch_sizes,
        max_queue_delay_us=spec.triton.dynamic_batching.max_queue_delay_microseconds,
        instance_count=spec.triton.instance_count,
        instance_kind=InstanceKind.GPU if spec.resources.gpus else InstanceKind.AUTO, version=target.version,
        cpu_cores=cpu_cores(spec), gpus=spec.resources.gpus,
        version_directory=version_path(spec.model.name, target.version) if python else None)
    # What this revision serves, recorded where it outlives a followed TrainingJob (see served_target).
    served = {ANNOTATION_MODEL: f"{spec.model.name}:{target.version}",
              ANNOTATION_SIGNATURE: json.dumps(target.signature, sort_keys=True)}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(ms, revision, {LABEL_REVISION: revision}, served),
            "data": {"config.pbtxt": text, **({PYTHON_MODEL_FILE: python_model_source()} if python else {})}}


def version_path(model: str, version: int) -> str:
    """Where serving and evaluation pods mount the published version folder."""
    return f"{REPOSITORY_ROOT}/{model}/{version}"


def cpu_cores(spec: ModelServiceSpec) -> float | None:
    """The serving pod's CPU limit in cores (spec.resources.cpu), None when unset: then the python-backend
    runtime finds the cores at run time."""
    cores = quantity(spec.resources.cpu) if spec.resources.cpu else None
    return float(cores) if cores is not None and cores > 0 else None


def served_target(config: dict[str, Any], model: str) -> Target | None:
    """The version and signature a revision's ConfigMap records it serves (None if unreadable or for
    another model): what to keep serving when the TrainingJob a ModelService follows is gone."""
    annotations = (config.get("metadata") or {}).get("annotations") or {}
    name, _, version = str(annotations.get(ANNOTATION_MODEL, "")).partition(":")
    try:
        signature = json.loads(annotations.get(ANNOTATION_SIGNATURE, ""))
        number = int(version)
    except ValueError:
        return None
    if name != model or number < 1 or not isinstance(signature, dict):
        return None
    return Target(number, signature)


def deployment(ms: ServiceMeta, spec: ModelServiceSpec, revision: str, target: Target,
               replicas: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The revision's Deployment; `annotations` record its part in the rollout (see modelservice_plan)."""
    model, version = spec.model.name, target.version
    repository = spec.repository
    args = ["--model-control-mode=explicit", f"--load-model={model}", "--strict-readiness=true",
            # A model that fails to load must not crash-loop the server: the readiness gate reports it.
            "--exit-on-error=false", f"--http-port={HTTP_PORT}", f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}", "--allow-metrics=true", "--metrics-config=summary_latencies=true",
            # Only the quantiles the rollout analysis and the dashboards read: every quantile costs CPU on
            # every request (measured: Triton's default four cost 4-9% of the throughput of a small model).
            f"--metrics-config=summary_quantiles={SUMMARY_QUANTILES}"]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if repository.uri:
        args.insert(0, f"--model-repository={repository.uri}")
    else:
        # Only this version's folder and our ConfigMap: the pod cannot see or load anything else. The python
        # backend's Triton repository holds only the ConfigMap's files (the runtime finds the version folder
        # through config.pbtxt), so a model.py an older trainer left in the version folder is never loaded, and
        # no mount point has to be made inside the read-only version folder (which a container runtime cannot).
        python = Backend(spec.triton.backend) is Backend.PYTHON
        triton_root = SERVING_ROOT if python else REPOSITORY_ROOT
        args.insert(0, f"--model-repository={triton_root}")
        source = ({"persistentVolumeClaim": {**repository.persistent_volume_claim.wire(), "readOnly": True}}
                  if repository.persistent_volume_claim else
                  {"hostPath": {"path": repository.host_path.path, "type": "Directory"}})  # type: ignore[union-attr]
        volumes = [{"name": "model-repository", **source},
                   {"name": "model-config", "configMap": {"name": revision}}]
        mounts = [{"name": "model-repository", "mountPath": version_path(model, version),
                   "subPath": f"{model}/{version}", "readOnly": True},
                  {"name": "model-config", "mountPath": f"{triton_root}/{model}/config.pbtxt",
                   "subPath": "config.pbtxt", "readOnly": True}]
        if python:
            mounts.append({"name": "model-config", "mountPath": f"{triton_root}/{model}/{version}/{PYTHON_MODEL_FILE}",
                           "subPath": PYTHON_MODEL_FILE, "readOnly": True})
    container = {
        "name": "triton", "image": spec.triton.image, "command": ["tritonserver"],
        "args": args + list(spec.triton.extra_args),
        "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                           "periodSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                          "initialDelaySeconds": 30, "periodSeconds": 10, "failureThreshold": 6},
        "resources": compute_resources(spec.resources),
        "volumeMounts": mounts,
    }
    pod_tolerations = tolerations(spec.tolerations, spec.resources)
    pod_labels = {**ms.selector, LABEL_REVISION: revision, LABEL_VERSION: str(version),
                  "app.kubernetes.io/name": "modelops-triton", MANAGED_BY_LABEL: MANAGED_BY}
    pod_spec: dict[str, Any] = {"containers": [container], "volumes": volumes,
                                "readinessGates": [{"conditionType": MODEL_READY_GATE}]}
    pod_spec.update(scheduling(pod_tolerations, spec.node_selector, spec.priority_class_name))
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(ms, revision, revision_labels(ms, revision, version), annotations),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {**ms.selector, LABEL_REVISION: revision}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                    ANNOTATION_MODEL: f"{model}:{version}", ANNOTATION_SERVICE_NAME: ms.name,
                    ANNOTATION_SIGNATURE: json.dumps(target.signature, sort_keys=True)}},
                "spec": pod_spec,
            },
        },
    }


def served_by(pod: dict[str, Any]) -> list[str]:
    """Cache index of serving pods by the ModelService their template names ('<namespace>/<name>'): an
    annotation, so a pod whose labels were edited (and that its ReplicaSet let go of) is still found."""
    meta = pod.get("metadata") or {}
    name = (meta.get("annotations") or {}).get(ANNOTATION_SERVICE_NAME)
    return [f"{meta.get('namespace', '')}/{name}"] if isinstance(name, str) and name else []


def is_serving_pod(pod: dict[str, Any]) -> bool:
    return bool(served_by(pod))


def evaluation_pod_name(revision: str) -> str:
    return dns_label(revision, "-eval")


def evaluation_pod(ms: ServiceMeta, spec: ModelServiceSpec, revision: str, version: int, image: str, *,
                   candidate: str, stable: tuple[str, int] | None) -> dict[str, Any]:
    """A one-shot pod in the ModelService's namespace that scores the candidate pod's Triton (and the stable
    one's) on the candidate version's held-out set, the stable version's and the reference set, and reports
    the scores on its termination message. `stable`: the stable pod's address ("" when none is ready) and
    version. It mounts only those version folders and the reference file, read-only; the operator itself
    never reads a tenant's volume."""
    model, repository = spec.model.name, spec.repository
    source = ({"persistentVolumeClaim": {**repository.persistent_volume_claim.wire(), "readOnly": True}}
              if repository.persistent_volume_claim else
              {"hostPath": {"path": repository.host_path.path, "type": "Directory"}})  # type: ignore[union-attr]

    def mount(path: str) -> dict[str, Any]:
        return {"name": "model-repository", "mountPath": f"{REPOSITORY_ROOT}/{path}", "subPath": path,
                "readOnly": True}

    folder = version_path(model, version)
    args = ["--version-dir", folder, "--model", model, "--version", str(version), "--candidate", candidate,
            "--batch-size", str(max(1, min(spec.triton.max_batch_size or 1, 64)))]
    mounts = [mount(f"{model}/{version}")]
    if stable:
        address, stable_version = stable
        args += ["--stable", address, "--stable-version", str(stable_version),
                 "--stable-dir", version_path(model, stable_version)]
        if stable_version != version:
            mounts.append(mount(f"{model}/{stable_version}"))
    reference = spec.rollout.gates.evaluation.reference_set
    if reference:
        args += ["--reference", f"{REPOSITORY_ROOT}/{reference.path}", "--reference-name", reference.path]
        args += ["--reference-sha256", reference.sha256] if reference.sha256 else []
        mounts.append(mount(reference.path))
    container = {"name": "evaluate", "image": image, "command": ["python", "-m", "modelops.trainer.evaluate"],
                 "args": args, "terminationMessagePolicy": "FallbackToLogsOnError",
                 "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                 "volumeMounts": mounts,
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": ms.child_metadata(evaluation_pod_name(revision), {
                LABEL_EVALUATES: revision, "app.kubernetes.io/name": "modelops-evaluation"}),
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "enableServiceLinks": False, "containers": [container],
                     "volumes": [{"name": "model-repository", **source}]}}


def service(ms: ServiceMeta) -> dict[str, Any]:
    """One Service over every revision: the replica split between revisions is the traffic split."""
    ports = [{"name": "http", "port": HTTP_PORT, "targetPort": "http"},
             {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
             {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(ms, service_name(ms)),
            "spec": {"selector": ms.selector, "ports": ports}}


def service_monitor(ms: ServiceMeta) -> dict[str, Any]:
    """For clusters running the Prometheus Operator: scrape every serving pod, keeping our labels."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _metadata(ms, service_name(ms)),
        "spec": {"selector": {"matchLabels": ms.selector},
                 "podTargetLabels": [LABEL_SERVICE, LABEL_REVISION],
                 "endpoints": [{"port": "metrics", "interval": "5s"}]},
    }


def horizontal_pod_autoscaler(ms: ServiceMeta, spec: ModelServiceSpec) -> dict[str, Any]:
    """A native HPA on the ModelService's scale subresource (needs a Prometheus metrics adapter exposing
    the per-pod metric `modelops_<metric>`)."""
    scaling = spec.autoscaling
    assert scaling is not None

    def behavior(rules: Any) -> dict[str, Any]:
        return {"stabilizationWindowSeconds": rules.stabilization_window_seconds, "selectPolicy": "Max",
                "policies": [{"type": "Pods", "value": rules.max_step_replicas, "periodSeconds": rules.period_seconds},
                             {"type": "Percent", "value": rules.max_step_percent,
                              "periodSeconds": rules.period_seconds}]}

    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _metadata(ms, service_name(ms)),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": "ModelService", "name": ms.name},
            "minReplicas": scaling.min_replicas, "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": f"modelops_{scaling.metric}"},
                "target": {"type": "AverageValue", "averageValue": _quantity(scaling.target)}}}],
            "behavior": {"scaleUp": behavior(scaling.scale_up), "scaleDown": behavior(scaling.scale_down)},
        },
    }


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(value * 1000)}m"


def split_replicas(total: int, canary_weight: int) -> tuple[int, int]:
    """(stable, canary) replicas realising `canary_weight`% of `total`; each side keeps at least one
    replica while both serve (weight 100 moves everything to the canary)."""
    if canary_weight <= 0 or total <= 0:
        return total, 0
    if canary_weight >= 100:
        return 0, total
    canary = min(max(1, round(total * canary_weight / 100)), max(total - 1, 1))
    return max(total - canary, 1), canary
