"""``dynaps-operator``: run the operator, or print its CRD."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from dynaps_operator import __version__, settings
from dynaps_operator.errors import OperatorError

DESCRIPTION = """\
The dynaps operator: runs ParameterServerJob resources (dynaps.io/v1alpha1, short name psjob).

For each job it creates a coordinator pod, server and worker pods with stable names
(<job>-coordinator, <job>-server-0, <job>-worker-0, ...), a headless Service and the runtime
configuration (a ConfigMap), keeps them as the spec says (recreating lost pods under the same
name, scaling through the coordinator), and reports phase, conditions and shard ownership in
the job's status. It serves /healthz and /metrics on the probe port.
"""

EPILOG = f"""\
configuration (environment; command-line options win):
{settings.describe()}

examples:
  dynaps-operator                                  # all namespaces (needs a ClusterRole)
  dynaps-operator --namespace team-a --namespace team-b
  dynaps-operator crd | kubectl apply -f -         # install or update the CRD
  kubectl apply -f examples/quickstart.yaml && kubectl get psjob -w
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynaps-operator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dynaps-operator {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "crd"],
        help="run the operator (default), or print the CustomResourceDefinition as YAML",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable; default: DYNAPS_OPERATOR_NAMESPACES, else all)",
    )
    parser.add_argument("--log-level", help="log level (default: DYNAPS_OPERATOR_LOG_LEVEL, else INFO)")
    parser.add_argument("--probe-port", type=int, help="port of /healthz and /metrics (default 8080)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "crd":
        from dynaps_operator.crdgen import crd_yaml

        sys.stdout.write(crd_yaml())
        return 0
    try:
        config = settings.OperatorSettings.from_env(
            namespaces=tuple(args.namespaces) if args.namespaces else None,
            log_level=args.log_level,
            probe_port=args.probe_port,
        )
    except OperatorError as exc:
        print(f"dynaps-operator: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiohttp's access log and kopf's per-event debug lines drown everything else below WARNING.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from dynaps_operator.runner import operate

    try:
        asyncio.run(operate(config))
    except OperatorError as exc:
        print(f"dynaps-operator: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
