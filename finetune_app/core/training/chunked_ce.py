"""Cross-entropy through the LM head a chunk of positions at a time (#16).

The [K, V] logits of K predicting positions are the largest tensor of a step at real
vocabularies (Qwen2-VL: 151,936 columns, 0.6 MB per position) and value_and_grad keeps them, and
their softmax, for the backward pass. Here each chunk's logits are computed, reduced to a summed
loss and dropped; the backward pass recomputes them chunk by chunk (`nn.utils.checkpoint` over the
head's own parameters, so a trained head still gets its gradients). Peak: one chunk's logits.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

CHUNK = 1024  # positions per chunk: 0.6 GB of float32 logits at a 151,936-token vocabulary

from finetune_app.core.estimates import LOGITS_BUDGET  # noqa: E402  (the memory estimate counts it too)


def vocab_size(owner) -> int:
    """Columns of the LM head's output (its weight's rows; quantized weights keep them)."""
    module, _ = head_module(owner)
    return int(module.weight.shape[0])


def head_module(owner) -> tuple[nn.Module, object]:
    """The module holding the LM head's weights and the function applying it (tied embeddings
    where the model has no lm_head), as `families.generic.head` applies it."""
    if "lm_head" in owner:
        return owner.lm_head, owner.lm_head
    emb = owner.model.embed_tokens
    return emb, emb.as_linear


def _ce_sum(project, hidden, targets, weights):
    # (checkpoint differentiates every input: the targets are indices, not a value to move)
    targets, weights = mx.stop_gradient(targets), mx.stop_gradient(weights)
    ce = nn.losses.cross_entropy(project(hidden), targets, reduction="none")  # model dtype, as sft.loss
    return (ce * weights).sum()


def chunked_ce_sum(owner, hidden: mx.array, targets: mx.array, weights: mx.array, chunk: int = CHUNK) -> mx.array:
    """Sum over positions of weight x cross-entropy(head(hidden), target), `chunk` positions at a
    time; equal to the plain computation (tests/test_chunked_ce.py)."""
    module, project = head_module(owner)
    K = hidden.shape[0]
    if K <= chunk:
        return _ce_sum(project, hidden, targets, weights)
    fn = nn.utils.checkpoint(module, lambda h, t, w: _ce_sum(project, h, t, w))
    total = mx.array(0.0)
    for s in range(0, K, chunk):
        total = total + fn(hidden[s:s + chunk], targets[s:s + chunk], weights[s:s + chunk])
    return total
