"""`dynaps status --watch` when the coordinator stops under it: a read the coordinator
closed without an answer is asked again, and the watch then finds the run ended (exit 0),
rather than failing with "Connection reset by peer" (seen 1 in 12 runs of
test_status_local.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dynaps.observe import commands
from dynaps.observe.sources import CoordinatorDroppedError, CoordinatorGoneError, read_coordinator
from dynaps.observe.view import JobView


@pytest.fixture
def closing_listener() -> Iterator[str]:
    """An address whose server reads each request and closes the connection unanswered."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        listener.close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_a_read_the_coordinator_closes_unanswered_is_a_dropped_read(closing_listener: str) -> None:
    with pytest.raises(CoordinatorDroppedError, match="closed the connection"):
        read_coordinator(closing_listener, "0" * 64)


def view() -> JobView:
    return JobView(job="probe", where="test", phase="Running")


def test_a_watch_asks_again_after_a_dropped_read_and_ends_when_the_run_is_gone(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "WATCH_DROP_PAUSE", 0.0)
    answers: list[Any] = [
        ({"job": "probe"}, view()),
        CoordinatorDroppedError("closed"),
        ({"job": "probe"}, view()),
        CoordinatorDroppedError("closed"),
        CoordinatorGoneError("no coordinator listens at http://x"),
    ]

    def read() -> tuple[dict[str, Any], JobView]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    assert commands._watch(read, "json", 0.0) == 0
    assert not answers
    assert capsys.readouterr().out.splitlines()[-1] == "no coordinator listens at http://x: the run ended"


def test_a_watch_gives_up_after_reads_dropped_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "WATCH_DROP_PAUSE", 0.0)
    reads = 0

    def read() -> tuple[dict[str, Any], JobView]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"job": "probe"}, view()
        raise CoordinatorDroppedError("closed")

    with pytest.raises(CoordinatorDroppedError):
        commands._watch(read, "json", 0.0)
    assert reads == 2 + commands.WATCH_DROPS
