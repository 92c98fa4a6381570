"""Authenticating every message of a job: a MAC trailer and a replay check.

Every message a transport sends (:mod:`dynaps.wire.tcp_transport`, or
:mod:`dynaps.wire.zmq_transport`) carries a trailer of :data:`TRAILER_SIZE` bytes at the end
of its first frame::

    sender i16 | dest i16 | frames u16 | salt u16 | seq u64 | tag (16 bytes)

The first frame is a header, or the whole of a small message (most requests and replies
are one frame); the frames after it, large arrays, go without a copy, and no message
pays for a frame of its own for the trailer (a frame more cost 6 us per round trip).
``frames`` is the message's frame count.

``tag`` is a MAC keyed with the job's wire key (:func:`dynaps.contract.secret.wire_key`)
over the lengths of every frame but the last, the frames themselves (header and payload)
and the trailer's first 16 bytes, in that order (the frame count in the trailer and the
fixed trailer size make the split unambiguous): a process without the job secret can
neither forge a message nor change one, the key differs per job (a frame of one job means
nothing to another), and a frame cannot be moved to another sender, destination or frame
split.  The header's sender field (what handlers trust: SHUTDOWN only from the
coordinator...) must be the endpoint that signed, so a frame cannot be re-attributed; the
key is the job's, shared by its processes, so this keeps outsiders out, not a compromised
member.  The MAC is keyed BLAKE2b for messages up to :data:`SMALL_BYTES` (a request of
one frame is signed in 0.85 us and checked in 1.3, both in one pass over the bytes the
wire carries; HMAC has a fixed cost of 2.5 us, GMAC 3 us) and AES-GCM's tag above it
(NIST SP 800-38D, a key derived from the wire key), with the last frame (a large array,
as a rule) as associated data and the rest as plaintext whose ciphertext is thrown away,
so no large frame is copied to be signed: it runs on the CPU's AES and carry-less
multiply instructions, 5 us to sign a 40 KB reply where Poly1305 took 12 us, HMAC-SHA256
25 us and BLAKE2b 70 us, on the sender and again on the receiver (``bench/README.md``).

GCM's nonce is sender, salt and seq: it never repeats under the job's key, which GCM
needs (a repeated nonce would reveal its hash key).  ``seq`` is a per-process counter that
starts at the wall clock in nanoseconds and grows by one per message: each connection is
FIFO, so from one sender a receiver sees it grow, and anything not above the last one
seen is a replay (or a duplicate) and is dropped.  Starting at the clock makes a
restarted process (same endpoint id, a new life) continue above its previous life's
numbers as long as it sent fewer messages than nanoseconds passed.  Processes that have
no endpoint id yet (a node before WELCOME) all send as NO_ENDPOINT, so those are checked
against a bounded set of the sequence numbers seen, and ``salt`` (random per process)
keeps two of them that start in the same nanoseconds from sharing a nonce.

What fails is dropped and counted by the caller; nothing here raises to the sender.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dynaps.errors import ProtocolError
from dynaps.wire.protocol import NO_ENDPOINT

META = struct.Struct("<hhHHQ")
TAG_SIZE = 16
TRAILER_SIZE = META.size + TAG_SIZE
MAX_FRAMES = 0xFFFF
SMALL_BYTES = 4096  # up to this many bytes in all: keyed BLAKE2b, above: AES-GCM
ANONYMOUS_SEEN = 4096  # sequence numbers remembered for senders without an id yet
SENDER_FIELD = struct.Struct("<h")  # the sender field of the protocol header (dynaps.wire.protocol)
SENDER_FIELD_END = 8  # ... ends here


_LENGTHS = [struct.Struct(f"<{n}I") for n in range(8)]  # formats of the usual frame counts


def _lengths(sizes: Sequence[int]) -> bytes:
    n = len(sizes)
    return (_LENGTHS[n] if n < len(_LENGTHS) else struct.Struct(f"<{n}I")).pack(*sizes)


def _size(frame: Any) -> int:
    return len(frame) if isinstance(frame, bytes) else int(memoryview(frame).nbytes)


def flat(frame: Any) -> Any:
    """``frame`` as a flat buffer of bytes (AES-GCM and ``sendmsg`` take it so): bytes as they
    are, an array's memory cast to bytes, an empty array as b""."""
    if type(frame) is bytes:
        return frame
    view = memoryview(frame)
    return view.cast("B") if view.nbytes else b""


