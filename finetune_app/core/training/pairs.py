"""A batch of preference pairs: the family plans the chosen answers' rows, then the rejected ones'.

One `Batch` of 2P rows (chosen 0..P-1, rejected P..2P-1), so both answers of every pair go
through one forward pass on whichever path the family uses (fast, compiled, library). Its
`extra` carries what the preference objectives need: which row each prediction belongs to, the
pairs' weights (0 for a data-parallel rank's placeholder) and, for DPO / IPO, the reference
log-probabilities (reference.py). The objective counts pairs (`units`).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from finetune_app.core.training.batch import Batch


class HeldOut:
    """An evaluation's preference metrics (held-out reward accuracy, margin, log-probabilities),
    summed over its pairs; `summed(world)` adds every rank's (the same names on every rank, so a
    rank without a batch joins the sum with zeros)."""

    def __init__(self, names):
        self.sums = {n: mx.array(0.0) for n in names}

    def add(self, metrics: dict) -> list:
        self.sums = {n: v + metrics[n] for n, v in self.sums.items()}
        return list(self.sums.values())

    def summed(self, world) -> dict:
        self.sums = {n: world.sum(v) for n, v in self.sums.items()}
        return self.sums


def plan(family, pairs: list, reference=None) -> Batch:
    batch = family.plan([p.chosen for p in pairs] + [p.rejected for p in pairs])
    weights = np.array([1.0 if p.has_targets else 0.0 for p in pairs], np.float32)
    batch.units = int(weights.sum())
    batch.indices = [p.index for p in pairs]
    batch.extra["rows"] = batch.prediction_rows()
    batch.extra["row_ids"] = np.arange(2 * len(pairs), dtype=np.int32)
    batch.extra["pair_weights"] = weights
    if reference is not None:
        batch.extra["ref_logps"] = reference.logps(pairs)
    return batch
