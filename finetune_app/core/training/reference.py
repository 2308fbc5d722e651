"""The reference model of DPO / IPO / GRPO: the base with the adapter switched off, no second copy.

`adapters_off(model)` puts each LoRA / DoRA layer's wrapped base layer back in its place for the
duration of a block (DoRA's learned magnitude makes "scale 0" no switch at all, so the layers are
swapped rather than scaled). `Reference` computes the reference log-probabilities of each pair
once, alone (a batch of that one pair), and caches them by example index: the value does not
depend on the batch a pair lands in or on the adapter's state, so a resumed run recomputes exactly
the same numbers. Runs whose non-adapter weights train (full fine-tune, projector) are refused in
the settings (config.REFERENCE_OBJECTIVES).
"""

from __future__ import annotations

import contextlib

import mlx.core as mx
import numpy as np

from finetune_app.core import adapters
from finetune_app.core.errors import ConfigError


def _slot(model, name: str):
    parent, parts = model, name.split(".")
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    key = int(parts[-1]) if isinstance(parent, list) else parts[-1]
    return parent, key


@contextlib.contextmanager
def adapters_off(model):
    """Inside the block the model computes as its base: every adapter layer is its base layer."""
    swapped = [(_slot(model, name), m) for name, m in model.named_modules() if adapters.is_adapter_layer(m)]
    if not swapped:
        raise ConfigError("This objective compares with the base model (the adapter switched off), "
                          "but the model has no adapter layers (a full fine-tune keeps no base copy).",
                          "Use LoRA or DoRA, or set the KL weight (beta) to 0.", field="fine_tune_type")
    for (parent, key), m in swapped:
        parent[key] = m.linear
    try:
        yield model
    finally:
        for (parent, key), m in swapped:
            parent[key] = m


class Reference:
    """Reference log-probabilities [chosen, rejected] per pair, computed once per example index."""

    def __init__(self, model, family, plan_pairs):
        self.model, self.family, self.plan_pairs = model, family, plan_pairs
        self.cache: dict[int, np.ndarray] = {}

    def logps(self, pairs) -> np.ndarray:
        """float32 [2P]: the chosen answers' reference log-probs, then the rejected ones'."""
        from finetune_app.core.training.objectives.logps import sequence_logps, with_extra

        out = np.zeros((2, len(pairs)), np.float32)
        for j, p in enumerate(pairs):
            if not p.has_targets:  # a rank's placeholder pair: weighs nothing
                continue
            if p.index not in self.cache:
                batch = self.plan_pairs([p], reference=None)
                with adapters_off(self.model):
                    lp, _ = sequence_logps(self.model, self.family, with_extra(self.family.inputs(batch), batch))
                    mx.eval(lp)
                self.cache[p.index] = np.asarray(lp, dtype=np.float32)
            out[:, j] = self.cache[p.index]
        return out.reshape(-1)
