"""Length-grouped batches with right padding only to the batch's longest row.

The order is a pure function of (seed, epoch), so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Batch:
    """Host-side batch: token ids padded on the right, target masks, image tensors, and where the
    image placeholders sit (FastVLM expands them inside the model)."""

    input_ids: np.ndarray  # int32 [B, L]
    attention_mask: np.ndarray  # int32 [B, L]
    target_mask: np.ndarray  # bool [B, L]: token t is supervised (predicted from position t-1)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    image_positions: list[list[int]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    @property
    def n_targets(self) -> int:
        return int(self.target_mask[:, 1:].sum())

    @property
    def n_examples(self) -> int:
        return len(self.indices)


def collate(examples: list, pad_id: int, image_token_index: int | None = None) -> Batch:
    longest = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = np.full((B, longest), pad_id, dtype=np.int32)
    attn = np.zeros((B, longest), dtype=np.int32)
    tmask = np.zeros((B, longest), dtype=bool)
    positions = []
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = e.input_ids
        attn[r, :n] = 1
        tmask[r, :n] = e.target_mask
        if image_token_index is not None and image_token_index < 0:
            positions.append(np.flatnonzero(e.input_ids == image_token_index).tolist())
        else:
            positions.append([])
    images = {}
    keys = sorted({k for e in examples for k in e.images})
    for k in keys:
        parts = [e.images[k] for e in examples if k in e.images]
        if not parts:
            continue
        # Qwen-style patch rows and grid_thw rows concatenate; FastVLM's [1,3,H,W] too.
        images[k] = np.concatenate(parts, axis=0) if parts[0].ndim >= 1 else np.stack(parts)
    return Batch(input_ids=ids, attention_mask=attn, target_mask=tmask, images=images,
                 image_positions=positions, indices=[e.index for e in examples])
