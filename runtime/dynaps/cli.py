"""The ``dynaps`` command: run jobs locally, validate manifests, and the roles pods run.

dynaps run JOB.yaml                          run a ParameterServerJob on this machine
dynaps run --servers N --workers M --table NAME:KEYS:DIM -- COMMAND ...
dynaps validate JOB.yaml                     check a manifest without running it
dynaps explain [FIELD]                       what a manifest's field means (spec.faultTolerance...)
dynaps status JOB | --local [JOB]            a job's phase, members, shards, progress, data loss
dynaps logs JOB [--follow]                   every pod's log, each line prefixed by its role
dynaps coordinator | server | worker [-- COMMAND ...]   (what the job's pods run)

The same ``status`` and ``logs`` are ``kubectl dynaps status|logs`` through the
``kubectl-dynaps`` executable (:func:`kubectl_main`), a kubectl plugin by its name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from dynaps import profiling
from dynaps.config import is_log_level
from dynaps.contract import (
    Allocation,
    NamedTable,
    ParameterServerJob,
    RuntimeConfig,
    describe_validation_error,
    runtime_config,
)
from dynaps.errors import ConfigError, DynapsError
from dynaps.launcher_watch import follow_launcher
from dynaps.observe import commands as observe

EPILOG = """\
examples:
  dynaps run examples/mf.yaml
  dynaps run --servers 2 --workers 2 --table W:100000:16 -- python train.py
  dynaps validate examples/kge.yaml
  dynaps explain rebalancePolicy
  dynaps status quickstart -n team-a --watch
  dynaps logs quickstart --follow

Inside COMMAND, `ps = dynaps.connect()` gives the worker API (ps.table("W").pull(keys), ...).
"""


def _split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        cut = list(argv).index("--")
        return list(argv[:cut]), list(argv[cut + 1 :])
    return list(argv), []


def _parse_table(text: str) -> NamedTable:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"--table {text!r}: expected NAME:NUM_KEYS:DIM[:DTYPE]")
    try:
        fields: dict[str, Any] = {"name": parts[0], "num_keys": int(parts[1]), "dim": int(parts[2])}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--table {text!r}: NUM_KEYS and DIM must be integers") from exc
    if len(parts) == 4:
        fields["dtype"] = parts[3]
    try:
        return NamedTable(**fields)
    except ValidationError as exc:  # the problems on one line, not pydantic's report with its links
        problems = describe_validation_error(exc).replace("\n", "; ")
        raise argparse.ArgumentTypeError(f"--table {text!r}: {problems}") from None


def _log_level(text: str) -> str:
    level = text.upper()
    if not is_log_level(level):
        raise argparse.ArgumentTypeError(f"{text!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynaps",
        description="dynaps: a parameter server with dynamic parameter allocation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run a job on this machine (a manifest, or COMMAND after --)",
        description="Run a ParameterServerJob manifest, or COMMAND in every worker, on this machine: "
        "coordinator, servers and workers are local processes on 127.0.0.1. The program gets "
        "the manifest's spec.workers.env, and OMP/OPENBLAS/MKL_NUM_THREADS at its share of the "
        "CPUs unless one is set. Exits with the job's status (0 when every worker exited 0).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("manifest", nargs="?", help="a ParameterServerJob YAML file")
    run.add_argument("--servers", type=int, help="number of servers (overrides the manifest)")
    run.add_argument("--workers", type=int, help="number of workers (overrides the manifest)")
    run.add_argument(
        "--table",
        type=_parse_table,
        action="append",
        default=[],
        metavar="NAME:KEYS:DIM[:DTYPE]",
        help="declare a table (repeatable; without a manifest)",
    )
    run.add_argument(
        "--allocation",
        choices=[a.value for a in Allocation],
        help="dynamic (keys move with localize) or static (classic parameter server)",
    )
    run.add_argument(
        "--log-level",
        type=_log_level,
        default=os.environ.get("DYNAPS_LOG_LEVEL", "WARNING"),
        help="log level of the dynaps processes: DEBUG, INFO, WARNING or ERROR (default WARNING)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines from dynaps itself")

    observe.add_parsers(sub)
    validate = sub.add_parser("validate", help="check a manifest and print the runtime configuration")
    validate.add_argument("manifest", help="a ParameterServerJob YAML file")
    explain = sub.add_parser(
        "explain",
        help="what a manifest's field means: its type, bounds, default and its fields",
        description="What a ParameterServerJob field means (as `kubectl explain psjob.FIELD`).",
        epilog="examples:\n  dynaps explain\n  dynaps explain faultTolerance.checkpoint\n"
        "  dynaps explain spec.tables.updater.kind\n  dynaps explain status.dataLoss",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument(
        "field", nargs="?", default="", help="a dotted path under spec (the default) or status"
    )

    coordinator = sub.add_parser("coordinator", help="run a job's coordinator (what its pod runs)")
    coordinator.add_argument(
        "--announce", action="store_true", help="print the bound addresses on stdout once listening"
    )
    sub.add_parser("server", help="run a server node (what a server pod runs)")
    sub.add_parser(
        "worker",
        help="run a worker node; it starts the program after -- (or, with DYNAPS_ATTACH_TOKEN set, "
        "lets one process attach by that token instead)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list, command = _split_command(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)

    def dispatch() -> int:
        if args.verb == "run":
            return _run(args, command)
        if args.verb == "validate":
            return _validate(args.manifest)
        if args.verb == "explain":
            from dynaps.explain import explain  # the schema and docstrings: only when asked

            print(explain(args.field))
            return 0
        if args.verb == "status":
            return observe.run_status(args)
        if args.verb == "logs":
            return observe.run_logs(args)
        return _role(args, command)

    return _reporting_errors(dispatch, "dynaps")


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """``kubectl-dynaps``: kubectl runs it for ``kubectl dynaps ...`` (a plugin by its name)."""
    parser = argparse.ArgumentParser(
        prog="kubectl dynaps",
        description="dynaps jobs on Kubernetes: the status and logs of a ParameterServerJob.",
        epilog="The same as `dynaps status` and `dynaps logs`; see `kubectl dynaps status --help`.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    observe.add_parsers(sub)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return _reporting_errors(
        lambda: observe.run_status(args) if args.verb == "status" else observe.run_logs(args),
        "kubectl dynaps",
    )


def _reporting_errors(action: Callable[[], int], prog: str) -> int:
    """A user's mistake is one line on stderr and exit code 2, never a traceback."""
    try:
        return action()
    except DynapsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _validate(path: str) -> int:
    from dynaps.manifest import load_manifest

    job = load_manifest(path)
    config = runtime_config(job, coordinator=f"{job.metadata.name}-coordinator:7070")
    print(f"{path}: valid ParameterServerJob {job.metadata.name!r}")
    print(json.dumps(config.to_wire(), indent=2, sort_keys=True))
    return 0


