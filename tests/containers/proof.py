"""What this `make test` run's container tests proved, for its second phase.

The images' install tests (tests/dynaps_operator/test_images.py) run the Dockerfiles' pip
steps in virtual environments: ~55 CPU-seconds of wheel builds. When the container tests of the
same run all ran and passed, the real images, built by docker from the same Dockerfiles, were
run and checked by them (test_image_contents.py has the checks only the install tests made), so
the install tests skip. Only `make test` names the stamp file (``STAMP_ENV``) and removes it
before the container tests; without it, or where they were skipped (no real node), nothing
skips.
"""

from __future__ import annotations

import os
from pathlib import Path

STAMP_ENV = "DYNAPS_CONTAINERS_STAMP"
# The container tests that must be among those that passed for the stamp to be written.
REQUIRED_MODULE = "tests/containers/test_image_contents.py"


def _stamp() -> Path | None:
    name = os.environ.get(STAMP_ENV, "")
    return Path(name) if name else None


def record(passed: list[str]) -> bool:
    """Writes the stamp (the tests that passed) if asked for and ``passed`` includes the
    image-contents tests; says whether it did."""
    stamp = _stamp()
    if stamp is None or not any(node.startswith(REQUIRED_MODULE + "::") for node in passed):
        return False
    stamp.write_text("".join(f"{node}\n" for node in sorted(passed)))
    return True


def proven() -> str | None:
    """Why the install tests may skip (the stamp's first line and count), or None."""
    stamp = _stamp()
    if stamp is None or not stamp.is_file():
        return None
    lines = stamp.read_text().splitlines()
    if not lines:
        return None
    return f"the container tests ran the real images and passed ({len(lines)} tests, stamp {stamp})"
