"""Supervised fine-tuning: cross-entropy of the supervised tokens (the answers, by default).

Which tokens are supervised is the data side's decision (the Encoder's target mask: completion
only by default, every token with `completion_only=False`); the family turns it into the logits of
the positions that predict those tokens, on whichever path the run uses. On the fast path with a
frozen head (LoRA), the head and the cross-entropy run fused, a chunk of positions at a time, the
[K, V] logits never whole (`chunked_ce.fused_ce_sum`: no recomputation; #16, the 3B's logits were
ours' largest tensors). A trained head: when the logits would be large (supervised positions x
vocabulary above `estimates.logits_budget()`, which scales with the device's memory), a chunk at a
time with the backward pass recomputing them (`chunked_ce.chunked_ce_sum`), same result.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from finetune_app.core import estimates
from finetune_app.core.training import chunked_ce

NEEDS = ("target_mask",)  # tokenised examples with a target mask; no pairs, no rewards


def loss(model, family, batch, logits_budget: int | None = None) -> tuple[mx.array, mx.array, dict]:
    """Summed token cross-entropy, the number of tokens it covers, and no extra metrics."""
    fast = family.hidden_predictions(model, batch)
    if fast is not None:
        owner, hidden, targets, weights = fast
        weight = chunked_ce.head_weight(owner)
        if weight is not None:
            return chunked_ce.fused_ce_sum(weight, hidden, targets, weights), weights.sum(), {}
        vocab = chunked_ce.vocab_size(owner)
        logits_budget = logits_budget or estimates.logits_budget()
        if hidden.shape[0] * vocab > logits_budget:  # (shapes are static: decided once per traced shape)
            chunk = max(1, logits_budget // vocab)
            return chunked_ce.chunked_ce_sum(owner, hidden, targets, weights, chunk=chunk), weights.sum(), {}
        logits = chunked_ce.head_module(owner)[1](hidden)
    else:
        logits, targets, weights = family.predictions(model, batch)
    # Cross-entropy on the logits in the model's dtype, summed in float32 (`weights`), as mlx-lm's
    # own loss does: a float32 copy of [K, V] logits and its softmax were the largest tensors of a
    # bf16 step at a 128k vocabulary (#16: MLX peak above the weights 4.4 GB vs 1.8 GB without the
    # copy, mlx_lm 2.5 GB; K = 1656, CPU). Float32 models keep float32 logits.
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")
    return (ce * weights).sum(), weights.sum(), {}
