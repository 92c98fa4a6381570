"""Where the MAC's time goes on a 100-key pull reply (40,000 bytes of rows), in one process.

Times, with ``timeit`` (the best of ``--repeat`` runs of ``--count`` calls, in us per call):
``Authenticator.sign`` and ``sign`` + ``verify`` of the reply as a node sends and a client
receives it, and their parts: joining the frames into one buffer, the GMAC over the joined
buffer, and GMAC fed frame by frame (``cryptography``'s incremental GCM), which would save
the join.  CPU time of one process, so a busy machine moves it less than the round trips of
``bench/remote_pull.py``.

    python bench/auth_parts.py [--count 20000] [--repeat 5] [--keys 100]

``--keys`` sets the reply's rows (400 bytes each) to time larger messages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dynaps.wire.auth import Authenticator

KEY = bytes(range(32))
NONCE = bytes(12)


def parts(keys: int = 100) -> dict[str, Callable[[], Any]]:
    # a reply's header (its sender field, bytes 6-8, says endpoint 1) and `keys` rows of 100 float32
    head = bytes(6) + struct.pack("<h", 1) + bytes(32)
    rows = np.ones((keys, 100), np.float32)
    wire = rows.tobytes()
    lengths, meta = bytes(8), bytes(16)
    sender, receiver = Authenticator(KEY), Authenticator(KEY)
    gmac_key = hashlib.blake2b(key=KEY, digest_size=16, person=b"dynaps-gmac").digest()
    gmac = AESGCM(gmac_key)
    aes = algorithms.AES(gmac_key)

    def sign_and_verify() -> Any:
        signed = sender.sign(1, 2, [head, rows])
        return receiver.verify(2, [signed[0], wire])  # as received: bytes

    def incremental() -> bytes:
        encryptor = Cipher(aes, modes.GCM(NONCE)).encryptor()
        for piece in (lengths, head, wire, meta):
            encryptor.authenticate_additional_data(piece)
        encryptor.finalize()
        return encryptor.tag

    return {
        "sign": lambda: sender.sign(1, 2, [head, rows]),
        "sign + verify": sign_and_verify,
        "join the frames": lambda: b"".join([lengths, head, wire, meta]),
        "GMAC of the joined buffer": lambda: gmac.encrypt(NONCE, b"", wire),
        "GMAC fed frame by frame": incremental,
    }


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--count", type=int, default=20_000, help="calls per timing (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="timings, the best is kept (default 5)")
    parser.add_argument(
        "--keys", type=int, default=100, help="rows of the reply, 400 bytes each (default 100: 40 KB)"
    )
    args = parser.parse_args()
    if args.count < 1 or args.repeat < 1 or args.keys < 1:
        parser.error("--count, --repeat and --keys must be at least 1")
    figures = {
        name: round(min(timeit.repeat(call, number=args.count, repeat=args.repeat)) / args.count * 1e6, 2)
        for name, call in parts(args.keys).items()
    }
    print(json.dumps({"us per call": figures}, indent=1))


if __name__ == "__main__":
    main()
