"""The coordinator: one per job, the control plane's centre.

- ``process``: the OS process (sockets, the HTTP endpoint, signals, the serving loop);
- ``core``: :class:`~dynaps.coordinator.core.Coordinator`, the job's control logic:
  its messages, its phases (start-up, adoption after a restart, running, stopping), the
  periodic duties and /status;
- its parts, each owning its own state and told what it needs (the roster, a send
  function, the clock, callbacks), never the Coordinator itself:
  ``joining`` and ``departures`` (members that join, leave or are lost), ``progress``
  (barriers, the minimum clock and stages, as the programs are answered), ``job_end``
  (the job's exit code and SHUTDOWN), ``checkpoint_rounds`` (the coordinator's side of
  checkpoints), ``http`` (the /status document and the HTTP server), ``shard_homes`` (the
  shard map, migrations and recoveries), ``rebalance`` (planning migrations), ``outbox``
  (connections, messages, membership versions), ``adoption`` (after a coordinator
  restart), ``liveness`` (failure detection), ``barriers`` (barriers and the minimum
  clock), ``stages`` (the job's stages), ``leases`` (data shards), ``reports`` (the
  programs' metrics), ``roster`` (who is in the job).

The nodes' side of the same protocols is :mod:`dynaps.node`.
"""
