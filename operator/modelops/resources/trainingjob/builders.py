"""The TrainingJob's desired children: worker pods and the rendezvous Service of a multi-pod group."""

from __future__ import annotations

import json
from typing import Any

from modelops.api.trainingjob import TrainingJobSpec
from modelops.resources.kueue import Placement
from modelops.resources.pods import compute_resources, scheduling, tolerations
from modelops.resources.trainingjob.names import (ANNOTATION_ENDED_ATTEMPTS, ANNOTATION_POD_SPEC, LABEL_ATTEMPT,
                                                  LABEL_JOB, LABEL_RANK, RENDEZVOUS_PORT, TRAINER_CONTAINER, JobMeta,
                                                  job_label, pod_name, service_name, worker_hostname)

REPOSITORY_VOLUME = "model-repository"
DEFAULT_COMMAND = ["python", "-m", "modelops.trainer"]
# Spec fields that only steer the controller; every other field shapes the pods.
CONTROL_FIELDS = {"suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"}
LOCAL_MASTER = "127.0.0.1"


def pod_shaping_spec(spec: TrainingJobSpec) -> dict[str, Any]:
    """The part of the spec that shapes the pods; pods record it to detect edits of a running group."""
    return {k: v for k, v in spec.wire().items() if k not in CONTROL_FIELDS}


def trainer_args(spec: TrainingJobSpec) -> list[str]:
    t = spec.trainer
    args = ["--data-path", t.data_path, "--label-column", t.label_column] if t.data_path else \
        ["--dataset", t.dataset or "digits"]
    args += [
        "--missing", t.missing, *(["--model", t.model] if t.model else []), "--hidden-sizes", ",".join(map(str, t.hidden_sizes)),
        "--epochs", str(t.epochs), "--batch-size", str(t.batch_size), "--lr", repr(t.learning_rate),
        "--seed", str(t.seed), "--augment" if t.augment else "--no-augment",
        "--val-fraction", repr(t.val_fraction), "--test-fraction", repr(t.test_fraction),
        "--max-batch-size", str(t.max_batch_size),
        "--embedding-dim", str(t.embedding_dim), "--layers", str(t.layers), "--heads", str(t.heads),
        "--max-length", str(t.max_length), *(["--vocab-size", str(t.vocab_size)] if t.vocab_size else []),
        "--repository", spec.output.repository.mount_path, "--model-name", spec.output.model_name,
    ]
    return args


def rendezvous_env(job: JobMeta, spec: TrainingJobSpec, rank: int) -> list[dict[str, Any]]:
    """The pod's rendezvous env, torchrun semantics: pod `rank` (GROUP_RANK, torchrun's node rank) runs
    LOCAL_WORLD_SIZE = nprocPerNode ranks of a WORLD_SIZE = workers x nprocPerNode group. RANK/LOCAL_RANK
    name the pod's first process; the built-in trainer (or torchrun, from the PET_* variables) starts
    the pod's processes and gives each its own RANK = GROUP_RANK x LOCAL_WORLD_SIZE + LOCAL_RANK."""
    nproc = spec.ranks_per_pod()
    world = spec.workers * nproc
    env: dict[str, Any] = {"WORLD_SIZE": world, "RANK": rank * nproc, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": nproc,
                           "GROUP_RANK": rank, "NODE_RANK": rank}
    if world > 1:
        master = f"{worker_hostname(job.name, 0)}.{service_name(job.name)}" if spec.workers > 1 else LOCAL_MASTER
        env |= {"MASTER_ADDR": master, "MASTER_PORT": RENDEZVOUS_PORT,
                "PET_NNODES": spec.workers, "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": rank,
                "PET_MASTER_ADDR": master, "PET_MASTER_PORT": RENDEZVOUS_PORT}
    return [{"name": k, "value": str(v)} for k, v in env.items()]


