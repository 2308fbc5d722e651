"""Optimizers by name: every optimizer mlx offers, with the run's weight decay where it applies.

`learning_rate` is a number or a schedule (schedule.lr_schedule): with a schedule the optimizer
sets its rate from its own step counter before each update, and that counter is part of the
optimizer state a checkpoint saves, so a resumed run continues the schedule exactly."""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.optimizers as optim

from finetune_app.core.errors import ConfigError


def make_optimizer(name: str, learning_rate: float | Callable[[mx.array], mx.array], weight_decay: float = 0.0):
    lr = learning_rate
    factories = {
        "adamw": lambda: optim.AdamW(learning_rate=lr, weight_decay=weight_decay),
        "adam": lambda: optim.Adam(learning_rate=lr),
        "sgd": lambda: optim.SGD(learning_rate=lr, momentum=0.9, weight_decay=weight_decay),
        "adafactor": lambda: optim.Adafactor(learning_rate=lr, relative_step=False, scale_parameter=False),
        "lion": lambda: optim.Lion(learning_rate=lr, weight_decay=weight_decay),
        "adagrad": lambda: optim.Adagrad(learning_rate=lr),
        "rmsprop": lambda: optim.RMSprop(learning_rate=lr),
        "adadelta": lambda: optim.AdaDelta(learning_rate=lr),
        "adamax": lambda: optim.Adamax(learning_rate=lr),
    }
    try:
        return factories[name]()
    except KeyError:
        raise ConfigError(f"Unknown optimizer '{name}'.", f"Choose one of: {', '.join(factories)}.", field="optimizer") from None
