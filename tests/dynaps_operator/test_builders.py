"""The pure builders: pods, Service and ConfigMap of a job, and the template merge."""

from __future__ import annotations

from typing import Any

from dynaps.contract import THREAD_ENV, RuntimeConfig
from dynaps_operator.builders import build_configmap, build_runtime_config, build_service
from dynaps_operator.names import Role
from dynaps_operator.pod_builder import build_pod, merge
from tests.dynaps_operator.helpers import REF, job


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_worker_pod_identity_and_command() -> None:
    pod = build_pod(job(), REF, Role.WORKER, 1, "DEBUG")
    assert pod["metadata"]["name"] == "mf-worker-1"
    assert pod["metadata"]["labels"]["dynaps.io/role"] == "worker"
    assert pod["metadata"]["labels"]["dynaps.io/index"] == "1"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    spec = pod["spec"]
    assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == ("mf-worker-1", "mf", "Never")
    container = spec["containers"][0]
    assert container["command"] == ["dynaps", "worker", "--", "python", "train.py"]
    values = env(pod)
    assert values["DYNAPS_RANK"] == "1"
    assert values["DYNAPS_LOG_LEVEL"] == "DEBUG"
    assert values["DYNAPS_BIND_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert container["readinessProbe"]["tcpSocket"]["port"] == 7100
    assert spec["volumes"][0]["configMap"]["name"] == "mf-config"


def test_coordinator_pod_probes_its_http_endpoint() -> None:
    pod = build_pod(job(), REF, Role.COORDINATOR)
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["name"] == "mf-coordinator"
    assert container["command"] == ["dynaps", "coordinator"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert "DYNAPS_RANK" not in env(pod)
    assert env(pod)["DYNAPS_COORDINATOR_LINGER_SECONDS"] == "10"


def test_template_adds_what_it_likes_but_cannot_change_the_identity() -> None:
    template = {
        "metadata": {"labels": {"team": "ml"}, "annotations": {"a": "b"}},
        "spec": {
            "nodeSelector": {"gpu": "yes"},
            "restartPolicy": "Always",
            "hostname": "impostor",
            "containers": [
                {
                    "name": "dynaps",
                    "image": "me/trainer:1",
                    "env": [
                        {"name": "DYNAPS_LOG_LEVEL", "value": "WARNING"},
                        {"name": "DYNAPS_NODE_NAME", "value": "evil"},
                        {"name": "EXTRA", "value": "1"},
                    ],
                },
                {"name": "sidecar", "image": "busybox"},
            ],
        },
    }
    the_job = job(
        workers={"replicas": 2, "command": ["python", "t.py"], "template": template, "env": {"SEED": "7"}},
    )
    pod = build_pod(the_job, REF, Role.WORKER, 0)
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["metadata"]["labels"]["dynaps.io/job"] == "mf"
    assert pod["spec"]["nodeSelector"] == {"gpu": "yes"}
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["hostname"] == "mf-worker-0"
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["dynaps", "sidecar"]
    assert pod["spec"]["containers"][0]["image"] == "me/trainer:1"
    values = env(pod)
    assert values["DYNAPS_LOG_LEVEL"] == "WARNING"
    assert values["DYNAPS_NODE_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (values["EXTRA"], values["SEED"]) == ("1", "7")
    # The server's pod is untouched by the workers' template.
    assert build_pod(the_job, REF, Role.SERVER, 0)["spec"]["containers"][0]["image"] == "dynaps/runtime:0.1.0"


def test_resources_priority_and_checkpoint_volume() -> None:
    the_job = job(
        servers={"replicas": 1, "resources": {"limits": {"memory": "1Gi"}}},
        runPolicy={"schedulingPolicy": {"priorityClass": "high"}},
        faultTolerance={
            "checkpoint": {"path": "/ckpt", "volume": {"persistentVolumeClaim": {"claimName": "c"}}}
        },
    )
    pod = build_pod(the_job, REF, Role.SERVER, 0)
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}
    assert pod["spec"]["priorityClassName"] == "high"
    assert {"name": "dynaps-checkpoints", "mountPath": "/ckpt"} in pod["spec"]["containers"][0][
        "volumeMounts"
    ]
    assert {"name": "dynaps-checkpoints", "persistentVolumeClaim": {"claimName": "c"}} in pod["spec"][
        "volumes"
    ]


def test_configmap_holds_the_runtime_config_the_runtime_reads() -> None:
    configmap = build_configmap(job(), REF, restore_from="/ckpt/7")
    config = RuntimeConfig.from_json(configmap["data"]["config.json"])
    assert config.coordinator == "mf-coordinator.mf.ns.svc:7070"
    assert (config.coordinator_http_port, config.data_port) == (8080, 7100)
    assert (config.servers, config.workers, config.job) == (1, 2, "mf")
    assert config.fault_tolerance.checkpoint.restore_from == "/ckpt/7"
    user_choice = job(faultTolerance={"checkpoint": {"restoreFrom": "/mine"}})
    assert (
        build_runtime_config(user_choice, REF, "/ckpt/7").fault_tolerance.checkpoint.restore_from == "/mine"
    )


def test_service_is_headless_and_publishes_pods_before_they_are_ready() -> None:
    service = build_service(REF)
    assert service["metadata"]["name"] == "mf"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"dynaps.io/job": "mf"}


def test_merge_rules() -> None:
    base = {"a": {"x": 1, "y": 2}, "l": [1, 2], "named": [{"name": "p", "v": 1}, {"name": "q", "v": 2}]}
    over = {"a": {"y": 3}, "l": [3], "named": [{"name": "q", "v": 9}, {"name": "r", "v": 0}]}
    merged = merge(base, over)
    assert merged == {
        "a": {"x": 1, "y": 3},
        "l": [3],
        "named": [{"name": "q", "v": 9}, {"name": "r", "v": 0}, {"name": "p", "v": 1}],
    }
    assert base["a"] == {"x": 1, "y": 2}  # inputs untouched


def test_numeric_threads_follow_the_cpu_limit_unless_the_job_sets_them() -> None:
    from_limit = {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}
    for role in Role:
        values = env(build_pod(job(), REF, role, 0))
        assert {name: values[name] for name in THREAD_ENV} == dict.fromkeys(THREAD_ENV, from_limit), role
    # A job that sets one of them chose for every library: none of ours beside it
    the_job = job(workers={"replicas": 1, "command": ["python", "t.py"], "env": {"OMP_NUM_THREADS": "4"}})
    values = env(build_pod(the_job, REF, Role.WORKER, 0))
    assert {name: values.get(name) for name in THREAD_ENV} == {
        "OMP_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": None,
        "MKL_NUM_THREADS": None,
    }
    assert env(build_pod(the_job, REF, Role.SERVER, 0))["MKL_NUM_THREADS"] == from_limit
    template = {
        "spec": {"containers": [{"name": "dynaps", "env": [{"name": "MKL_NUM_THREADS", "value": "2"}]}]}
    }
    values = env(build_pod(job(servers={"replicas": 1, "template": template}), REF, Role.SERVER, 0))
    assert {name: values.get(name) for name in THREAD_ENV} == {
        "OMP_NUM_THREADS": None,
        "OPENBLAS_NUM_THREADS": None,
        "MKL_NUM_THREADS": "2",
    }


def test_numeric_threads_follow_the_cpu_request_where_no_limit_is_set() -> None:
    def source(resources: dict[str, Any]) -> Any:
        the_job = job(workers={"replicas": 1, "command": ["python", "t.py"], "resources": resources})
        return env(build_pod(the_job, REF, Role.WORKER, 0))["OPENBLAS_NUM_THREADS"]["resourceFieldRef"]

    assert source({"requests": {"cpu": "2"}})["resource"] == "requests.cpu"
    assert source({"requests": {"cpu": "2"}, "limits": {"cpu": "4"}})["resource"] == "limits.cpu"
    assert (
        source({"requests": {"memory": "1Gi"}})["resource"] == "limits.cpu"
    )  # a LimitRange's, or the node's


def test_an_env_var_s_value_source_replaces_the_other() -> None:
    base = [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}, {"name": "B", "value": "1"}]
    over = [{"name": "A", "value": "2"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "y"}}}]
    assert merge({"env": base}, {"env": over}) == {"env": over}
