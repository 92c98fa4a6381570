"""A node: the server loop, its gate, migration, recovery, replication, departures and process."""
