"""Features of a frozen vision tower, computed once per image and reused across epochs.

When the tower is frozen (no vision LoRA, no full vision training), its output for an image never
changes during a run, so recomputing it every epoch is wasted work: FastVLM's tower is most of a
step's cost at 1024 px. Features are keyed by the preprocessed pixels' content (a hash), so
duplicates share one entry, and a different preprocessing gives a different key.

The cache fills while training runs (#16): preparing the data only names each image's key; the
first batch that needs an image computes its features just before its step (`fill`), and later
epochs read them. So the first step does not wait for a pass over every image. Each image goes
through the tower on its own, so its features are a function of its pixels alone (not of which
images shared its batch): a resumed run, which starts with an empty cache, gets the same features
and the same losses as the uninterrupted one.
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

    def __init__(self, compute):
        self.compute = compute  # pixel_values [1, 3, H, W] (mx) -> features [1, F, C] (mx)
        self.features: dict[str, mx.array] = {}

    def register(self, ex) -> None:
        """Name the example's images by content (`ex.feature_keys`); the pixels stay until `fill`."""
        pv = ex.images.get("pixel_values")
        ex.feature_keys = [] if pv is None else [content_key(img) for img in pv.reshape((-1,) + pv.shape[-3:])]

    def ready(self, ex) -> bool:
        """Every image of the example has its features (its pixels are no longer needed)."""
        return all(k in self.features for k in ex.feature_keys)

    def fill(self, examples) -> int:
        """Compute the features these examples' images do not have yet (one evaluation), then drop
        their pixels (the features replace them). Returns how many images were computed."""
        pending: dict[str, mx.array] = {}
        for ex in examples:
            pv = ex.images.get("pixel_values")
            if pv is None:
                continue
            for key, img in zip(ex.feature_keys, pv.reshape((-1,) + pv.shape[-3:])):
                if key not in self.features and key not in pending:
                    pending[key] = self.compute(mx.array(img[None]))[0]
            ex.images = {k: v for k, v in ex.images.items() if k != "pixel_values"}
        if pending:
            mx.eval(list(pending.values()))
            self.features.update(pending)
        return len(pending)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.features.values())
