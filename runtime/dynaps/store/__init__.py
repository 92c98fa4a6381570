"""Where parameters live: table stores, shared memory, the shard map, updaters, checkpoint files."""
