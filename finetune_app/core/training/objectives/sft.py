"""Supervised fine-tuning: cross-entropy of the supervised tokens (the answers, by default).

Which tokens are supervised is the data side's decision (the Encoder's target mask: completion
only by default, every token with `completion_only=False`); the family turns it into the logits of
the positions that predict those tokens, on whichever path the run uses.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

NEEDS = ("target_mask",)  # tokenised examples with a target mask; no pairs, no rewards


def loss(model, family, batch) -> tuple[mx.array, mx.array, dict]:
    """Summed token cross-entropy, the number of tokens it covers, and no extra metrics."""
    logits, targets, weights = family.predictions(model, batch)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")
    return (ce * weights).sum(), weights.sum(), {}
