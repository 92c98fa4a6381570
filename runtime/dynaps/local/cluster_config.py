"""A LocalCluster's arguments turned into its job's RuntimeConfig, every mistake a
ConfigError that names the argument (never pydantic's error, an enum's ValueError or a
count that pydantic's lax mode quietly reads: True as 1, "2" or 2.0 as 2)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from dynaps.contract import (
    Allocation,
    CheckpointSpec,
    Consistency,
    ConsistencyModel,
    FaultTolerance,
    NamedTable,
    Partition,
    RebalancePolicy,
    RuntimeConfig,
    TableSpec,
    describe_validation_error,
)
from dynaps.contract.base import is_whole_number
from dynaps.errors import ConfigError


def check_counts(counts: Mapping[str, object]) -> None:
    """Raise a ConfigError naming the first of ``counts`` (argument name -> value) that is
    not a whole number (a bool is not one, numpy's integers are)."""
    for name, count in counts.items():
        if not is_whole_number(count):
            raise ConfigError(f"LocalCluster: {name} takes a whole number, got {count!r}")


def named_tables(tables: Mapping[str, object]) -> list[NamedTable]:
    """The tables as given (TableSpecs, or their fields as mappings), a name in any error."""
    named = []
    for name, spec in tables.items():
        try:
            named.append(NamedTable(name=name, **TableSpec.model_validate(spec).model_dump()))
        except ValidationError as exc:
            raise ConfigError(f"LocalCluster: table {name!r}: {describe_validation_error(exc)}") from None
    return named


def cluster_config(
    tables: list[NamedTable],
    checkpoints: str,
    *,
    servers: int,
    workers: int,
    allocation: Allocation | str,
    consistency: ConsistencyModel | str,
    staleness: int,
    replication: int,
    flush_interval_ms: int,
    heartbeat_interval_ms: int,
    checkpoint_interval: int,
    restore_from: str | None,
    num_shards: int,
    partition: Partition | str,
    request_timeout: float,
) -> RuntimeConfig:
    """The job's config from LocalCluster's arguments of the same names (``checkpoints``: its
    checkpoint folder)."""
    check_counts(
        {
            "servers": servers,
            "workers": workers,
            "staleness": staleness,
            "replication": replication,
            "flush_interval_ms": flush_interval_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "checkpoint_interval": checkpoint_interval,
            "num_shards": num_shards,
        }
    )
    try:
        return RuntimeConfig(
            job="local",
            tables=tables,
            servers=servers,
            workers=workers,
            allocation=Allocation(allocation),
            consistency=Consistency(model=ConsistencyModel(consistency), staleness=staleness),
            fault_tolerance=FaultTolerance(
                replication=replication,
                flush_interval_ms=flush_interval_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                checkpoint=CheckpointSpec(
                    path=checkpoints, interval_seconds=checkpoint_interval, restore_from=restore_from
                ),
            ),
            rebalance_policy=RebalancePolicy(num_shards=num_shards, partition=Partition(partition)),
            coordinator="127.0.0.1:0",
            request_timeout_seconds=request_timeout,
        )
    except ValueError as exc:  # pydantic's ValidationError, or an enum given a name it lacks
        detail = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(f"LocalCluster: {detail}") from None
