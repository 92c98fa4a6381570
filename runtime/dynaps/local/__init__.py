"""Running a job on one machine: LocalCluster, its runners, the process launcher."""
