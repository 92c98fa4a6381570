"""The lock a worker node shares with its training process survives a holder that died."""

from __future__ import annotations

import threading

from dynaps.store.shm import SharedLock


def test_with_statement_takes_over_from_a_dead_holder() -> None:
    lock = SharedLock.create()
    try:
        lock.acquire()  # the other process took the lock ... and died holding it
        lock.recover_when_dead(lambda: False, poll=0.01)
        entered = threading.Event()

        def enter() -> None:
            with lock:
                entered.set()

        thread = threading.Thread(target=enter, daemon=True)
        thread.start()
        thread.join(5.0)
        assert entered.is_set(), "`with lock:` waited for a holder that is gone"
    finally:
        lock.unlink()


def test_with_statement_waits_for_a_live_holder() -> None:
    lock = SharedLock.create()
    try:
        lock.recover_when_dead(lambda: True, poll=0.01)
        lock.acquire()
        entered = threading.Event()

        def enter() -> None:
            with lock:
                entered.set()

        thread = threading.Thread(target=enter, daemon=True)
        thread.start()
        assert not entered.wait(0.1), "`with lock:` entered while a live process held the lock"
        lock.release()
        thread.join(5.0)
        assert entered.is_set()
    finally:
        lock.unlink()
