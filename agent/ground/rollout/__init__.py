"""Fleet rollouts in health-gated waves (ground side: issue 17)."""
