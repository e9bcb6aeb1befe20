"""What every command shares: exit codes, output, the config and the board, built one
way for ``run``, ``check`` and ``plan``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.cli.base import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Parser, emit, print_violations
from agent.models import AgentConfig, HardwareProfile, load_file

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "Parser", "emit", "print_violations"]

DEFAULT_CONFIG = Path("/etc/sortie/agent.yaml")
REPO = Path(__file__).resolve().parent.parent.parent
DEMO_PROFILE = REPO / "schedules" / "demo.yaml"


# -- configuration ----------------------------------------------------------------
def load_config(path: Path | None) -> AgentConfig:
    if path is None:
        return load_file(AgentConfig, DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() \
            else AgentConfig()
    return load_file(AgentConfig, path)


def images_of(config: AgentConfig) -> Any:
    from agent.images.store import store_for  # tarfile and friends only when needed
    return store_for(config.state_dir)


def load_board(hw: Path | None, config: AgentConfig) -> HardwareProfile:
    path = hw or config.hardware_profile
    if path is not None:
        return load_file(HardwareProfile, path)
    from agent.hwdetect import detect
    return detect()


def profile_paths(args_profiles: list[Path] | None, config: AgentConfig) -> list[Path]:
    if args_profiles:
        return args_profiles
    existing = [p for p in config.profile_dirs if p.exists()]
    # A board without baked-in profiles flies the embedded demo mission.
    return existing or [DEMO_PROFILE]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:5.1f}%"
