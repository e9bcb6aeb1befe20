"""Sortie: a lightweight orchestration agent for flight-computer-class edge boards."""

__version__ = "0.1.0"
