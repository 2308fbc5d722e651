"""Gradient checkpointing per layer instance: recompute a block's activations in the backward pass.

mlx-vlm's helper patches `__call__` on the layer's class, which changes every model of that class
in the process (the base model used for comparison captions too) and cannot be undone. Here each
layer instance gets a subclass whose call is wrapped in `mx.checkpoint`; parameter paths (and so
adapter file keys) stay the same, and `disable` restores the original class."""

from __future__ import annotations

import mlx.core as mx

_SUBCLASSES: dict[type, type] = {}


def _checkpointed_call(self, *args, **kwargs):
    original = type(self).__mro__[1].__call__

    def inner(params, *a, **k):
        self.update(params)
        return original(self, *a, **k)

    return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)


def enable(layers) -> None:
    for layer in layers:
        cls = type(layer)
        if cls in _SUBCLASSES.values():
            continue
        sub = _SUBCLASSES.get(cls)
        if sub is None:
            sub = type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": _checkpointed_call})
            _SUBCLASSES[cls] = sub
        layer.__class__ = sub


def disable(layers) -> None:
    for layer in layers:
        if type(layer) in _SUBCLASSES.values():
            layer.__class__ = type(layer).__mro__[1]
