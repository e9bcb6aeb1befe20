"""One error root for everything the agent raises on purpose.

Library errors are translated at the boundary (``raise ... from``) so callers only
ever catch ``AgentError`` subclasses, each carrying the data a person needs to act.
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """Root of every error Sortie raises deliberately."""


@dataclass(frozen=True)
class Violation:
    """One reason a document is refused: where (a path into the document) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ProfileError(AgentError):
    """A document (mission, hardware profile, config) is malformed or invalid.

    Carries every violation found, not only the first one.
    """

    def __init__(self, source: str, violations: list[Violation]) -> None:
        self.source = source
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{source}: {len(violations)} problem(s)\n{lines}")


class CgroupError(AgentError):
    """A cgroup operation failed; names the file, the value and the errno."""

    def __init__(self, path: str, message: str, value: str | None = None,
                 errno: int | None = None) -> None:
        self.path = path
        self.value = value
        self.errno = errno
        detail = f" (value {value!r})" if value is not None else ""
        code = f" [errno {errno}]" if errno is not None else ""
        super().__init__(f"{path}: {message}{detail}{code}")


class WorkloadError(AgentError):
    """A workload could not be started, stopped or adopted."""


class StoreError(AgentError):
    """The state store cannot be read or written (after every fallback)."""


class ApiError(AgentError):
    """The local API could not be reached or answered with an error."""
