"""Learning-rate schedules as plain functions of the step, so a resumed run continues exactly."""

from __future__ import annotations

import math


def learning_rate_at(step: int, *, peak: float, total_steps: int, schedule: str = "cosine",
                     warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the schedule."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    floor = peak * min_ratio
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return floor + (peak - floor) * (1 - progress)
    raise ValueError(f"unknown schedule {schedule}")
