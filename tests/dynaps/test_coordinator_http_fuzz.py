"""The coordinator's HTTP endpoint in this process, with a recording action sink: the body
rules, a fuzz test of whole requests, and the connection deadline (issue 12)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynaps.contract import secret
from dynaps.coordinator import http, process

TOKEN = secret.http_token(secret.new_secret())
BOUNDS = {"servers": (1, 4), "workers": (2, 6)}


class Sink:
    def __init__(self) -> None:
        self.actions: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, action: str, body: dict[str, Any]) -> bool:
        with self.lock:
            self.actions.append((action, body))
        return True

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            taken, self.actions = self.actions, []
        return taken


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[http.StatusServer, Sink]]:
    sink = Sink()
    server = http.StatusServer("127.0.0.1", 0, lambda: {"job": "fuzz"}, sink, TOKEN, BOUNDS)
    try:
        yield server, sink
    finally:
        server.close()


def exchange(port: int, raw: bytes) -> int:
    """Send ``raw``; the answer's status code, 0 when the server closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before it read everything
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    if not answer:
        return 0
    return int(answer.split(b" ", 2)[1])


# ---------------------------------------------------------------------- the body rules


@pytest.mark.parametrize(
    ("action", "raw", "expected"),
    [
        ("scale", b'{"servers": 4, "workers": 2}', {"servers": 4, "workers": 2}),
        ("scale", b'{"workers": 6}', {"workers": 6}),
        ("scale", b"", {}),
        ("drain", b'{"node": "job-server-1"}', {"node": "job-server-1"}),
        ("checkpoint", b"{}", {}),
        ("shutdown", b"", {}),
    ],
)
def test_valid_bodies_pass_as_the_coordinator_takes_them(
    action: str, raw: bytes, expected: dict[str, Any]
) -> None:
    assert http.parse_action(action, raw, BOUNDS) == expected


@given(st.integers())
def test_a_count_passes_only_within_the_bounds(count: int) -> None:
    raw = json.dumps({"workers": count}).encode()
    if 2 <= count <= 6:
        assert http.parse_action("scale", raw, BOUNDS) == {"workers": count}
    else:
        with pytest.raises(http.BadRequestError) as caught:
            http.parse_action("scale", raw, BOUNDS)
        assert caught.value.status == HTTPStatus.BAD_REQUEST
        assert "workers" in str(caught.value)


@pytest.mark.parametrize("header", [None, "0", "17", " 17 ", str(http.MAX_BODY)])
def test_content_length_accepts_sizes(header: str | None) -> None:
    assert http.content_length(header) == int(header or 0)


@pytest.mark.parametrize("header", ["-1", "abc", "", "1e3", "+1", "0x10", "١٢", "12345678901"])
def test_content_length_refuses_anything_else(header: str) -> None:
    with pytest.raises(http.BadRequestError):
        http.content_length(header)


# ---------------------------------------------------------------------- fuzz

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "get", "P\x00ST"])
paths = st.one_of(
    st.sampled_from(["/healthz", "/status", "/metrics", "/scale", "/drain", "/checkpoint", "/shutdown", "/"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(lambda t: "/" + t),
)
auths = st.sampled_from(["", f"Authorization: Bearer {TOKEN}\r\n", "Authorization: Bearer x\r\n"])
lengths = st.one_of(
    st.none(),
    st.integers(-(2**40), 2**40).map(str),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["servers", "workers", "node", "exit_code", "path"]),
        st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.text(max_size=20), st.none(), st.floats()),
        max_size=3,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, path=paths, auth=auths, length=lengths, body=bodies)
def test_fuzz_no_request_crashes_the_endpoint_nor_acts_without_the_token(
    endpoint: tuple[http.StatusServer, Sink],
    method: str,
    path: str,
    auth: str,
    length: str | None,
    body: bytes,
) -> None:
    server, sink = endpoint
    sink.take()
    header = "" if length is None else f"Content-Length: {length}\r\n"
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{header}\r\n".encode() + body
    code = exchange(server.port, raw)
    acted = sink.take()
    assert code < 500 or code == HTTPStatus.NOT_IMPLEMENTED, code  # 501: a method it does not serve
    authorized = auth == f"Authorization: Bearer {TOKEN}\r\n"
    if acted:
        assert authorized
        assert method == "POST"
        assert code == HTTPStatus.ACCEPTED
        ((action, fields),) = acted
        assert path.partition("?")[0].strip("/") == action
        # what reached the coordinator is exactly what the strict model lets through
        assert fields == http.parse_action(action, json.dumps(fields).encode(), BOUNDS)
    # /healthz and /metrics are open on purpose (docs/security.md); everything else wants the
    # token. The path as served: Python's http.server reduces a leading "//" to "/" (gh-87389)
    served = "/" + path.lstrip("/") if path.startswith("//") else path
    if not authorized and served.partition("?")[0] not in http.UNAUTHENTICATED and method in ("GET", "POST"):
        assert code in (0, HTTPStatus.UNAUTHORIZED, HTTPStatus.BAD_REQUEST)
    assert exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n") == HTTPStatus.OK


