"""A node: the server loop, its gate, migration, recovery, replication, write-back, departures and process."""
