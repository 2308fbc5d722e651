"""Paired bootstrap confidence intervals: resample the rows with replacement, recompute each metric
on both sides with the same resample, and read the percentiles of each side and of the difference
(the method of sacreBLEU's paired bootstrap; Koehn 2004)."""

from __future__ import annotations

from typing import Callable

import numpy as np

Statistic = Callable[[np.ndarray], float]  # row indices -> the metric over those rows


def paired_bootstrap(before: dict[str, Statistic], after: dict[str, Statistic], n_rows: int, *,
                     resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, dict]:
    """{metric: {"before": [lo, hi], "after": [lo, hi], "delta": [lo, hi]}} for metrics on both sides."""
    if n_rows < 2 or resamples < 1:
        return {}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_rows, size=(resamples, n_rows))
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out = {}
    for name in before.keys() & after.keys():
        b = np.array([before[name](idx) for idx in draws], dtype=np.float64)
        a = np.array([after[name](idx) for idx in draws], dtype=np.float64)
        out[name] = {side: [float(v) for v in np.nanpercentile(vals, [lo, hi])]
                     for side, vals in (("before", b), ("after", a), ("delta", a - b))}
    return out
