"""Health: the partitions' tables (pure), the monitor that decides, workloads' job reports."""