def worker_pod(job: JobMeta, spec: TrainingJobSpec, attempt: int, rank: int,
               ended: dict[int, str] | None = None, placement: Placement | None = None) -> dict[str, Any]:
    """Worker `rank` of `attempt`; `placement`: where a Kueue admission puts it (its flavors' node labels and
    tolerations, added to the spec's)."""
    repository = spec.output.repository
    env = [e.wire() for e in spec.env] + rendezvous_env(job, spec, rank) + [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MODELOPS_JOB_NAME", "value": job.name},
        {"name": "MODELOPS_JOB_UID", "value": job.uid},
        {"name": "MODELOPS_TRAINER_IMAGE", "value": spec.image},  # lineage, recorded with the published version
        {"name": "MODELOPS_ATTEMPT", "value": str(attempt)},
        {"name": "MODELOPS_REPOSITORY", "value": repository.mount_path},
        {"name": "MODELOPS_MODEL_NAME", "value": spec.output.model_name},
    ]
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER, "image": spec.image, "imagePullPolicy": spec.image_pull_policy,
        "command": spec.command or DEFAULT_COMMAND,
        "args": spec.args if spec.args is not None else ([] if spec.command else trainer_args(spec)),
        "env": env,
        "resources": compute_resources(spec.resources),
        "volumeMounts": [{"name": REPOSITORY_VOLUME, "mountPath": repository.mount_path}],
    }
    if spec.workers > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod_tolerations = tolerations(spec.tolerations, spec.resources)
    if repository.persistent_volume_claim:
        volume = {"name": REPOSITORY_VOLUME, "persistentVolumeClaim": repository.persistent_volume_claim.wire()}
    else:
        assert repository.host_path is not None  # the schema requires exactly one source
        volume = {"name": REPOSITORY_VOLUME, "hostPath": {"path": repository.host_path.path,
                                                         "type": "DirectoryOrCreate"}}
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": [volume]}
    if placement:
        pod_tolerations += [t for t in placement.tolerations if t not in pod_tolerations]
    node_selector = {**spec.node_selector, **(placement.node_selector if placement else {})}
    pod_spec.update(scheduling(pod_tolerations, node_selector, spec.priority_class_name))
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.scheduler_name:
        pod_spec["schedulerName"] = spec.scheduler_name
    if spec.affinity and spec.affinity.node_affinity:
        pod_spec["affinity"] = spec.affinity.wire()
    if spec.workers > 1:
        pod_spec["hostname"] = worker_hostname(job.name, rank)
        pod_spec["subdomain"] = service_name(job.name)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": job.child_metadata(
            pod_name(job.name, attempt, rank),
            {**spec.pod_labels, "app.kubernetes.io/name": "modelops-trainer",
             LABEL_JOB: job_label(job.name), LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)},
            {**spec.pod_annotations, ANNOTATION_POD_SPEC: json.dumps(pod_shaping_spec(spec), sort_keys=True),
             **({ANNOTATION_ENDED_ATTEMPTS: json.dumps({str(a): o for a, o in sorted(ended.items())})}
                if ended else {})}),
        "spec": pod_spec,
    }


def rendezvous_service(job: JobMeta) -> dict[str, Any]:
    """Headless Service giving each DDP worker a stable DNS name (<hostname>.<service>)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": job.child_metadata(service_name(job.name), {LABEL_JOB: job_label(job.name)}),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {LABEL_JOB: job_label(job.name)},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]},
    }


def group_objects(job: JobMeta, spec: TrainingJobSpec, attempt: int, existing: set[int],
                  ended: dict[int, str], placement: Placement | None = None) -> list[dict[str, Any]]:
    """The group's desired objects: its rendezvous Service (always, so a deleted one comes back) and the
    pods of missing ranks (only while none was created: a group is started whole, once). The writer
    writes only what differs from what exists."""
    objects = [rendezvous_service(job)] if spec.workers > 1 else []
    return objects + [worker_pod(job, spec, attempt, rank, ended, placement) for rank in range(spec.workers)
                      if rank not in existing]
