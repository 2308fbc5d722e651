"""Length-grouped batches (the Batch itself is planned by the model's family: training/batch.py).

The order is a pure function of (seed, epoch), so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np

GROUP_WINDOW = 16  # batches per sorting window: long enough to group lengths, short enough to stay random


def epoch_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Positions (into `lengths`) of each batch of one epoch."""
    n = len(lengths)
    if n == 0:
        return []
    if not shuffle:
        order = list(range(n))
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n).tolist()
    window = batch_size * GROUP_WINDOW
    batches = []
    for w in range(0, n, window):
        chunk = sorted(order[w:w + window], key=lambda i: (lengths[i], i))
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    perm = rng.permutation(len(batches)).tolist()
    return [batches[i] for i in perm]
