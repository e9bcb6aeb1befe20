"""Kubernetes: the MissionProfile custom resource (the source itself is issue 6)."""
