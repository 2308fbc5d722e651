"""Cross-entropy through the LM head a chunk of positions at a time (#16).

The [K, V] logits of K predicting positions are the largest tensor of a step at real
vocabularies (Qwen2-VL: 151,936 columns, 0.6 MB per position) and value_and_grad keeps them, and
their softmax, for the backward pass. Two ways around that:

- `fused_ce_sum` (a frozen, unquantized head: LoRA's usual case): one pass computes each chunk's
  logits, its per-position loss and the loss's gradient with respect to the hidden states
  ((softmax - onehot) @ W, [chunk, D]), and drops the logits; the backward pass only scales those
  gradients. No recomputation, and the [K, V] logits never exist: peak one chunk's (#16 textmem).
- `chunked_ce_sum` (a trained or quantized head): each chunk's logits reduced to a summed loss and
  dropped; the backward pass recomputes them chunk by chunk (`nn.utils.checkpoint` over the head's
  own parameters, so a trained head still gets its gradients).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

CHUNK = 1024  # positions per chunk: 0.6 GB of float32 logits at a 151,936-token vocabulary

from finetune_app.core.estimates import FUSED_VALUES, LOGITS_BUDGET  # noqa: E402,F401  (the estimate counts them too)


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


def head_weight(owner) -> mx.array | None:
    """The head's [V, D] weight when `fused_ce_sum` applies (a plain, frozen, unquantized matrix:
    nothing of the head is trained), else None."""
    module, _ = head_module(owner)
    if type(module) not in (nn.Linear, nn.Embedding) or "bias" in module or module.trainable_parameters():
        return None
    return module.weight


def fused_ce_sum(weight: mx.array, hidden: mx.array, targets: mx.array, weights: mx.array,
                 chunk: int | None = None) -> mx.array:
    """Sum over positions of weight x cross-entropy(hidden @ weight.T, target), `chunk` positions at a
    time (default: FUSED_VALUES logits), with the gradient for `hidden` only (the head is frozen).

    The forward pass returns, per position, [dloss/dhidden, loss] in one [K, D + 1] array, built chunk
    by chunk so each chunk's logits are freed before the next chunk's exist (their only consumers,
    the log-sum-exp and the softmax, are inside the chunk); the target's logit comes from its
    embedding row, not from the logits. The per-position loss is in the model's dtype and summed in
    float32, as the plain head's (`sft.loss`)."""
    V, D = weight.shape
    K = hidden.shape[0]
    if not chunk:  # (a whole number of 128-row tiles where there are several: 130 rows would be 2 GPU tiles)
        rows = max(1, FUSED_VALUES // V)
        chunk = rows // 128 * 128 if rows > 128 else rows
    targets = mx.stop_gradient(targets)

    @mx.custom_function
    def per_position(h):
        parts = []
        for s in range(0, K, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            if parts:  # this chunk starts after the previous one's logits are gone (else MLX may run them side by side)
                hc, tc = mx.depends([hc, tc], parts[-1])
            logits = hc @ weight.T  # in the model's dtype, as the plain head's cross-entropy (and mlx-lm's)
            lse = mx.logsumexp(logits, axis=-1, keepdims=True)
            p = mx.exp(logits - lse) - (mx.arange(V)[None] == tc[:, None])  # (one fused kernel, compiled)
            dh = p.astype(h.dtype) @ weight
            target_logit = (hc[:, None, :] @ weight[tc][:, :, None]).reshape(-1, 1)
            parts.append(mx.concatenate([dh, (lse - target_logit).astype(h.dtype)], axis=1))
        return mx.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

    @per_position.vjp
    def per_position_vjp(primals, cotangent, output):
        return (cotangent[:, -1:] * output[:, :-1]).astype(primals[0].dtype)

    ce = per_position(hidden)[:, -1]
    return (ce * mx.stop_gradient(weights)).sum()


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
