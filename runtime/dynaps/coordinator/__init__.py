"""The coordinator: one per job, the control plane's centre.

- ``process``: the OS process (sockets, the HTTP endpoint, signals, the serving loop);
- ``core``: :class:`~dynaps.coordinator.core.Coordinator`, the job's control logic:
  rendezvous, membership, joining, leaving, failures, the job's end;
- its parts, each owning its own state and told what it needs (the roster, a send
  function, the clock, callbacks), never the Coordinator itself:
  ``checkpoint_rounds`` (the coordinator's side of checkpoints), ``http`` (the /status
  document and the HTTP server), ``shard_homes`` (the shard map, migrations and
  recoveries), ``rebalance`` (planning migrations), ``outbox`` (connections, messages,
  membership versions), ``adoption`` (after a coordinator restart), ``liveness``
  (failure detection), ``barriers`` (barriers and the minimum clock), ``leases`` (data
  shards), ``reports`` (the programs' metrics), ``roster`` (who is in the job).

The nodes' side of the same protocols is :mod:`dynaps.node`.
"""
