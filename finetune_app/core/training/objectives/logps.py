"""Per-row sequence log-probabilities, the quantity preference and reward objectives compare.

Built on `family.predictions` (logits of the supervised positions, whichever path the run uses)
and the batch's `rows` (which row each prediction belongs to, from `Batch.prediction_rows`), so
it runs inside the compiled step. `extra(inputs, name)` reads what the objective's NEEDS put in
the batch (reference log-probs, pair weights, ...) on either path.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def extra(inputs, name: str) -> mx.array:
    """An array the batch carries for the objective (`Batch.extra`), on the fast or library path."""
    if isinstance(inputs, dict):
        return inputs["extra"][name]
    return mx.array(inputs.extra[name])


def with_extra(family_inputs, batch):
    """The step's inputs: the family's, plus the batch's `extra` arrays (a compiled step sees arrays only)."""
    if isinstance(family_inputs, dict) and batch.extra:
        return {**family_inputs, "extra": {k: mx.array(v) for k, v in batch.extra.items()}}
    return family_inputs


def token_logps(model, family, inputs) -> tuple[mx.array, mx.array]:
    """Log-probability of each supervised token ([K], 0 at padding entries) and its weight ([K])."""
    logits, targets, weights = family.predictions(model, inputs)
    logp = -nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")
    return logp * weights, weights


def sequence_logps(model, family, inputs) -> tuple[mx.array, mx.array]:
    """Summed log-probability of each row's supervised tokens ([R]) and their number ([R])."""
    logp, weights = token_logps(model, family, inputs)
    rows, row_ids = extra(inputs, "rows"), extra(inputs, "row_ids")
    onehot = (rows[:, None] == row_ids[None, :]).astype(mx.float32)  # [K, R]: a differentiable segment sum
    return logp @ onehot, weights @ onehot
