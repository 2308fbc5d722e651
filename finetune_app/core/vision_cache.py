"""Features of a frozen vision tower, computed once per image and reused across epochs.

When the tower is frozen (no vision LoRA, no full vision training), its output for an image never
changes during a run, so recomputing it every epoch is wasted work: FastVLM's tower is most of a
step's cost at 1024 px. Features are keyed by the preprocessed pixels' content (a hash), so
duplicates share one entry, and a different preprocessing gives a different key.

The cache fills while training runs (#16): preparing the data only names each image's key; the
first batch that needs an image computes its features just before its step (`fill`), and later
epochs read them. So the first step does not wait for a pass over every image.

Grouped tower calls (#16): the tower runs on a group of pictures in one call, not one picture per
call. An image's features then depend on its group companions (kernels may tile a batch
differently), so a group is a pure function of the run's data and seed: the images first met in
one epoch-0 batch (this rank's share of it), which the first epoch computes together anyway, or in
one validation batch (`plan`). Whenever an image's features are missing (a resumed run starts
with an empty cache) its whole group is computed again, with the same companions in the same
order, so the features, and the losses, equal the uninterrupted run's. Images outside every group
(a model evaluated on its own) are grouped by the call that meets them.
"""

from __future__ import annotations

import hashlib
import os

import mlx.core as mx
import numpy as np

from finetune_app.core.errors import FinetuneError

PIXELS = ("pixel_values", "image_grid_thw")  # what the features replace


HASH_CHUNK = 1 << 20  # bytes hashed per thread: a 448-px Qwen-VL picture is ~5 MB of float32 rows
_hash_pool = None


def content_key(pixels: np.ndarray) -> str:
    """The pixels' content hash: SHA-1 over the SHA-1s of their 1 MiB chunks, hashed on a few
    threads (hashlib releases the GIL), since preparing 1,000 pictures otherwise hashes ~5 GB
    on the training thread (#16 vlmpipe: ~8 ms a picture)."""
    global _hash_pool
    buf = np.ascontiguousarray(pixels).reshape(-1).view(np.uint8)
    h = hashlib.sha1(str((pixels.shape, pixels.dtype)).encode())
    chunks = [buf[s:s + HASH_CHUNK] for s in range(0, buf.nbytes, HASH_CHUNK)]
    if len(chunks) < 3:
        digests = [hashlib.sha1(c).digest() for c in chunks]
    else:
        if _hash_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _hash_pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="content-key")
        digests = list(_hash_pool.map(lambda c: hashlib.sha1(c).digest(), chunks))
    for d in digests:
        h.update(d)
    return h.hexdigest()


def run_groups(first_epoch: list[list[int]], train: list, valid: list, batch_size: int, world) -> list[list]:
    """The examples whose images share tower calls: each epoch-0 batch's share of every rank (so
    each rank computes only its own in the first epoch), then each validation batch."""
    groups = [[train[i] for i in pos[r::world.size]] for pos in first_epoch for r in range(world.size)]
    return groups + [valid[s:s + batch_size] for s in range(0, len(valid), batch_size)]


class VisionFeatureCache:
    """In-memory cache of tower features per image, filled by groups of images per tower call."""

    def __init__(self, images, compute, runs=None):
        self.images = images  # (example, keys=None) -> [(key, image)] of its images, its pixels still held
        self.compute = compute  # [image, ...] -> [(features, extra or None), ...]: one tower call
        self.runs = runs or (lambda images: [list(range(len(images)))])  # the calls a group takes
        self.features: dict[str, mx.array] = {}
        self.extra: dict[str, mx.array] = {}  # (Qwen3-VL's deepstack features)
        self.group_of: dict[str, int] = {}  # key -> its group
        self.groups: list[tuple[list[str], list]] = []  # group -> (its keys in order, examples holding them)
        self.reread = lambda ex: ex  # an example kept without pixels -> one with them (the trainer's)
        self.calls: list[int] = []  # images per tower call (tests and benchmarks count them)

    @staticmethod
    def keys(ex) -> list[str]:
        return [k for part in ex.parts for k in part.feature_keys]

    def plan(self, groups: list[list], reread=None) -> None:
        """Fix each image's group (`run_groups`) before training: an image belongs to the first
        group that holds it."""
        self.reread = reread or self.reread
        for examples in groups:
            keys = list(dict.fromkeys(k for ex in examples for k in self.keys(ex) if k not in self.group_of))
            if keys:
                self.group_of.update((k, len(self.groups)) for k in keys)
                self.groups.append((keys, examples))

    def ready(self, ex) -> bool:
        """Every image of the example has its features (its pixels are no longer needed)."""
        return all(k in self.features for k in ex.feature_keys)

    def fill(self, examples) -> int:
        """Compute the features these examples' images do not have yet, each with its whole group,
        in one evaluation; then drop their pixels (the features replace them). Returns how many
        images were computed."""
        missing = [k for ex in examples for k in ex.feature_keys if k not in self.features]
        # (keyed by the names preparation gave them: hashing megabytes of pixels again per batch
        # is work on the step's path; re-read examples below are hashed, their files may have changed)
        pixels = {k: img for ex in examples for k, img in self.images(ex, ex.feature_keys)} if missing else {}
        todo = [self.groups[g] for g in dict.fromkeys(self.group_of[k] for k in missing if k in self.group_of)]
        loose = list(dict.fromkeys(k for k in missing if k not in self.group_of))  # outside every group
        todo += [(loose, examples)] if loose else []
        new, count = [], 0
        for keys, holders in todo:
            if any(k not in pixels for k in keys):  # companions outside this call (a resumed run)
                pixels.update(self._pixels_of(holders))
                keys = [k for k in keys if k in pixels]  # (less a companion no longer readable)
            count += len(keys)
            for k, (feats, extra) in zip(keys, self._tower(keys, pixels)):
                self.features[k] = feats
                new.append(feats)
                if extra is not None:
                    self.extra[k] = extra
                    new.append(extra)
        if new:  # started, not waited for (#16 vlmpipe): the device runs the tower while this thread
            mx.async_eval(new)  # builds the step that reads it, with no host sync between the two
        for ex in examples:
            ex.images = {k: v for k, v in ex.images.items() if k not in PIXELS}
        return count

    def _tower(self, keys, pixels):
        """The group's features, in its key order: one tower call per run of `runs` (FastVLM: one
        per image shape, in first-met order; Qwen-VL's tower takes every size in one call)."""
        out = {}
        for run in self.runs([pixels[k] for k in keys]):
            out.update(zip((keys[i] for i in run), self.compute([pixels[keys[i]] for i in run])))
            self.calls.append(len(run))
        return [out[k] for k in keys]

    def _pixels_of(self, examples) -> dict:
        """The images of these examples, read again where they were kept without pixels."""
        out = {}
        for ex in examples:
            lazy = ex.lazy_images and not any(part.images.get("pixel_values") is not None for part in ex.parts)
            try:
                parts = (self.reread(ex) if lazy else ex).parts
            except (FinetuneError, OSError, ValueError):  # its own batch reports it, if it meets it again
                continue
            for part in parts:  # (keyed as named when read: a picture read later keeps its planned key)
                out.update(self.images(part, part.feature_keys or None))
        return out

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.features.values()) + sum(f.nbytes for f in self.extra.values())


def same_shape_runs(images) -> list[list[int]]:
    """Positions of the images by shape, shapes in first-met order (a tower taking [N, 3, H, W])."""
    runs: dict = {}
    for i, img in enumerate(images):
        runs.setdefault(img.shape, []).append(i)
    return list(runs.values())
