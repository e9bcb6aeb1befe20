"""Simulation and test doubles for Sortie: a kernel-like cgroup v2 tree (more to come)."""
