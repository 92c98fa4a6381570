"""Certificates for the test control plane: one CA, the API server's serving certificate, an admin
client certificate (group system:masters) and the service-account signing key pair."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> Pki:
    """``hosts``: the names and addresses the API server is reached at, besides its Service names."""
    directory.mkdir(parents=True, exist_ok=True)
    # One CA is both the serving CA and the client CA: the tests trust a single file.
    ca = trustme.CA(organization_name="dynaps test control plane")
    serving = ca.issue_cert(
        *hosts,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        common_name="kube-apiserver",
    )
    # Kubernetes maps the certificate's O to groups; system:masters bypasses RBAC. The SAN is there
    # because trustme marks an empty SAN extension critical, which Go rejects.
    admin = ca.issue_cert("admin", common_name="admin", organization_name="system:masters")
    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    ca.cert_pem.write_to_path(str(pki.ca_cert))
    serving.cert_chain_pems[0].write_to_path(str(pki.serving_cert))
    serving.private_key_pem.write_to_path(str(pki.serving_key))
    admin.cert_chain_pems[0].write_to_path(str(pki.admin_cert))
    admin.private_key_pem.write_to_path(str(pki.admin_key))
    # ECDSA keeps start-up fast (RSA key generation costs ~100 ms); the API server accepts ES256.
    sa = ec.generate_private_key(ec.SECP256R1())
    pki.sa_key.write_bytes(
        sa.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for key in (pki.serving_key, pki.admin_key, pki.sa_key):
        key.chmod(0o600)
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki, cluster: str) -> None:
    """An admin kubeconfig for ``server`` (client certificate, the PKI's CA), private to its owner."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)}}
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(pki.admin_cert),
                    "client-key-data": b64(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "admin"}}],
        "current-context": cluster,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
