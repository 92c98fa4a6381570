"""Job pods hardened, privileged templates refused with the field named, the job's Secret and
NetworkPolicy as built, and the operator's capped reads from a coordinator (issue 12)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import tracemalloc
from typing import Any

import pytest
from aiohttp import web

from dynaps.contract import MAX_NODES, secret
from dynaps_operator import names, references, security
from dynaps_operator.builders import build_network_policy, build_secret
from dynaps_operator.coordinator_client import MAX_ANSWER, CoordinatorClient
from dynaps_operator.coordinator_view import parse_status
from dynaps_operator.errors import CoordinatorError
from dynaps_operator.names import Role
from dynaps_operator.pod_builder import build_pod
from dynaps_operator.validation import parse_job
from tests.dynaps_operator.helpers import REF, job


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


@pytest.mark.parametrize("role", list(Role))
def test_every_container_of_every_pod_runs_hardened(role: Role) -> None:
    template = {
        "spec": {
            "initContainers": [{"name": "fetch", "image": "busybox"}],
            "containers": [{"name": "sidecar", "image": "busybox", "securityContext": {"runAsUser": 2000}}],
            "securityContext": {"fsGroup": 3000},
        }
    }
    the_job = job(**{"workers": {"replicas": 1, "command": ["python"], "template": template}})
    pod = build_pod(the_job, REF, role)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in all_containers(pod):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsNonRoot"] is True
    if role is Role.WORKER:  # what the template said and the hardening does not touch stays
        assert spec["securityContext"]["fsGroup"] == 3000
        sidecar = next(c for c in spec["containers"] if c["name"] == "sidecar")
        assert sidecar["securityContext"]["runAsUser"] == 2000


def test_every_pod_mounts_the_job_secret_read_only_and_names_its_file() -> None:
    the_job = job(**{"workers": {"replicas": 1, "command": ["python"], "env": {secret.HEX_ENV: "00" * 32}}})
    for role in Role:
        pod = build_pod(the_job, REF, role)
        container = pod["spec"]["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == names.SECRET_VOLUME)
        assert mount == {"name": names.SECRET_VOLUME, "mountPath": secret.MOUNT_DIR, "readOnly": True}
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == names.SECRET_VOLUME)
        assert volume["secret"]["secretName"] == "mf-secret"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[secret.FILE_ENV] == f"{secret.MOUNT_DIR}/{secret.DATA_KEY}"
        assert secret.HEX_ENV not in env  # a template cannot point the pod at another secret


def test_the_secret_is_random_owned_immutable_and_read_back_only_when_this_jobs() -> None:
    value = secret.new_secret()
    body = build_secret(REF, value)
    assert body["metadata"]["name"] == "mf-secret"
    assert body["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    assert body["immutable"] is True
    stored = base64.b64decode(body["data"][secret.DATA_KEY]).decode()
    assert secret.decode(stored, "test") == value
    assert build_secret(REF, secret.new_secret())["data"] != body["data"]
    assert security.token_of(body, REF.uid) == secret.http_token(value)
    assert security.token_of(body, "another-uid") is None
    assert security.token_of({**body, "data": {secret.DATA_KEY: "!!"}}, REF.uid) is None


def test_the_network_policy_admits_the_jobs_pods_and_only_the_operator_to_http() -> None:
    policy = build_network_policy(REF, "ops", {"app.kubernetes.io/name": "dynaps-operator"})
    spec = policy["spec"]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    assert spec["podSelector"] == {"matchLabels": {names.LABEL_JOB: "mf"}}
    assert spec["policyTypes"] == ["Ingress"]
    peers, operator, scrapers = spec["ingress"]
    assert scrapers == {"ports": [{"protocol": "TCP", "port": names.METRICS_PORT}]}  # from anywhere
    assert peers["from"] == [{"podSelector": {"matchLabels": {names.LABEL_JOB: "mf"}}}]
    http = names.COORDINATOR_HTTP_PORT
    covered = [(p["port"], p["endPort"]) for p in peers["ports"]]
    assert not any(low <= http <= high for low, high in covered)
    for port in (names.COORDINATOR_PORT, names.NODE_PORT, 45000):  # 45000: a client's random port
        assert any(low <= port <= high for low, high in covered)
    assert operator["ports"] == [{"protocol": "TCP", "port": http}]
    assert operator["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "dynaps-operator"}},
        }
    ]


REFUSED = [
    ({"hostNetwork": True}, "spec.workers.template.spec.hostNetwork"),
    ({"hostPID": True}, "spec.workers.template.spec.hostPID"),
    ({"hostIPC": True}, "spec.workers.template.spec.hostIPC"),
    ({"serviceAccountName": "admin"}, "spec.workers.template.spec.serviceAccountName"),
    ({"automountServiceAccountToken": True}, "spec.workers.template.spec.automountServiceAccountToken"),
    (
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        "spec.workers.template.spec.volumes[0].hostPath",
    ),
    ({"securityContext": {"runAsUser": 0}}, "spec.workers.template.spec.securityContext.runAsUser"),
    (
        {"containers": [{"name": "dynaps", "securityContext": {"privileged": True}}]},
        "spec.workers.template.spec.containers[0].securityContext.privileged",
    ),
    (
        {"initContainers": [{"name": "x", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
        "spec.workers.template.spec.initContainers[0].securityContext.capabilities.add",
    ),
    (
        {"containers": [{"name": "dynaps", "securityContext": {"allowPrivilegeEscalation": True}}]},
        "spec.workers.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
    ),
    (
        {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        "spec.workers.template.spec.securityContext.seccompProfile",
    ),
    # finding 4 of the audit: storage, tokens and devices the operator cannot ask the
    # namespace about (no object to label, or not the job's to use)
    (
        {"volumes": [{"name": "v", "nfs": {"server": "10.0.0.5", "path": "/exports/team-b"}}]},
        "spec.workers.template.spec.volumes[0].nfs",
    ),
    (
        {"volumes": [{"name": "v", "csi": {"driver": "secrets-store.csi.k8s.io"}}]},
        "spec.workers.template.spec.volumes[0].csi",
    ),
    (
        {"volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]},
        "spec.workers.template.spec.volumes[0].projected.sources[0].serviceAccountToken",
    ),
    (
        {
            "volumes": [
                {
                    "name": "v",
                    "ephemeral": {
                        "volumeClaimTemplate": {
                            "spec": {
                                "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "team-b-data"}
                            }
                        }
                    },
                }
            ]
        },
        "spec.workers.template.spec.volumes[0].ephemeral.volumeClaimTemplate.spec.dataSourceRef",
    ),
    (
        {"resourceClaims": [{"name": "gpu", "resourceClaimName": "team-b-gpus"}]},
        "spec.workers.template.spec.resourceClaims[0].resourceClaimName",
    ),
    # finding 10 of the audit: what the Pod Security Standards' "baseline" forbids
    (
        {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
        "spec.workers.template.spec.securityContext.seLinuxOptions",
    ),
    (
        {"containers": [{"name": "dynaps", "securityContext": {"seLinuxOptions": {"user": "system_u"}}}]},
        "spec.workers.template.spec.containers[0].securityContext.seLinuxOptions",
    ),
    (
        {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}},
        "spec.workers.template.spec.securityContext.appArmorProfile",
    ),
    (
        {"containers": [{"name": "dynaps", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}]},
        "spec.workers.template.spec.containers[0].securityContext.appArmorProfile",
    ),
    (
        {"containers": [{"name": "dynaps", "securityContext": {"procMount": "Unmasked"}}]},
        "spec.workers.template.spec.containers[0].securityContext.procMount",
    ),
    (
        {"containers": [{"name": "dynaps", "ports": [{"containerPort": 80, "hostPort": 80}]}]},
        "spec.workers.template.spec.containers[0].ports[0].hostPort",
    ),
    (
        {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]}},
        "spec.workers.template.spec.securityContext.sysctls[0]",
    ),
    (
        {"securityContext": {"windowsOptions": {"hostProcess": True}}},
        "spec.workers.template.spec.securityContext.windowsOptions.hostProcess",
    ),
]


def manifest(template_spec: dict[str, Any]) -> dict[str, Any]:
    the_job = job(**{"workers": {"replicas": 1, "command": ["python"], "template": {"spec": template_spec}}})
    return {**the_job.to_wire(), "apiVersion": "dynaps.io/v1alpha1", "kind": "ParameterServerJob"}


@pytest.mark.parametrize(("template_spec", "field"), REFUSED, ids=[f for _, f in REFUSED])
def test_a_privileged_template_is_refused_naming_the_field(template_spec: dict[str, Any], field: str) -> None:
    parsed, message = parse_job(manifest(template_spec))
    assert parsed is None
    assert message.startswith(f"{field}: refused")
    assert "allowPrivilegedJobs" in message
    allowed, nothing = parse_job(manifest(template_spec), allow_privileged=True)
    assert allowed is not None
    assert nothing == ""


def test_an_unconfined_app_armor_annotation_is_refused() -> None:
    key = "container.apparmor.security.beta.kubernetes.io/dynaps"
    template = {"metadata": {"annotations": {key: "unconfined"}}}
    the_job = job(**{"workers": {"replicas": 1, "command": ["python"], "template": template}})
    (problem,) = security.template_problems(the_job)
    assert problem.startswith(f"spec.workers.template.metadata.annotations[{key}]: refused")
    for fine in ("runtime/default", "localhost/my-profile"):
        template = {"metadata": {"annotations": {key: fine}}}
        the_job = job(**{"workers": {"replicas": 1, "command": ["python"], "template": template}})
        assert security.template_problems(the_job) == []


def test_what_the_baseline_allows_stays_allowed() -> None:
    spec = {
        "securityContext": {
            "seLinuxOptions": {"type": "container_t", "level": "s0:c123,c456"},
            "appArmorProfile": {"type": "RuntimeDefault"},
            "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65000"}],
        },
        "containers": [
            {
                "name": "dynaps",
                "ports": [{"containerPort": 80, "hostPort": 0}],
                "securityContext": {"procMount": "Default", "appArmorProfile": {"type": "Localhost"}},
            }
        ],
    }
    parsed, message = parse_job(manifest(spec))
    assert parsed is not None, message


def test_a_host_path_checkpoint_volume_is_refused() -> None:
    the_job = job(faultTolerance={"checkpoint": {"volume": {"hostPath": {"path": "/var"}}}})
    assert security.template_problems(the_job) == [
        security._refused("spec.faultTolerance.checkpoint.volume.hostPath", "a node's file system")
    ]


def test_a_checkpoint_volume_of_another_kind_than_a_claim_or_empty_dir_is_refused() -> None:
    the_job = job(faultTolerance={"checkpoint": {"volume": {"nfs": {"server": "nas", "path": "/team-b"}}}})
    (problem,) = security.template_problems(the_job)
    assert problem.startswith("spec.faultTolerance.checkpoint.volume.nfs: refused")
    claim = job(faultTolerance={"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}})
    assert security.template_problems(claim) == []  # a claim, checked against its label later


def test_every_object_a_template_names_in_the_namespace_is_listed_with_its_field() -> None:
    worker = {
        "spec": {
            "imagePullSecrets": [{"name": "registry"}],
            "initContainers": [{"name": "fetch", "envFrom": [{"secretRef": {"name": "s3-keys"}}]}],
            "containers": [
                {
                    "name": "dynaps",
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "team-data", "key": "k"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}},
                        {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "D", "value": "plain"},
                    ],
                    "envFrom": [{"configMapRef": {"name": "defaults"}}],
                }
            ],
            "volumes": [
                {"name": "own", "secret": {"secretName": "mf-secret"}},  # the job's own: not listed
                {"name": "config", "configMap": {"name": "mf-config"}},  # likewise
                {"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}},
                {"name": "cert", "secret": {"secretName": "tls"}},
                {
                    "name": "both",
                    "projected": {
                        "sources": [
                            {"secret": {"name": "p-secret"}},
                            {"configMap": {"name": "p-config"}},
                            {"downwardAPI": {"items": []}},
                        ]
                    },
                },
                {"name": "scratch", "emptyDir": {}},
            ],
        }
    }
    the_job = job(
        workers={"replicas": 1, "command": ["python"], "template": worker},
        coordinator={"template": {"spec": {"imagePullSecrets": [{"name": "registry"}]}}},
        faultTolerance={"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}},
    )
    found = [(r.kind, r.name, r.field) for r in references.references(the_job, "mf")]
    at = "spec.workers.template.spec"
    assert found == [
        ("Secret", "registry", "spec.coordinator.template.spec.imagePullSecrets[0]"),
        ("Secret", "registry", f"{at}.imagePullSecrets[0]"),
        ("PersistentVolumeClaim", "corpus", f"{at}.volumes[2].persistentVolumeClaim"),
        ("Secret", "tls", f"{at}.volumes[3].secret"),
        ("Secret", "p-secret", f"{at}.volumes[4].projected.sources[0].secret"),
        ("ConfigMap", "p-config", f"{at}.volumes[4].projected.sources[1].configMap"),
        ("Secret", "s3-keys", f"{at}.initContainers[0].envFrom[0].secretRef"),
        ("Secret", "team-data", f"{at}.containers[0].env[0].valueFrom.secretKeyRef"),
        ("ConfigMap", "settings", f"{at}.containers[0].env[1].valueFrom.configMapKeyRef"),
        ("ConfigMap", "defaults", f"{at}.containers[0].envFrom[0].configMapRef"),
        ("PersistentVolumeClaim", "ckpt", "spec.faultTolerance.checkpoint.volume.persistentVolumeClaim"),
    ]
    # what the operator says of the ones the namespace did not mark for jobs
    refused = references.references(the_job, "mf")[2:4]
    message = references.refusal(refused)
    assert message.startswith(
        f"{at}.volumes[2].persistentVolumeClaim: PersistentVolumeClaim corpus is not labelled "
        f"{references.USABLE_LABEL}=true"
    )
    assert f"{at}.volumes[3].secret: Secret tls is not labelled" in message
    assert "kubectl label" in message


def test_when_allowed_the_template_wins_over_the_hardening() -> None:
    template = {"spec": {"containers": [{"name": "dynaps", "securityContext": {"privileged": True}}]}}
    the_job = job(**{"workers": {"replicas": 1, "command": ["python"], "template": template}})
    pod = build_pod(the_job, REF, Role.WORKER, allow_privileged=True)
    context = pod["spec"]["containers"][0]["securityContext"]
    assert context["privileged"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}  # still the default where it said nothing


# ---------------------------------------------------------------------- the coordinator client


async def serve(handler: Any) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def peak_of_a_refused_status(handler: Any, match: str | None = None) -> int:
    """The peak of memory allocated while the client reads a /status that ``handler``
    answers and refuses it (CoordinatorError, its message matching ``match``)."""

    async def main() -> int:
        runner, port = await serve(handler)
        client = CoordinatorClient(port, timeout=30.0)
        try:
            tracemalloc.start()
            with pytest.raises(CoordinatorError, match=match):
                await client.status("127.0.0.1", "tok")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await client.close()
            await runner.cleanup()

    return asyncio.run(main())


def test_the_client_sends_the_token_and_refuses_an_answer_over_the_cap() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        if request.path == "/huge":
            response = web.StreamResponse()  # chunked: no Content-Length to refuse it up front
            await response.prepare(request)
            for _ in range(MAX_ANSWER // (1 << 16) + 2):
                await response.write(b" " * (1 << 16))
            return response
        return web.json_response({"job": "x"})

    async def main() -> None:
        runner, port = await serve(handler)
        client = CoordinatorClient(port)
        try:
            assert await client.status("127.0.0.1", "tok") == {"job": "x"}
            assert seen == ["Bearer tok"]
            with pytest.raises(CoordinatorError, match="passed"):
                await client._request("GET", "127.0.0.1", "/huge", None, "tok")
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(main())


def test_a_huge_status_leaves_little_in_the_operator() -> None:
    """Finding 5 of the audit: a coordinator the job author built answers /status with as many
    members and metrics as 4 MiB hold; the operator keeps a view of it per job."""
    doc = {
        "members": [{"name": f"n{i:07d}", "role": "server", "id": i} for i in range(100_000)]
        + [{"name": f"w{i:07d}", "role": "worker", "id": i, "attached": False} for i in range(100_000)]
        + [{"name": "x" * 10_000, "role": "worker", "attached": False}],
        "shardsPerServer": {str(i): 1 for i in range(100_000)},
        "metrics": {f"m{i}": 1.0 for i in range(50_000)},
    }
    tracemalloc.start()
    try:
        view = parse_status(doc)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(view.registered) <= MAX_NODES
    assert len(view.unattached) <= MAX_NODES
    assert len(view.node_names) <= MAX_NODES
    assert len(view.shards_per_server) <= MAX_NODES
    assert max(len(name) for name in view.registered) <= names.MAX_HOSTNAME  # no pod has a longer name
    assert len(view.metrics) <= 64  # as many names as the runtime keeps
    assert kept < 8 << 20, kept  # 16,000 nodes' names at most, whatever arrives (was 22 MB)


@pytest.mark.parametrize(
    "doc",
    [
        {"lastCheckpoint": {"path": "/ckpt/ckpt-000001", "time": 1e300}},
        {"dataLoss": [{"cause": "checkpoint", "server": 1, "time": 10**30, "shards": []}]},
        {
            "dataLoss": [
                {"cause": "ckpt", "server": 1, "time": 1, "shards": [], "checkpointAgeSeconds": 10**400}
            ]
        },
        {"metrics": {"loss": 10**400}},
    ],
)
def test_a_time_out_of_range_is_dropped_not_raised(doc: dict[str, Any]) -> None:
    view = parse_status(doc)  # raised OverflowError: every reconcile of the job failed
    assert view.last_checkpoint is None
    assert all(loss.checkpoint_age is None for loss in view.losses)
    assert view.metrics == {}


def test_an_answer_of_many_tiny_values_is_refused_before_it_is_parsed() -> None:
    """4 MiB of ``{},`` parse into ~100 MB of Python objects: refused by their count."""
    body = b'{"members": [' + b",".join([b"{}"] * ((MAX_ANSWER - 64) // 3)) + b"]}"
    assert len(body) <= MAX_ANSWER

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    peak = peak_of_a_refused_status(handler, match="values")
    assert peak < 40 << 20, peak  # the answer's bytes, a few times; not its objects


def test_a_deeply_nested_answer_is_an_error_not_a_crash() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"[" * 200_000 + b"]" * 200_000, content_type="application/json")

    async def main() -> None:
        runner, port = await serve(handler)
        client = CoordinatorClient(port, timeout=30.0)
        try:
            with pytest.raises(CoordinatorError):
                await client.status("127.0.0.1", "tok")
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(main())


def test_a_compressed_answer_is_not_inflated() -> None:
    """Audit finding 12: 64 KiB of gzip inflate to 64 MiB; the coordinator never compresses,
    so the client asks for ``identity`` and counts the bytes that came, not what they hold."""
    inflated = 64 << 20
    body = gzip.compress(b" " * inflated)
    asked: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(request.headers.get("Accept-Encoding"))
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    peak = peak_of_a_refused_status(handler)
    assert asked == ["identity"]
    assert peak < 8 << 20, peak  # the compressed bytes, not the 64 MiB they hold
