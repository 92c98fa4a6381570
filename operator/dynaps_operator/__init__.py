"""The dynaps Kubernetes operator for ParameterServerJob resources."""

__version__ = "0.1.0"
