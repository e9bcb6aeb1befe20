"""Pydantic models of the board, the mission and the agent's configuration."""

from agent.models.config import AgentConfig
from agent.models.hardware import CoreSpec, HardwareProfile, QemuSpec, Reserve
from agent.models.loading import load_file, load_text
from agent.models.mission import (
    Budget,
    BudgetMode,
    CpuPlacement,
    Criticality,
    DeadlineBudget,
    HealthCheck,
    MissionProfile,
    Partition,
    RestartPolicy,
    RtBudget,
    Schedule,
    Timing,
    Window,
    Workload,
)

__all__ = [
    "AgentConfig",
    "Budget",
    "BudgetMode",
    "CoreSpec",
    "CpuPlacement",
    "Criticality",
    "DeadlineBudget",
    "HardwareProfile",
    "HealthCheck",
    "MissionProfile",
    "Partition",
    "QemuSpec",
    "Reserve",
    "RestartPolicy",
    "RtBudget",
    "Schedule",
    "Timing",
    "Window",
    "Workload",
    "load_file",
    "load_text",
]
