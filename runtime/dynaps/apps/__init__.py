"""Training applications that run on dynaps: ``python -m dynaps.apps.<name> --help``."""
