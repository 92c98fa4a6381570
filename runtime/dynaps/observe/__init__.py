"""``dynaps status`` and ``dynaps logs``: a job seen from outside, on Kubernetes or local.

A job's state comes from one of two sources, both turned into one :class:`view.JobView`:
the ParameterServerJob's ``.status`` and its pods (through the ``kubectl`` binary: the
runtime never imports a Kubernetes client), or a coordinator's ``/status`` over HTTP (a
local ``dynaps run``). The view is rendered as text by pure functions, so what a user reads
is tested on documents, not on clusters.

    view      JobView and the two documents it is built from (pure)
    render    JobView -> text, progress and throughput between two samples (pure)
    runfile   where ``dynaps run`` leaves its coordinator's address and token
    sources   fetching: kubectl and the coordinator's HTTP endpoint
    streams   prefixed, whole-line merging of many output streams (logs, ``dynaps run``)
    podlogs   ``dynaps logs``: every pod's ``kubectl logs``, one after the other or followed at once
    commands  the ``status`` and ``logs`` verbs: arguments, the watch loop, exit codes
"""
