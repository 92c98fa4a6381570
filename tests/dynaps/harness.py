"""Stand-ins for what surrounds the runtime's decision code, shared by in-process tests.

The node's :class:`~dynaps.node.control_plane.ControlPlane` and the
:class:`~dynaps.coordinator.core.Coordinator` take their decisions without processes or
sockets; these are the pieces that take the place of the OS process, the clock and the
network around them.
"""

from __future__ import annotations

from dynaps.wire import control


class FakeShell:
    """The OS process around a node's control plane: records what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # what the control plane asked of the process
        self.running = True

    def heartbeat(self) -> control.Heartbeat:
        return control.Heartbeat(role="worker", address="test://3")

    def stop_loop(self) -> None:
        self.calls.append("stop_loop")

    def tell_client_to_drain(self) -> None:
        self.calls.append("tell_client_to_drain")

    def client_running(self) -> bool:
        return self.running

    def end_client(self) -> None:
        if self.running:  # as the real one: only a program that still runs is ended
            self.calls.append("end_client")
            self.running = False
