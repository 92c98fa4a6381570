"""The ``status`` and ``logs`` verbs of ``dynaps`` (and of ``kubectl dynaps``): arguments and loops."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynaps.contract import TERMINAL_PHASES
from dynaps.errors import ConfigError
from dynaps.observe import podlogs, runfile
from dynaps.observe.render import Sample, render, throughput
from dynaps.observe.sources import (
    CoordinatorDroppedError,
    CoordinatorGoneError,
    Kubectl,
    read_coordinator,
    read_kubernetes,
)
from dynaps.observe.view import JobView

Reader = Callable[[], tuple[dict[str, Any], JobView]]
CLEAR = "\x1b[H\x1b[J"  # cursor home, clear to the end: a --watch redraw on a terminal
WATCH_DROPS = 5  # a watch asks again this many times when the coordinator closes a read
WATCH_DROP_PAUSE = 0.2  # seconds between those reads

STATUS_EPILOG = """\
sources:
  Kubernetes (the default): the ParameterServerJob's status, its pods and events, read with
  the kubectl on PATH (its current context, or -n/--context/--kubeconfig).
  A local `dynaps run`: --local [JOB] finds the run's coordinator from the file `dynaps run`
  writes while it runs ($DYNAPS_RUN_DIR, else $XDG_RUNTIME_DIR/dynaps, else
  ~/.cache/dynaps/runs; mode 0600); or --address http://127.0.0.1:PORT with --token-file.

throughput is what reported metrics say (names ending in per_s, _rate or throughput), and
with --watch how fast counters grow between two reads (metrics named steps, samples,
*_total..., and the data shards the workers finished).

examples:
  dynaps status quickstart -n team-a
  dynaps status quickstart --watch
  kubectl dynaps status quickstart -o json
  dynaps status --local quickstart --watch
  dynaps status --address http://127.0.0.1:41235 --token-file token.txt
"""

LOGS_EPILOG = """\
Each line is prefixed by the pod it comes from, without the job's name: [coordinator],
[server-0], [worker-1]. Without --follow the pods are printed one after the other
(coordinator, servers, workers); with --follow every pod's log is followed at once and
the lines are merged, each line whole, as they come. Logs come from `kubectl logs`, so
the cluster's kubelets must serve them. A local `dynaps run` prints its nodes' output
itself, prefixed the same way.

examples:
  dynaps logs quickstart -n team-a
  dynaps logs quickstart --follow --role worker
  kubectl dynaps logs quickstart --tail 20