def _job_from_args(
    args: argparse.Namespace, command: list[str]
) -> tuple[RuntimeConfig, list[str], dict[str, str]]:
    """The job's configuration, its program, and the program's environment (the manifest's
    ``spec.workers.env``)."""
    program_env: dict[str, str] = {}
    if args.manifest:
        from dynaps.manifest import load_manifest

        if args.table:
            raise ConfigError("--table declares tables only without a manifest (the manifest has them)")
        job: ParameterServerJob = load_manifest(args.manifest)
        config = runtime_config(job, coordinator="127.0.0.1:0")
        if not command:
            command = [*job.spec.workers.command, *job.spec.workers.args]
        if not command:
            raise ConfigError(f"{args.manifest}: spec.workers.command is empty and no COMMAND follows --")
        program_env = dict(job.spec.workers.env)
    else:
        if not command:
            raise ConfigError("give a manifest, or the program to run after -- (see dynaps run --help)")
        if not args.table:
            raise ConfigError("declare at least one table with --table NAME:NUM_KEYS:DIM")
        try:
            config = RuntimeConfig(tables=args.table, coordinator="127.0.0.1:0")
        except ValidationError as exc:  # e.g. a table named twice: one line, not pydantic's report
            raise ConfigError(describe_validation_error(exc)) from None
    updates: dict[str, Any] = {}
    if args.servers is not None:
        updates["servers"] = args.servers
    if args.workers is not None:
        updates["workers"] = args.workers
    if args.allocation is not None:
        updates["allocation"] = Allocation(args.allocation)
    if updates:
        try:
            config = RuntimeConfig.model_validate({**config.model_dump(), **updates})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from exc
    return config, _local_command(command), program_env


def _local_command(command: list[str]) -> list[str]:
    """A leading ``python`` means this interpreter, so a local run uses this environment."""
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    if command and shutil.which(command[0]) is None and not os.path.exists(command[0]):
        raise ConfigError(f"cannot find the program {command[0]!r} on PATH")
    return command


def _run(args: argparse.Namespace, command: list[str]) -> int:
    from dynaps.local.run_job import run_job

    config, command, program_env = _job_from_args(args, command)
    return run_job(config, command, args.log_level, args.quiet, program_env)


def _role(args: argparse.Namespace, command: list[str]) -> int:
    from dynaps.config import load_config, process_settings, setup_logging

    settings = process_settings()
    setup_logging(settings.log_level)
    config = load_config()

    def serve() -> int:
        if args.verb == "coordinator":
            from dynaps.coordinator.process import serve_coordinator
            from dynaps.local.launch import ANNOUNCE_PREFIX

            def announce(address: str, http_port: int) -> None:
                if args.announce:
                    print(f"{ANNOUNCE_PREFIX}{address} {http_port}", flush=True)

            return serve_coordinator(config, announce)
        from dynaps.node.process import serve_node

        if args.verb == "server":
            if command:
                raise ConfigError("a server runs no program; remove the COMMAND after --")
            return serve_node("server", config, name=settings.node_name)
        return serve_node(
            "worker",
            config,
            command=command or None,
            attach_token=settings.attach_token,
            rank=settings.rank,
            name=settings.node_name,
        )

    if settings.launcher_pid is not None:
        follow_launcher(settings.launcher_pid)
    name = "coordinator" if args.verb == "coordinator" else settings.node_name or args.verb
    return profiling.profiled(name, serve)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
