"""Kubernetes control-plane simulator (a test double; see server.py)."""
