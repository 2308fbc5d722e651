"""Features of a frozen vision tower, computed once per image and reused across epochs.

When the tower is frozen (no vision LoRA, no full vision training), its output for an image never
changes during a run, so recomputing it every epoch is wasted work: FastVLM's tower is most of a
step's cost at 1024 px. Features are keyed by the preprocessed pixels' content (a hash), so
duplicates share one entry, and a different preprocessing gives a different key. The loss is
identical to the uncached path because the same function produces the same features.
"""

from __future__ import annotations

import hashlib

import mlx.core as mx
import numpy as np


def content_key(pixels: np.ndarray) -> str:
    h = hashlib.sha1(np.ascontiguousarray(pixels).view(np.uint8))
    h.update(str((pixels.shape, pixels.dtype)).encode())
    return h.hexdigest()


class VisionFeatureCache:
    """In-memory cache of tower features per image (FastVLM: [H*W, C] per image)."""

    def __init__(self, compute, *, batch_size: int = 8):
        self.compute = compute  # pixel_values [N, 3, H, W] (mx) -> features [N, F, C] (mx)
        self.batch_size = batch_size
        self.features: dict[str, mx.array] = {}
        self.hits = self.misses = 0

    def add_examples(self, examples, progress=None) -> None:
        """Compute features for every image of these examples that is not cached yet, then drop
        the examples' pixels (the features replace them)."""
        pending: dict[str, np.ndarray] = {}
        for ex in examples:
            pv = ex.images.get("pixel_values")
            if pv is None:
                continue
            keys = []
            for img in pv.reshape((-1,) + pv.shape[-3:]):
                key = content_key(img)
                keys.append(key)
                if key not in self.features and key not in pending:
                    pending[key] = img
            ex.images = {k: v for k, v in ex.images.items() if k != "pixel_values"}
            ex.feature_keys = keys
        keys = list(pending)
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start:start + self.batch_size]
            feats = self.compute(mx.array(np.stack([pending[k] for k in chunk])))
            mx.eval(feats)
            for k, f in zip(chunk, feats):
                self.features[k] = f
            if progress:
                progress(min(start + self.batch_size, len(keys)), len(keys))

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.features.values())
