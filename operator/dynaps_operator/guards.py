"""What must hold before the operator creates a job's pods, and why it creates none otherwise.

The operator creates pods with its own rights, so it creates none that would use what is not
the job's (docs/security.md):

* the job's Secret (``<job>-secret``) must be the job's: one of that name owned by anything
  else is never used (``SecretConflict``); its token, read once, is what the coordinator's
  HTTP endpoint wants;
* a child of the job's name that the operator makes (ConfigMap ``<job>-config``, the
  NetworkPolicy, the gang scheduler's PodGroup, the Service) and finds made already must be
  the job's too: someone else's is never patched nor relied on (``NameConflict``), e.g. a
  leftover of a deleted job of the same name before garbage collection takes it, or a team's
  own ConfigMap that happens to be called ``app-config``;
* every Secret, ConfigMap and claim the job's templates name must be marked for the
  namespace's jobs (``ReferenceNotAllowed``; :mod:`dynaps_operator.references`).

A problem found while applying a plan is remembered per job and looked at again on every
pass (:meth:`ChildGuards.held_back`) until it is gone; meanwhile the planner creates no pod
and the job's Running condition says why.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynaps.contract import ConditionReason, ParameterServerJob, secret
from dynaps_operator import builders, kube, names, references, security
from dynaps_operator.builders import JobRef
from dynaps_operator.decisions import Holdup
from dynaps_operator.errors import ChildNotReadyError, ConflictError, NotFoundError
from dynaps_operator.kube import KubeClient

Key = tuple[str, str]  # (namespace, name)
JsonDict = dict[str, Any]


def secret_conflict_message(ref: JobRef) -> str:
    return (
        f"Secret {names.secret_name(ref.name)} is not this job's (another owner, or not a usable "
        "secret: a leftover of a deleted job of the same name?); no pod is created until it is gone"
    )


def name_conflict_message(what: str) -> str:
    return (
        f"{what} is not this job's (another owner: a leftover of a deleted job of the same name, "
        "or someone else's, which the operator does not change); no pod is created until it is gone"
    )


class ChildGuards:
    def __init__(self, api: KubeClient, allow_privileged: bool) -> None:
        self.api = api
        self.allow_privileged = allow_privileged  # allowPrivilegedJobs: templates may name anything
        # per job, (its uid, the coordinator's HTTP token from its Secret); never logged
        self.tokens: dict[Key, tuple[str, str]] = {}
        # per job, a child of its name that is someone else's: (its path, "Kind name")
        self.conflicts: dict[Key, tuple[str, str]] = {}
        # per job, why it may not use what its templates name
        self.refused: dict[Key, str] = {}

    def forget(self, key: Key) -> None:
        self.tokens.pop(key, None)
        self.conflicts.pop(key, None)
        self.refused.pop(key, None)

    async def held_back(self, key: Key, ref: JobRef, job: ParameterServerJob) -> Holdup | None:
        """What keeps the job's pods from being created, as last seen and looked at again now
        (None: nothing); the planner creates none and says why."""
        conflict = await self.secret_conflict(key, ref)
        if conflict:
            return Holdup(ConditionReason.SECRET_CONFLICT, conflict)
        if key in self.conflicts:
            path, what = self.conflicts[key]
            if await self._foreign(path, ref):
                return Holdup(ConditionReason.NAME_CONFLICT, name_conflict_message(what))
            del self.conflicts[key]
        if key in self.refused:
            problem = await self._reference_problem(ref, job)
            if problem:
                self.refused[key] = problem
                return Holdup(ConditionReason.REFERENCE_NOT_ALLOWED, problem)
            del self.refused[key]
        return None

    # ------------------------------------------------------------------ the job's Secret

    async def token(self, key: Key, ref: JobRef) -> str | None:
        """The coordinator's HTTP token, read from the job's Secret once per job; None when the
        Secret is missing. A Secret owned by something else is never used."""
        if await self.secret_conflict(key, ref):
            raise ChildNotReadyError(secret_conflict_message(ref), delay=2.0)
        cached = self.tokens.get(key)
        return cached[1] if cached is not None else None

    async def secret_conflict(self, key: Key, ref: JobRef) -> str:
        """Why the Secret of the job's name cannot be the job's ("" when it is, or is missing);
        its token is remembered once read."""
        cached = self.tokens.get(key)
        if cached is not None and cached[0] == ref.uid:
            return ""
        try:
            body = await self.api.get(kube.path("secrets", ref.namespace, names.secret_name(ref.name)))
        except NotFoundError:
            return ""
        token = security.token_of(body, ref.uid)
        if token is None:
            return secret_conflict_message(ref)
        self.tokens[key] = (ref.uid, token)
        return ""

    async def ensure_secret(self, key: Key, ref: JobRef) -> None:
        """The job's Secret exists before any of its pods (they mount it)."""
        if await self.token(key, ref) is not None:
            return
        value = secret.new_secret()
        try:
            await self.api.create(kube.path("secrets", ref.namespace), builders.build_secret(ref, value))
        except ConflictError as exc:  # made meanwhile: read it on the next pass
            raise ChildNotReadyError(
                f"Secret {names.secret_name(ref.name)} appeared meanwhile", delay=0.2
            ) from exc
        self.tokens[key] = (ref.uid, secret.http_token(value))

    # ------------------------------------------------------------------ children of the job's name

    async def claim(self, key: Key, ref: JobRef, path: str, what: str) -> JsonDict:
        """After a create answered 409: the metadata of the object of that name, when it is the
        job's (made on an earlier pass); else it is never changed nor relied on, no pod is
        created, and the next pass says why (:meth:`held_back`)."""
        try:
            metadata = await self.api.metadata(path)
        except NotFoundError as exc:
            raise ChildNotReadyError(f"{what} went away meanwhile", delay=0.2) from exc
        if security.owned(metadata, ref.uid):
            return metadata
        self.conflicts[key] = (path, what)
        raise ChildNotReadyError(name_conflict_message(what), delay=0.2)

    async def _foreign(self, path: str, ref: JobRef) -> bool:
        """Whether the object at ``path`` exists and is not the job's."""
        try:
            metadata = await self.api.metadata(path)
        except NotFoundError:
            return False
        return not security.owned(metadata, ref.uid)

    # ------------------------------------------------------------------ what templates name

    async def check_references(self, key: Key, ref: JobRef, job: ParameterServerJob) -> None:
        """Before any pod: every Secret, ConfigMap and claim the templates name is marked for
        the namespace's jobs (unless privileged jobs are allowed); else none is created, and
        the next pass says why (:meth:`held_back`)."""
        if self.allow_privileged:
            return
        problem = await self._reference_problem(ref, job)
        if problem:
            self.refused[key] = problem
            raise ChildNotReadyError(problem, delay=0.2)

    async def _reference_problem(self, ref: JobRef, job: ParameterServerJob) -> str:
        named = references.references(job, ref.name)
        distinct = sorted({(r.kind, r.name) for r in named})
        verdicts = await asyncio.gather(*(self._usable(ref.namespace, kind, name) for kind, name in distinct))
        allowed = {obj for obj, ok in zip(distinct, verdicts, strict=True) if ok}
        refused = [r for r in named if (r.kind, r.name) not in allowed]
        return references.refusal(refused) if refused else ""

    async def _usable(self, namespace: str, kind: str, name: str) -> bool:
        try:
            metadata = await self.api.metadata(kube.path(references.PLURALS[kind], namespace, name))
        except NotFoundError:
            return False  # one made later must be marked too: the kubelet would mount it then
        return references.usable(metadata)
