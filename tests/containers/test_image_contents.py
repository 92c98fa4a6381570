"""What the images hold, checked in the images themselves on the real node: the operator image
has neither numpy nor ZeroMQ, and its ``dynaps-operator crd`` prints crds/'s file; ``dynaps
validate`` works in the runtime image. (tests/dynaps_operator/test_images.py makes the same
checks of the Dockerfiles' pip steps in virtual environments, where no real node runs: proof.py.)"""

from __future__ import annotations

import json

import pytest

from tests.containers.conftest import OPERATOR_NAMESPACE, REPO, get, wait_until
from tests.kube.node import RealNode

pytestmark = [pytest.mark.e2e, pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLE = REPO / "examples" / "quickstart.yaml"


def test_the_operator_image_holds_no_data_plane_and_prints_the_crd(
    real_node: RealNode, operator: None
) -> None:
    """In the chart's operator pod (its image, as it runs): no pod of its own to start."""
    (pod,) = get(real_node, "-n", OPERATOR_NAMESPACE, "pods", "-l", "app.kubernetes.io/instance=dynaps")[
        "items"
    ]

    def run(*command: str) -> str:
        return real_node.kubectl(
            "-n", OPERATOR_NAMESPACE, "exec", pod["metadata"]["name"], "--", *command
        ).stdout

    # The operator image holds no numpy and no ZeroMQ, and the operator does not need them.
    absent = run(
        "python", "-c", "import importlib.util as u; print(u.find_spec('numpy'), u.find_spec('zmq'))"
    )
    assert absent.strip() == "None None", absent
    assert run("dynaps-operator", "crd") == (REPO / "crds" / "dynaps.io_parameterserverjobs.yaml").read_text()


def test_dynaps_validate_runs_in_the_runtime_image(real_node: RealNode, namespace: str) -> None:
    real_node.kubectl("-n", namespace, "create", "configmap", "example", f"--from-file={EXAMPLE}")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "validate"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "volumes": [{"name": "example", "configMap": {"name": "example"}}],
            "containers": [
                {
                    "name": "validate",
                    "image": "dynaps/runtime:0.1.0",
                    "imagePullPolicy": "Never",
                    "command": ["dynaps", "validate", f"/example/{EXAMPLE.name}"],
                    "volumeMounts": [{"name": "example", "mountPath": "/example", "readOnly": True}],
                }
            ],
        },
    }
    real_node.kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(pod))

    def finished() -> str | None:
        phase: str | None = get(real_node, "-n", namespace, "pod", "validate")["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until("the validate pod to finish", 120, finished, interval=0.25)
    logs = real_node.kubectl("-n", namespace, "logs", "validate").stdout
    assert phase == "Succeeded", logs[-3000:]
    assert f"/example/{EXAMPLE.name}: valid ParameterServerJob 'quickstart'" in logs