class Authenticator:
    """Signs what one endpoint sends and checks what it receives, with one job's key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the wire key is too short")
        # a keyed state copied per message: cheaper than keying a new hash each time
        self._small = hashlib.blake2b(key=key, digest_size=TAG_SIZE)
        self._gcm = AESGCM(hashlib.blake2b(key=key, digest_size=16, person=b"dynaps-gmac").digest())
        self._salt = secrets.randbits(16)
        self._seq = time.time_ns()
        self._last: dict[int, int] = {}
        self._anonymous: collections.OrderedDict[int, None] = collections.OrderedDict()

    def _tag(self, meta: bytes, frames: Sequence[Any], sizes: Sequence[int]) -> bytes:
        # What is signed: the lengths of all frames but the last, the frames, the trailer's
        # first bytes: for a message of one frame that is what the wire carries before the
        # tag, so a small one is signed and checked in one pass (see sign).
        lengths = _lengths(sizes[:-1])
        if sum(sizes) <= SMALL_BYTES:
            small = self._small.copy()
            small.update(lengths)
            for frame in frames:
                small.update(frame)
            small.update(meta)
            return small.digest()
        # nonce: sender, salt, seq (12 bytes); meta and lengths bind dest and the frame split.
        # The last frame (a large array, as a rule) is GCM's associated data and the rest its
        # plaintext, so nothing large is copied: the tag covers both, the ciphertext is thrown
        # away and the receiver computes it again from what it received.
        return self._gcm_tag(meta, b"".join([lengths, *frames[:-1], meta]), flat(frames[-1]))

    def _gcm_tag(self, meta: bytes, rest: bytes, last: Any) -> bytes:
        """AES-GCM's tag: nonce sender, salt, seq (12 bytes of ``meta``), ``rest`` the
        plaintext (its ciphertext thrown away), ``last`` (flat) the associated data."""
        return self._gcm.encrypt(meta[0:2] + meta[6:16], rest, last)[-TAG_SIZE:]

    def _two_frame_tag(self, head: bytes, meta: bytes, last: Any) -> bytes:
        """:meth:`_tag`'s large form for a header of bytes and one flat array, without the
        general form's lists and sums (half of sign's time was the Python around the MAC)."""
        return self._gcm_tag(meta, _LENGTHS[1].pack(len(head)) + head + meta, last)

    def _header_and_array_tag(self, head: bytes, meta: bytes, last: Any) -> bytes:
        """:meth:`_tag` for a header of bytes and one flat array (pull replies, pushes),
        without the general form's lists and sums: BLAKE2b or AES-GCM by size, as there."""
        if len(head) + len(last) > SMALL_BYTES:
            return self._two_frame_tag(head, meta, last)
        small = self._small.copy()
        small.update(_LENGTHS[1].pack(len(head)))
        small.update(head)
        small.update(last)
        small.update(meta)
        return small.digest()

    def sign(self, sender: int, dest: int, frames: Sequence[Any]) -> list[Any]:
        """``frames`` with the trailer appended to the first (a header, or the whole of a
        small message): the others, large arrays among them, go as they are, without a copy."""
        self._seq += 1
        first = frames[0] if frames else None
        if type(first) is bytes and len(frames) == 1 and len(first) <= SMALL_BYTES:
            # most requests and replies: what is signed is what the wire carries before the
            # tag, so it is hashed in one call (half the general path's time)
            signed = first + META.pack(sender, dest, 1, self._salt, self._seq)
            small = self._small.copy()
            small.update(signed)
            return [signed + small.digest()]
        if type(first) is bytes and len(frames) == 2:
            # a header and one array: pull replies, pushes (the general path's lists and
            # sums cost as much as the MAC of a small one)
            meta = META.pack(sender, dest, 2, self._salt, self._seq)
            return [first + meta + self._header_and_array_tag(first, meta, flat(frames[1])), frames[1]]
        if first is None or len(frames) > MAX_FRAMES:
            raise ValueError(f"a message of {len(frames)} frames")
        meta = META.pack(sender, dest, len(frames), self._salt, self._seq)
        tag = self._tag(meta, frames, [_size(f) for f in frames])
        head = first if isinstance(first, bytes) else bytes(memoryview(first))
        return [head + meta + tag, *frames[1:]]

    def verify(self, me: int, frames: list[Any]) -> list[Any]:
        """The frames without the trailer, if it proves they come from the job unchanged,
        for ``me`` and not seen before; raises ProtocolError otherwise."""
        first = frames[0] if frames else b""
        size = len(first) - TRAILER_SIZE
        if size < 0:
            raise ProtocolError("message without an authentication trailer")
        sender, dest, count, _salt, seq = META.unpack_from(first, size)
        if count != len(frames):
            raise ProtocolError("authentication trailer counts other frames")
        if count == 1 and size <= SMALL_BYTES:  # the one-pass form of a small message
            small = self._small.copy()
            small.update(first[:-TAG_SIZE])  # a copy of under 4 KB beats a memoryview
            tag = small.digest()
            body = [first[:size]]
        elif count == 2 and type(frames[1]) is bytes:  # a header and one array: sign's two-frame forms
            body = [first[:size], frames[1]]
            tag = self._header_and_array_tag(body[0], first[size:-TAG_SIZE], frames[1])
        else:
            body = [first[:size], *frames[1:]]
            tag = self._tag(first[size:-TAG_SIZE], body, [len(f) for f in body])
        if not hmac.compare_digest(tag, first[-TAG_SIZE:]):
            raise ProtocolError("message fails authentication (not from this job, or changed)")
        self._admit(me, body[0], sender, dest, seq)
        return body

    def _admit(self, me: int, head: Any, sender: int, dest: int, seq: int) -> None:
        """Raises ProtocolError unless an authentic message from ``sender`` (its header
        ``head``) is for ``me`` and newer than what came from there before."""
        if len(head) >= SENDER_FIELD_END:
            (named,) = SENDER_FIELD.unpack_from(head, SENDER_FIELD_END - SENDER_FIELD.size)
            if named != sender:
                raise ProtocolError(f"header names sender {named}, signed by {sender}")
        if dest >= 0 and me not in (dest, NO_ENDPOINT):
            # A node learns its id from the coordinator's WELCOME, sent to that id; a
            # negative id is a temporary endpoint for an address (the coordinator refusing
            # a registration or fencing a lost node), whoever listens there.
            raise ProtocolError(f"message for endpoint {dest}, this is {me}")
        if sender == NO_ENDPOINT:
            if seq in self._anonymous:
                raise ProtocolError("replayed message (sequence number seen before)")
            self._anonymous[seq] = None
            if len(self._anonymous) > ANONYMOUS_SEEN:
                self._anonymous.popitem(last=False)
        else:
            if seq <= self._last.get(sender, 0):
                raise ProtocolError(f"replayed message from endpoint {sender} (sequence {seq})")
            self._last[sender] = seq
