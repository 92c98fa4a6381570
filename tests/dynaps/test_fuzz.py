"""A running node survives 10,000 random and mutated frames and still answers correctly.

The mutated frames are signed with the job's key (as an insider, or a bug, would send
them), so they reach the decoder; the random ones are not, and the transport drops them.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import zmq

import dynaps
from dynaps.contract import secret
from dynaps.wire import control
from dynaps.wire.auth import Authenticator
from dynaps.wire.codec import encode
from dynaps.wire.protocol import HEADER, PROTOCOL_VERSION, Message, MsgType
from tests.dynaps.wire_peers import peer_sockets

pytestmark = pytest.mark.integration

FUZZ_MESSAGES = 10_000
STRANGER = 4242  # an endpoint id no node knows


def set_known_values(ps: dynaps.PS) -> None:
    W = ps.table("W")
    W.set(np.arange(100), np.arange(400, dtype=np.float32).reshape(100, 4))


def read_back(ps: dynaps.PS) -> tuple[np.ndarray, dict[str, int]]:
    W = ps.table("W")
    W.push([7], np.ones((1, 4)))
    return W.pull(np.arange(100)), ps.node_stats(ps.node)


def server_counters(ps: dynaps.PS, server: int) -> dict[str, int]:
    return ps.node_stats(server)


def valid_messages() -> list[list[bytes]]:
    keys = np.array([1, 2, 3], dtype=np.int64)
    rows = np.ones((3, 4), dtype=np.float32)
    samples = [
        Message(MsgType.PULL, STRANGER, STRANGER, 1, 0, 3, keys=keys),
        Message(MsgType.PUSH, STRANGER, STRANGER, 2, 0, 3, keys=keys, values=rows),
        Message(MsgType.LOCALIZE, STRANGER, STRANGER, 3, 0, 3, keys=keys),
        Message(MsgType.HANDOFF, STRANGER, STRANGER, 4, 0, 3, aux=1, keys=keys),
        Message(MsgType.TRANSFER, STRANGER, STRANGER, 5, 0, 3, keys=keys, values=rows),
        Message(MsgType.STATS, STRANGER, STRANGER, 6, body=control.Empty()),
        Message(MsgType.READY, STRANGER, STRANGER, 7, body=control.Ready(version=1)),
    ]
    return [[bytes(memoryview(f)) for f in encode(m)] for m in samples]


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    work = [bytearray(f) for f in frames]
    choice = rng.randrange(6)
    if choice == 0:  # flip bits anywhere except the sender/requester fields
        frame = rng.randrange(len(work))
        for _ in range(rng.randint(1, 8)):
            if work[frame]:
                at = rng.randrange(len(work[frame]))
                if frame == 0 and 6 <= at < 10:
                    continue
                work[frame][at] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate or extend a frame
        frame = rng.randrange(len(work))
        work[frame] = work[frame][: rng.randrange(len(work[frame]) + 1)] + bytearray(rng.randrange(3) * 8)
    elif choice == 2:  # drop or duplicate a frame
        if rng.random() < 0.5 and len(work) > 1:
            del work[rng.randrange(len(work))]
        else:
            work.append(work[rng.randrange(len(work))])
    elif choice == 3:  # a random header with plausible fields
        work[0] = bytearray(
            HEADER.pack(
                PROTOCOL_VERSION,
                rng.choice(list(MsgType)),
                rng.randrange(4),
                rng.randrange(3),
                STRANGER,
                STRANGER,
                rng.randrange(20),
                0,
                rng.randrange(2**64),
                rng.randrange(10**6),
                rng.randrange(9),
            )
        )
    elif choice == 4:  # garbage JSON body
        work = [work[0], bytearray(json.dumps(rng.choice([[], 1, "x", {"a": None}])).encode())]
    else:  # pure noise
        work = [bytearray(rng.randbytes(rng.randrange(64))) for _ in range(rng.randint(1, 4))]
    return [bytes(f) for f in work]


def test_node_survives_random_and_mutated_frames() -> None:
    tables = {"W": dynaps.TableSpec(num_keys=100, dim=4)}
    with dynaps.LocalCluster(servers=1, workers=1, tables=tables) as cluster:
        cluster.run(set_known_values)
        server = next(m for m in cluster.status()["members"] if m["role"] == "server")
        before = cluster.run(server_counters, server["id"])[0]
        rng = random.Random(1234)
        originals = valid_messages()
        key = secret.wire_key(cluster._secret)  # the job's own key: the frames pass the MAC
        with peer_sockets(key) as make:
            sock = make(zmq.PUSH)
            sock.connect(server["address"])
            signer = Authenticator(key)
            for i in range(FUZZ_MESSAGES):
                if i % 5:
                    frames = signer.sign(STRANGER, server["id"], mutate(rng, rng.choice(originals)))
                else:
                    frames = [rng.randbytes(rng.randrange(100))]
                sock.send_multipart(frames)
            deadline = time.monotonic() + 60
            while True:  # PUSH is asynchronous: wait until the node has read everything
                after = cluster.run(server_counters, server["id"])[0]
                dropped = after.get("malformed", 0) - before.get("malformed", 0)
                if dropped >= FUZZ_MESSAGES or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        # the signed ones reached the decoder (those whose header names another sender do not)
        assert after["messages"] - before["messages"] >= FUZZ_MESSAGES // 2
        assert after["malformed"] - before.get("malformed", 0) == FUZZ_MESSAGES
        values, _ = cluster.run(read_back)[0]
        expected = np.arange(400, dtype=np.float32).reshape(100, 4)
        expected[7] += 1
        np.testing.assert_array_equal(values, expected)
