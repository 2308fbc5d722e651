"""Optimizers by name: every optimizer mlx offers, with the run's weight decay where it applies."""

from __future__ import annotations

import mlx.optimizers as optim

from finetune_app.core.errors import ConfigError


def make_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0):
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
