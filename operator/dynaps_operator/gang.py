"""Gang scheduling and queueing: the PodGroup a job's scheduler reads, and what ties each pod to it.

A parameter-server job is useless half-started: servers and workers wait for each other, and
the pods that did start hold their nodes for nothing.  ``runPolicy.schedulingPolicy`` names
who places the pods all or nothing (pure builders; the reconciler creates what they return):

* ``scheduler: coscheduling`` (scheduler-plugins' Coscheduling): a ``scheduling.x-k8s.io/v1alpha1``
  PodGroup with ``minMember`` (and ``scheduleTimeoutSeconds``); each pod carries the label
  ``scheduling.x-k8s.io/pod-group`` and the plugin's ``schedulerName``;
* ``scheduler: volcano``: a ``scheduling.volcano.sh/v1beta1`` PodGroup with ``minMember``,
  ``queue`` and ``priorityClassName``; each pod carries the annotation
  ``scheduling.k8s.io/group-name`` and ``schedulerName: volcano``;
* ``kueueQueue`` (with any of the above, or alone): Kueue's plain-pod group integration; each
  pod carries ``kueue.x-k8s.io/queue-name`` and ``kueue.x-k8s.io/pod-group-name`` and the
  annotation ``kueue.x-k8s.io/pod-group-total-count`` (every pod of the job), so Kueue admits
  the job whole once all its pods exist.

The PodGroup has the job's name and an owner reference to it (deleted with the job); its
``minMember`` follows the spec (:meth:`JobSpec.gang_size`), so a scale that changes it patches it.
"""

from __future__ import annotations

from typing import Any

from dynaps.contract import GangScheduler, ParameterServerJob

JsonDict = dict[str, Any]

# scheduler-plugins (sigs.k8s.io/scheduler-plugins apis/scheduling/v1alpha1)
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
# Where the scheduler-plugins Helm chart installs Coscheduling (as a second scheduler); a cluster
# that enables the plugin in its default scheduler sets ``schedulerName: default-scheduler``.
COSCHEDULING_SCHEDULER = "scheduler-plugins-scheduler"
# Volcano (volcano.sh/apis pkg/apis/scheduling/v1beta1)
VOLCANO_API = "scheduling.volcano.sh/v1beta1"
VOLCANO_ANNOTATION = "scheduling.k8s.io/group-name"
VOLCANO_SCHEDULER = "volcano"
# Kueue's pod integration (kueue.sigs.k8s.io "Run Plain Pods": a group of pods admitted together)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"

POD_GROUP_KIND = "PodGroup"
POD_GROUP_PLURAL = "podgroups"
_APIS = {GangScheduler.COSCHEDULING: COSCHEDULING_API, GangScheduler.VOLCANO: VOLCANO_API}


def pod_group_api(job: ParameterServerJob) -> str | None:
    """``group/version`` of the job's PodGroup; None when no gang scheduler is named."""
    return _APIS.get(job.spec.run_policy.scheduling_policy.scheduler)


def scheduler_name(job: ParameterServerJob) -> str | None:
    """The pods' ``schedulerName``: the spec's, else the gang scheduler's (None: the cluster's)."""
    policy = job.spec.run_policy.scheduling_policy
    if policy.scheduler_name is not None:
        return policy.scheduler_name
    return {
        GangScheduler.COSCHEDULING: COSCHEDULING_SCHEDULER,
        GangScheduler.VOLCANO: VOLCANO_SCHEDULER,
    }.get(policy.scheduler)


def build_pod_group(job: ParameterServerJob, metadata: JsonDict) -> JsonDict | None:
    """The job's PodGroup for its gang scheduler (None without one); ``metadata`` is the
    child metadata (name, namespace, labels, owner reference) the reconciler gives every child."""
    api = pod_group_api(job)
    if api is None:
        return None
    policy = job.spec.run_policy.scheduling_policy
    spec: JsonDict = {"minMember": job.spec.gang_size()}
    if policy.scheduler == GangScheduler.COSCHEDULING:
        if policy.schedule_timeout_seconds is not None:
            spec["scheduleTimeoutSeconds"] = policy.schedule_timeout_seconds
    else:
        if policy.queue is not None:
            spec["queue"] = policy.queue
        if policy.priority_class is not None:
            spec["priorityClassName"] = policy.priority_class
    return {"apiVersion": api, "kind": POD_GROUP_KIND, "metadata": metadata, "spec": spec}


def pod_layer(job: ParameterServerJob, group: str) -> JsonDict:
    """What ties a pod to its gang and queue (merged over the pod; empty without either):
    labels, annotations and ``schedulerName``; ``group`` is the PodGroup's (and Kueue group's) name."""
    policy = job.spec.run_policy.scheduling_policy
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if policy.scheduler == GangScheduler.COSCHEDULING:
        labels[COSCHEDULING_LABEL] = group
    elif policy.scheduler == GangScheduler.VOLCANO:
        annotations[VOLCANO_ANNOTATION] = group
    if policy.kueue_queue is not None:
        labels[KUEUE_QUEUE_LABEL] = policy.kueue_queue
        labels[KUEUE_GROUP_LABEL] = group
        annotations[KUEUE_TOTAL_ANNOTATION] = str(job.spec.pod_count())
    layer: JsonDict = {}
    metadata = {key: value for key, value in (("labels", labels), ("annotations", annotations)) if value}
    if metadata:
        layer["metadata"] = metadata
    name = scheduler_name(job)
    if name is not None:
        layer["spec"] = {"schedulerName": name}
    return layer
