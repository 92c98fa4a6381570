"""A locally launched process ends with the program that launched it.

A LocalCluster or ``dynaps run`` starts the job's coordinator and nodes as its children and
stops them when it closes.  If it cannot close (SIGKILL, the OOM killer, a CI runner's
cancel, a runner process killed while it was still starting), the children would go on
serving: a node waits for ever for a coordinator to come back, as it must on Kubernetes,
where a coordinator is replaced.  So the launcher names itself (``DYNAPS_LAUNCHER_PID``) and
each child watches its parent: once that is no longer the launcher, the child sends itself
SIGTERM, which ends it the usual way (a coordinator ends the job, a node leaves).

A thread that polls ``getppid`` rather than ``PR_SET_PDEATHSIG``: the kernel sends that
signal when the *thread* that started the child ends, and a LocalCluster may be built on a
thread that ends before the cluster does.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


def follow_launcher(launcher: int) -> threading.Thread:
    """Watch, on a daemon thread, that this process's parent is still ``launcher``; SIGTERM
    to ourselves once it is not.  Returns the thread."""

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(POLL_SECONDS)
        log.warning("the program that launched this process (pid %d) is gone: stopping", launcher)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread
