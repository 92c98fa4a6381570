"""The actions POSTed to the coordinator's HTTP endpoint that ask nodes to leave.

``scale`` asks the surplus nodes of a role to drain (the newest first); ``drain`` asks one
node, by name or id.  Deciding who is pure; the coordinator sends the DRAIN orders.
"""

from __future__ import annotations

import logging
from typing import Any

from dynaps.coordinator.roster import Roster
from dynaps.wire.control import Role

log = logging.getLogger(__name__)


def drains(action: str, body: dict[str, Any], roster: Roster) -> list[tuple[int, str]]:
    """The nodes to ask to drain for ``action``, with the reason each is told."""
    orders: list[tuple[int, str]] = []
    if action == "scale":
        roles: tuple[Role, ...] = ("server", "worker")
        for role in roles:
            wanted = _optional_int(body, f"{role}s")
            for surplus in roster.want(role, wanted) if wanted is not None else ():
                orders.append((surplus.id, f"scaling {role}s to {wanted}"))
    elif action == "drain":
        target = roster.find(str(body.get("node", "")))
        if target is not None:
            orders.append((target.id, "drain requested"))
        else:
            log.warning("drain of unknown node %r ignored", body.get("node"))
    return orders


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    return int(value) if isinstance(value, int) and value >= 0 else None
