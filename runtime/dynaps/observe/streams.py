"""Many processes' output merged into one, each line whole and prefixed by its source.

``dynaps run`` pipes every node's output through a :class:`Merger` (``[worker-0] ...``), and
``dynaps logs --follow`` pipes each pod's ``kubectl logs -f``. One thread per stream reads a
line at a time and writes it, prefix and all, in one write under the output's lock: two
sources never interleave within a line (a program that prints a line in pieces, as
``print`` does under ``PYTHONUNBUFFERED``, still reaches the terminal as one line). A line
longer than :data:`MAX_LINE` is cut into pieces, each prefixed, so memory stays bounded; a
last line without a newline gets one.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO

MAX_LINE = 64 * 1024  # bytes held for one line; a longer one goes out in pieces


class Output:
    """One destination (a terminal, a file) shared by many streams: one lock for its writes."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def line(self, prefix: bytes, line: bytes) -> None:
        if not line.endswith(b"\n"):
            line += b"\n"
        with self.lock:
            try:
                self.out.write(prefix + line)
                self.out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the reader went away (`| head`) or the output was closed: drop the line


def copy_lines(stream: IO[bytes], prefix: bytes, output: Output) -> None:
    """Copy ``stream`` to ``output`` a whole line at a time until it ends; closes ``stream``."""
    try:
        for line in iter(lambda: stream.readline(MAX_LINE), b""):
            output.line(prefix, line)
    except (OSError, ValueError):
        pass  # the stream was closed under us (its process was stopped): nothing more to copy
    finally:
        stream.close()


class Merger:
    """The copying threads of many streams; :meth:`join` waits for them all to reach their end."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def add(self, stream: IO[bytes], prefix: str, output: Output) -> None:
        thread = threading.Thread(
            target=copy_lines,
            args=(stream, prefix.encode(), output),
            name=f"copy {prefix.strip()}",
            daemon=True,
        )
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds in all; False if some stream has not ended by then."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


class Prefixer:
    """Children's stdout and stderr, each copied to ours a whole line at a time with a prefix.

    :meth:`pipes` gives the write ends to hand a child (``Popen(stdout=..., stderr=...)``; the
    caller closes them once the child holds them); the read ends belong to the copying
    threads, which close them at their end. Keeping the read ends out of ``Popen`` matters: a
    grandchild that outlives its parent (a worker's program) may hold the pipe open, and
    nothing here must wait for it but :meth:`join`, which has a timeout.
    """

    def __init__(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.out = Output(stdout)
        self.err = Output(stderr)
        self._merger = Merger()

    def pipes(self, name: str) -> tuple[int, int]:
        """Write ends (stdout, stderr) whose lines come out as ``[name] line``."""
        ends = []
        for output in (self.out, self.err):
            read, write = os.pipe()
            self._merger.add(os.fdopen(read, "rb"), f"[{name}] ", output)
            ends.append(write)
        return ends[0], ends[1]

    def say(self, prefix: str, text: str) -> None:
        """A line of our own on stderr, never inside a child's line."""
        self.err.line(prefix.encode(), text.encode())

    def join(self, timeout: float) -> bool:
        return self._merger.join(timeout)
