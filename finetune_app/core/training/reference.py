"""The reference model of preference and RL objectives: the base with the adapter switched off.

No second copy of the weights: `adapter_off(model)` puts each LoRA / DoRA layer's own base
layer (`.linear`, quantized or not) in its place for the duration of a `with`, then puts the
adapter layers back. Swapping the module (rather than setting the LoRA scale to 0) is exact for
DoRA too, whose learned magnitude would still rescale the base weight at scale 0.
"""

from __future__ import annotations

import contextlib

from finetune_app.core.adapters import is_adapter_layer
from finetune_app.core.errors import ConfigError


def _slot(model, path: str):
    """(container, key) holding the module at a dotted path (Modules are dicts, layers lists)."""
    parts = path.split(".")
    node = model
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    return node, (int(last) if isinstance(node, list) else last)


@contextlib.contextmanager
def adapter_off(model):
    """The base model, inside the `with`; the adapted model again after it (even on error)."""
    swapped = [(path, m) for path, m in model.named_modules() if is_adapter_layer(m)]
    if not swapped:
        raise ConfigError("This objective compares with the base model (the adapter switched off), "
                          "but the model has no adapter layers (a full fine-tune keeps no base copy).",
                          "Use LoRA or DoRA, or set the KL weight (beta) to 0.", field="fine_tune_type")
    slots = [(_slot(model, path), m) for path, m in swapped]
    try:
        for (node, key), m in slots:
            node[key] = m.linear
        yield model
    finally:
        for (node, key), m in slots:
            node[key] = m
