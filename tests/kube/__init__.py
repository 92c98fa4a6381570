"""Test-only Kubernetes support: a real control plane from local binaries and a process kubelet."""
