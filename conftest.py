"""Repository-root pytest configuration: registers the shared fixture plugins."""

pytest_plugins = ["tests.kube.fixtures"]
