"""Learning-rate schedules, computed on the client: the server applies whatever rate each
`optim_step` carries."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def learning_rate_at(
    base: float, step: int, total_steps: int, schedule: str = "linear", warmup_steps: int = 0
) -> float:
    """The rate of step `step` (0-based) of `total_steps`: a linear warm-up over `warmup_steps`, then
    `constant`, `linear` (to 0 at the end) or `cosine` (to 0 at the end)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    if schedule == "linear":
        return base * (1.0 - progress)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base
