"""What the processes of a job tell a monitoring system: Prometheus metrics on a small HTTP server.

:mod:`~dynaps.telemetry.bounded_http` is the bounded server the coordinator's endpoint and
every ``/metrics`` listener run on; :mod:`~dynaps.telemetry.exposition` declares metric
families once (what they are called, what they count) and serves a registry.
"""
