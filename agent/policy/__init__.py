"""Pure policy: admission, the degraded fit, planning, accounting. No I/O."""
