"""Reading ParameterServerJob manifests from YAML files, with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from dynaps.contract import ParameterServerJob, describe_validation_error
from dynaps.errors import ConfigError


def load_manifest(path: str | Path) -> ParameterServerJob:
    """Parse and validate the one ParameterServerJob in ``path``."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    jobs = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "ParameterServerJob"]
    if len(jobs) != 1:
        raise ConfigError(f"{source} must hold exactly one ParameterServerJob, found {len(jobs)}")
    try:
        return ParameterServerJob.model_validate(jobs[0])
    except ValidationError as exc:
        raise ConfigError(
            f"{source} is not a valid ParameterServerJob:\n"
            + describe_validation_error(exc, source, ParameterServerJob)
        ) from exc
