"""What a TrainingJob's children are called and what they carry: names, labels, annotations, outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelops.resources.meta import OwnerMeta
from modelops.resources.naming import dns1035_label, dns_label

LABEL_JOB = "modelops.dev/training-job"
LABEL_RANK = "modelops.dev/rank"
LABEL_ATTEMPT = "modelops.dev/attempt"
ANNOTATION_PROGRESS = "modelops.dev/progress"
ANNOTATION_POD_SPEC = "modelops.dev/pod-spec"
ANNOTATION_ENDED_ATTEMPTS = "modelops.dev/ended-attempts"
# How an attempt ended (status.endedAttempts values).
FAILED, PREEMPTED, SUSPENDED = "Failed", "Preempted", "Suspended"
# The phases a pod and a job end in.
TERMINAL = ("Succeeded", "Failed")
TRAINER_CONTAINER = "trainer"
RENDEZVOUS_PORT = 29500


@dataclass(frozen=True)
class JobMeta(OwnerMeta):
    kind: ClassVar[str] = "TrainingJob"


def job_label(job: str) -> str:
    return dns_label(job)


def pod_name(job: str, attempt: int, rank: int) -> str:
    return dns_label(job, f"-a{attempt}-w{rank}")


def service_name(job: str) -> str:
    return dns1035_label(job, "-workers")


def worker_hostname(job: str, rank: int) -> str:
    return dns_label(job, f"-w{rank}")
