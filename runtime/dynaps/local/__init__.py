"""Running a job on one machine: LocalCluster and the process launcher."""
