"""Learning-rate schedules built from `mlx.optimizers`' own (linear warmup joined to cosine or
linear decay), as functions of the optimizer step, so a resumed run continues exactly.

Step k (0-based) of a run with W warmup steps and D = max(total - W, 1) decay steps gets
    k < W:  peak * (k + 1) / W                       (the first step already learns)
    k >= W: cosine_decay(peak, D, floor)(k - W)  or  linear_schedule(peak, floor, D)(k - W)
with floor = peak * min_ratio. The warmup is `linear_schedule(peak / W, peak, W - 1)`, which gives
exactly peak * (k + 1) / W. The schedules compute in float32 (MLX), which is also what the
optimizer stores the rate in.

Pass `lr_schedule(...)` as an optimizer's learning_rate (optim.make_optimizer): the optimizer then
evaluates it at its own step counter, which the checkpoint saves with the optimizer state, so a
resumed run gets the same rates. `learning_rate_at` evaluates it at one step.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import mlx.core as mx
import mlx.optimizers as optim

from finetune_app.core.config import SCHEDULES


@lru_cache(maxsize=8)
def lr_schedule(peak: float, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0,
                min_ratio: float = 0.0) -> Callable[[mx.array], mx.array]:
    """The run's learning rate as a function of the optimizer step (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule}")
    decay_steps = max(total_steps - warmup_steps, 1)
    floor = peak * min_ratio
    if schedule == "cosine":
        decay = optim.cosine_decay(peak, decay_steps, end=floor)
    elif schedule == "linear":
        decay = optim.linear_schedule(peak, floor, decay_steps)
    else:
        decay = optim.linear_schedule(peak, peak, 1)  # constant
    if warmup_steps <= 0:
        return decay
    warmup = optim.linear_schedule(peak / warmup_steps, peak, max(warmup_steps - 1, 1))
    return optim.join_schedules([warmup, decay], [warmup_steps])


def learning_rate_at(step: int, *, peak: float, total_steps: int, schedule: str = "cosine",
                     warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    fn = lr_schedule(float(peak), int(total_steps), schedule, int(warmup_steps), float(min_ratio))
    return fn(mx.array(step)).item()
