"""The engine: the one writer of cgroups and processes, its state and what it observes."""