# ---------------------------------------------------------------------- connections


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except ConnectionResetError:
        return True


def test_a_trickling_connection_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "REQUEST_DEADLINE", 1.0)
    server = http.StatusServer("127.0.0.1", 0, lambda: {}, Sink(), TOKEN)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            for byte in b"GET /status HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # the server closed it
                time.sleep(0.1)  # each byte well within the read timeout
                if closed_by_peer(sock):
                    break
            elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 1.0 + 5.0  # the deadline, plus a turn of the serving loop and load
    finally:
        server.close()


def test_beyond_the_cap_a_newcomer_takes_an_idle_slot_and_is_refused_when_all_are_trusted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the cap a new connection takes the slot of the oldest one that has not shown the
    token; when every open connection has, the newcomer is closed at once, unanswered."""
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 2)
    server = http.StatusServer("127.0.0.1", 0, lambda: {}, Sink(), TOKEN)
    read = f"GET /status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    trusted: list[socket.socket] = []
    try:
        assert exchange(server.port, read) == HTTPStatus.OK  # an idle one made room
        assert server.cut >= 1
        # The answered connection counts (trusted) until its handler ends, a moment after the
        # answer: on a loaded machine a connection made before then found no slot to take.
        deadline = time.monotonic() + 10
        while server.trusted:
            assert time.monotonic() < deadline, "the answered connection was never released"
            time.sleep(0.01)
        for _ in range(2):  # the token shown, then a body that never comes: trusted slots held
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(f"POST /scale HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode())
            sock.sendall(b"Content-Length: 100\r\n\r\n{")
            trusted.append(sock)
            deadline = time.monotonic() + 10
            while server.trusted < len(trusted):  # its head read: one more trusted slot
                assert time.monotonic() < deadline, "the server never read the token"
                time.sleep(0.01)
        assert exchange(server.port, read) == 0  # every slot trusted: closed unanswered
        assert server.refused == 1
    finally:
        for sock in idle + trusted:
            sock.close()
        server.close()


def test_only_an_answer_that_shows_the_job_ended_ends_the_coordinators_linger() -> None:
    """An ended coordinator answers /status until one reader was told how the job ended
    (dynaps.coordinator.process). An answer built while the job ran and written after its end
    must not count: `dynaps run` then never printed the end (tests/dynaps/test_stages.py)."""
    doc: dict[str, Any] = {"phase": "running", "exitCode": None}
    server = http.StatusServer("127.0.0.1", 0, lambda: dict(doc), Sink(), TOKEN)
    read = f"GET /status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    try:
        assert exchange(server.port, read) == HTTPStatus.OK
        doc.update(phase="stopping", exitCode=0)
        assert exchange(server.port, read) == HTTPStatus.OK
        deadline = time.monotonic() + 10  # counted once written: a moment after the client read it
        while not server.end_reads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.end_reads == 1  # the running answer was not counted
    finally:
        server.close()


def test_a_doubled_slash_reaches_the_path_it_names_and_its_token_check() -> None:
    """``//status`` is served as ``/status`` (http.server, gh-87389): still only with the token;
    ``//metrics`` is ``/metrics``, open like it (what the fuzz test above once generated)."""
    server = http.StatusServer("127.0.0.1", 0, lambda: {"job": "x"}, Sink(), TOKEN)
    try:
        assert exchange(server.port, b"GET //status HTTP/1.1\r\n\r\n") == HTTPStatus.UNAUTHORIZED
        with_token = f"GET //status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        assert exchange(server.port, with_token) == HTTPStatus.OK
        assert exchange(server.port, b"GET //metrics HTTP/1.1\r\n\r\n") == HTTPStatus.OK
    finally:
        server.close()


def test_actions_waiting_for_the_coordinator_are_bounded() -> None:
    """Actions go from the HTTP thread to the coordinator's loop through a bounded queue: past
    its limit a POST is answered 429 (Retry-After), and once the loop took them, accepted again."""
    pending = process.PendingActions(limit=2)
    server = http.StatusServer("127.0.0.1", 0, lambda: {}, pending.offer, TOKEN)
    post = f"POST /checkpoint HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}"
    try:
        codes = [exchange(server.port, post.encode()) for _ in range(3)]
        assert codes == [HTTPStatus.ACCEPTED, HTTPStatus.ACCEPTED, HTTPStatus.TOO_MANY_REQUESTS]
        assert pending.take() == [("checkpoint", {}), ("checkpoint", {})]
        assert pending.take() == []
        assert exchange(server.port, post.encode()) == HTTPStatus.ACCEPTED
        assert pending.take() == [("checkpoint", {})]
    finally:
        server.close()
