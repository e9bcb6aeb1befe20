"""What an audit says: one finding per check, and the report's text, JSON and exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Level = Literal["PASS", "WARN", "FAIL"]


@dataclass(frozen=True)
class Finding:
    id: str
    """Stable check id (``2.3``): scripts and waivers key on it."""
    title: str
    level: Level
    reason: str
    remedy: str = ""


@dataclass(frozen=True)
class Report:
    findings: list[Finding]

    def count(self, level: Level) -> int:
        return sum(f.level == level for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0 when nothing fails (warnings allowed), 1 otherwise."""
        return 1 if self.count("FAIL") else 0

    def to_json(self) -> dict[str, Any]:
        return {"summary": {lv: self.count(lv) for lv in ("PASS", "WARN", "FAIL")},
                "findings": [asdict(f) for f in self.findings]}

    def render(self) -> str:
        lines = []
        for f in self.findings:
            lines.append(f"[{f.level}] {f.id} {f.title}: {f.reason}")
            if f.level != "PASS" and f.remedy:
                lines.append(f"       remedy: {f.remedy}")
        lines.append(f"== {self.count('PASS')} passed, {self.count('WARN')} warned, "
                     f"{self.count('FAIL')} failed")
        return "\n".join(lines)


def order(findings: list[Finding]) -> list[Finding]:
    """By check id, numerically (2.10 after 2.9)."""
    return sorted(findings, key=lambda f: [int(x) if x.isdigit() else x
                                           for x in f.id.split(".")])
