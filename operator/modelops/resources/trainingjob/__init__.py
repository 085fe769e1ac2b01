"""Pure planning for TrainingJobs: from the spec and the observed worker pods to desired objects and status.

The worker group of one attempt is `workers` pods named <job>-a<attempt>-w<rank>. A DDP group cannot
continue short a rank, so any worker that ends or disappears without succeeding ends the attempt: the rest
are deleted and attempt+1 starts (resuming from the checkpoint). How an attempt ended is recorded:
- Failed: a worker failed on its own (its container exited non-zero). Counts against `backoffLimit`.
- Preempted: Kubernetes or a person took a worker away: preempted by the scheduler, evicted (Eviction API,
  node drain, node pressure), its node lost, or deleted (pod condition DisruptionTarget, or a deletion
  while it ran). Not a failure: `backoffLimit` is not consumed; status.preemptions counts them.
- Suspended: spec.suspend removed the group.
No I/O here: the controller observes, `plan_job` plans, the one writer writes.

One concern per module, in the order a pass uses them:
- names:    what the children are called and carry (names, labels, annotations, outcomes)
- observe:  what the pods and the last status say, read defensively
- reports:  what the trainer reports (progress, the published model), checked
- ledger:   the attempts: which is current, how the earlier ones ended, whether this pass ends one
- phase:    where the job stands and why, what that does to its workers, its clock
- queue:    the job's side of Kueue (its Workload's writes, the queue's conditions and status)
- builders: the desired children (worker pods, the rendezvous Service)
- status:   the status and the Events of its transitions
- planner:  the steps composed into one pass's plan
"""

from modelops.resources.trainingjob.builders import (group_objects, pod_shaping_spec, rendezvous_env,
                                                     rendezvous_service, trainer_args, worker_pod)
from modelops.resources.trainingjob.names import (ANNOTATION_ENDED_ATTEMPTS, ANNOTATION_POD_SPEC, ANNOTATION_PROGRESS,
                                                  FAILED, LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK, PREEMPTED,
                                                  RENDEZVOUS_PORT, SUSPENDED, TERMINAL, TRAINER_CONTAINER, JobMeta,
                                                  job_label, pod_name, service_name, worker_hostname)
from modelops.resources.trainingjob.observe import ObservedPod, ended_attempts_of, untrusted_workers
from modelops.resources.pods import WAIT_MESSAGE_LIMIT
from modelops.resources.trainingjob.planner import RESYNC_SECONDS, Plan, plan, plan_job

__all__ = [
    "ANNOTATION_ENDED_ATTEMPTS", "ANNOTATION_POD_SPEC", "ANNOTATION_PROGRESS", "FAILED", "LABEL_ATTEMPT", "LABEL_JOB",
    "LABEL_RANK", "PREEMPTED", "RENDEZVOUS_PORT", "RESYNC_SECONDS", "SUSPENDED", "TERMINAL", "TRAINER_CONTAINER",
    "WAIT_MESSAGE_LIMIT", "JobMeta", "ObservedPod", "Plan", "ended_attempts_of", "group_objects", "job_label",
    "plan", "plan_job", "pod_name", "pod_shaping_spec", "rendezvous_env", "rendezvous_service", "service_name",
    "trainer_args", "untrusted_workers", "worker_hostname", "worker_pod",
]
