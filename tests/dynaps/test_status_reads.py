"""/status built when read (issue 15): a reader gets a document built after it asked, nothing is
built while nobody reads, and heartbeats alone do not make the coordinator rebuild it.

The reads are driven with a real thread playing the coordinator's loop; the coordinator's side
with the in-process harness of test_coordinator_core (a clock the test moves).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dynaps.coordinator.published_status import STATUS_SECONDS
from dynaps.coordinator.status_reads import StatusReads
from dynaps.wire.protocol import MsgType
from tests.dynaps.test_coordinator_core import Job


class Loop:
    """The coordinator's loop as far as reads go: turns of ``turn`` seconds, each building a
    new document (numbered) if a read waits."""

    def __init__(self, turn: float = 0.01) -> None:
        self.built = 0
        self.doc: dict[str, Any] = {"built": 0}
        self.reads = StatusReads(lambda: self.doc)
        self._turn = turn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._turn):
            asked = self.reads.pending()
            if asked:
                self.built += 1
                self.doc = {"built": self.built}
                self.reads.answer(asked)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def loop() -> Iterator[Loop]:
    with Loop() as running:
        yield running


def test_nothing_is_built_while_nobody_reads(loop: Loop) -> None:
    time.sleep(0.2)  # twenty turns
    assert loop.built == 0
    assert loop.reads.read() == {"built": 1}
    time.sleep(0.2)
    assert loop.built == 1


def test_every_read_gets_a_document_built_after_it_asked(loop: Loop) -> None:
    seen: list[tuple[int, int]] = []  # (documents built when the read began, the one it got)

    def reader() -> None:
        for _ in range(20):
            before = loop.built
            seen.append((before, loop.reads.read()["built"]))

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(30)
    assert len(seen) == 80
    assert all(got > before for before, got in seen), [s for s in seen if s[1] <= s[0]]
    assert loop.built <= 80  # concurrent reads share a build


def test_a_read_the_loop_does_not_answer_gets_the_last_document_after_its_patience() -> None:
    reads = StatusReads(lambda: {"built": 0}, patience=0.2)
    started = time.monotonic()
    assert reads.read() == {"built": 0}
    assert 0.2 <= time.monotonic() - started < 2.0


def test_after_close_a_read_does_not_wait() -> None:
    reads = StatusReads(lambda: {"final": True}, patience=30.0)
    waiting: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: waiting.append(reads.read()))
    thread.start()
    while not reads.pending():
        time.sleep(0.001)
    reads.close()  # the coordinator's loop ended: a waiting read is released at once
    thread.join(5)
    assert waiting == [{"final": True}]
    started = time.monotonic()
    assert reads.read() == {"final": True}
    assert time.monotonic() - started < 1.0
    assert not reads.pending()


# ---------------------------------------------------------------------- the coordinator's side


def heartbeat(job: Job, node: int) -> None:
    job.tell(node, MsgType.HEARTBEAT, {"role": "server", "address": f"tcp://{job.names[node]}"})


def test_heartbeats_alone_do_not_rebuild_status_and_anything_else_does() -> None:
    job = Job(servers=2, workers=1)
    servers, _workers = job.start()
    coordinator = job.coordinator
    coordinator.publish_status(10.0)
    built = coordinator.status()
    for node in servers:
        heartbeat(job, node)
    coordinator.publish_status(10.0 + STATUS_SECONDS / 2)
    assert coordinator.status() is built  # nothing a heartbeat changes is in it
    coordinator.publish_status(10.0 + 2 * STATUS_SECONDS)
    assert coordinator.status() is not built  # but no read gets one older than this
    built = coordinator.status()
    job.tell(servers[0], MsgType.LEAVE, {"reason": "test"})  # a drain: /status shows it at once
    coordinator.publish_status(10.0 + 2 * STATUS_SECONDS + 0.001)
    assert coordinator.status() is not built
    [leaving] = [m for m in coordinator.status()["members"] if m["id"] == servers[0]]
    assert leaving["state"] == "draining"
