"""The coordinator: membership, rebalancing, leases, checkpoint rounds, HTTP status, process."""