"""


def _kubectl_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="the job's namespace (default: kubectl's current one)")
    parser.add_argument("--context", help="the kubeconfig context kubectl uses")
    parser.add_argument("--kubeconfig", help="the kubeconfig file kubectl uses")


def add_parsers(sub: Any) -> None:
    """Add ``status`` and ``logs`` to the subparsers ``sub`` (of ``dynaps`` or ``kubectl dynaps``)."""
    status = sub.add_parser(
        "status",
        help="show a job's phase, members, shards, progress, metrics and data loss",
        description="Show a job: its phase and conditions, its members by role and their state, "
        "how its shards are spread over the servers, progress, throughput, the metrics its "
        "programs report, and any data loss. Works on Kubernetes and on a local `dynaps run`.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("job", nargs="?", metavar="JOB", help="the ParameterServerJob's name")
    _kubectl_arguments(status)
    status.add_argument("--local", action="store_true", help="a `dynaps run` on this machine (JOB optional)")
    status.add_argument("--address", help="a coordinator's HTTP address (http://HOST:PORT)")
    status.add_argument(
        "--token", help="the coordinator's bearer token (visible in `ps`: prefer --token-file)"
    )
    status.add_argument("--token-file", help="a file holding the coordinator's bearer token")
    status.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: the raw document (default text)",
    )
    status.add_argument(
        "-w", "--watch", action="store_true", help="read again every --interval seconds; Ctrl-C ends"
    )
    status.add_argument(
        "--interval",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="between reads with --watch (default 2)",
    )

    logs = sub.add_parser(
        "logs",
        help="print the logs of every pod of a job, each line prefixed by its role",
        description="Print the logs of every pod of a Kubernetes job, each line prefixed by the pod's role.",
        epilog=LOGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    logs.add_argument("job", metavar="JOB", help="the ParameterServerJob's name")
    _kubectl_arguments(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="follow every pod's log until Ctrl-C")
    logs.add_argument(
        "--role",
        action="append",
        default=[],
        choices=("coordinator", "server", "worker"),
        help="only this role's pods (repeatable)",
    )
    logs.add_argument("--tail", type=int, metavar="LINES", help="only the last LINES lines of each pod")
    logs.add_argument("--since", metavar="DURATION", help="only lines newer than DURATION (5s, 2m, 3h)")
    logs.add_argument("--timestamps", action="store_true", help="each line with its time")
    logs.add_argument(
        "--max-follow",
        type=int,
        default=podlogs.MAX_FOLLOW,
        metavar="PODS",
        help=f"--follow at most this many pods at once (default {podlogs.MAX_FOLLOW})",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from exc
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: between 0.1 and 3600 seconds")
    return value


def _kubectl(args: argparse.Namespace) -> Kubectl:
    return Kubectl(args.namespace, args.context, args.kubeconfig)


def run_logs(args: argparse.Namespace) -> int:
    return podlogs.show_logs(
        _kubectl(args),
        args.job,
        follow=args.follow,
        roles=args.role,
        tail=args.tail,
        since=args.since,
        timestamps=args.timestamps,
        max_follow=args.max_follow,
    )


def _token(args: argparse.Namespace) -> str | None:
    if args.token and args.token_file:
        raise ConfigError("give --token or --token-file, not both")
    if args.token_file:
        try:
            text = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from exc
        if not text:
            raise ConfigError(f"--token-file {args.token_file} is empty")
        return text
    return str(args.token) if args.token else None


def _reader(args: argparse.Namespace) -> Reader:
    """Where ``dynaps status`` reads the job from, as its arguments say."""
    token = _token(args)
    local = args.local or args.address is not None
    if local and (args.namespace or args.context or args.kubeconfig):
        raise ConfigError("-n/--context/--kubeconfig are for Kubernetes jobs, not with --local or --address")
    if args.address is not None:
        from dynaps.observe.sources import coordinator_url

        address = coordinator_url(args.address)
        if token is None:  # perhaps our own `dynaps run`: its file has the token
            token = runfile.find(args.job, address=address).token
        bound = token
        return lambda: read_coordinator(address, bound)
    if args.local:
        if token is not None:
            raise ConfigError("--token and --token-file go with --address (--local finds the token itself)")
        run = runfile.find(args.job)
        return lambda: read_coordinator(run.address, run.token)
    if token is not None:
        raise ConfigError("--token and --token-file go with --address")
    if not args.job:
        raise ConfigError("name the JOB (or use --local / --address for a local run)")
    kubectl, job = _kubectl(args), str(args.job)
    return lambda: read_kubernetes(kubectl, job)


def run_status(args: argparse.Namespace) -> int:
    read = _reader(args)
    if not args.watch:
        doc, view = read()
        _show(args.output, doc, view, None)
        return 0
    return _watch(read, args.output, args.interval)


def _show(output: str, doc: dict[str, Any], view: JobView, rates: dict[str, float] | None) -> None:
    if output == "json":
        print(json.dumps(doc, sort_keys=True), flush=True)
    else:
        sys.stdout.write(render(view, time.time(), rates))
        sys.stdout.flush()


def _watch(read: Reader, output: str, interval: float) -> int:
    """Read, show, sleep, until the job ends, the coordinator goes away or Ctrl-C (all exit 0)."""
    redraw = output == "text" and sys.stdout.isatty()
    previous: Sample | None = None
    dropped = 0  # reads in a row the coordinator closed without an answer
    try:
        while True:
            try:
                doc, view = read()
            except CoordinatorGoneError as exc:
                if previous is None:
                    raise
                print(f"{exc}: the run ended", flush=True)
                return 0
            except CoordinatorDroppedError:
                # a coordinator that is stopping closes the connection of a read it took:
                # ask again, and find it gone (the run ended) or answering
                dropped += 1
                if previous is None or dropped > WATCH_DROPS:
                    raise
                time.sleep(WATCH_DROP_PAUSE)
                continue
            dropped = 0
            current = Sample(time.monotonic(), view)
            rates = throughput(previous, current)
            if redraw:
                sys.stdout.write(CLEAR)
            elif output == "text" and previous is not None:
                print(f"--- {time.strftime('%H:%M:%S')}")
            _show(output, doc, view, rates)
            if view.phase in TERMINAL_PHASES:
                return 0
            previous = current
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
