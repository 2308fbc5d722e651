"""A batch of preference pairs: the family plans the chosen answers' rows, then the rejected ones'.

One `Batch` of 2P rows (chosen 0..P-1, rejected P..2P-1), so both answers of every pair go
through one forward pass on whichever path the family uses (fast, compiled, library). Its
`extra` carries what the preference objectives need: which row each prediction belongs to, the
pairs' weights (0 for a data-parallel rank's placeholder) and, for DPO / IPO, the reference
log-probabilities (reference.py). The objective counts pairs (`units`).
"""

from __future__ import annotations

import numpy as np

from finetune_app.core.training.batch import Batch


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
