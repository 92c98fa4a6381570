"""dynaps: a parameter server with dynamic parameter allocation."""

__version__ = "0.1.0"
