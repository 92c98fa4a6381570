"""Where parameters live: table stores, shared memory, the shard map, updaters, checkpoint files."""

# np.unique imports numpy.ma on its first plain call (to ask whether its input is masked):
# 24 ms of CPU that otherwise lands in each node's first relocation, mid-training (16
# node processes of an 8-node job paid it in epoch 1: bench/README.md, 2026-12-06).  Every
# process that homes, holds or requests keys imports this package, so it pays at start.
import numpy.ma  # noqa: F401
