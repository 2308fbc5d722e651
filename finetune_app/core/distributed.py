"""Data-parallel training over MLX's own distributed backend (ring, MPI, NCCL via `mlx.launch`).

Every process builds the same global batches (same data, same seed); each takes its shard, the
gradients are summed with `mx.distributed.all_sum`, and every process applies the same update.
Losses are normalised by the global number of supervised tokens, so the summed gradient equals
the single-process gradient of the same global batch. Only rank 0 writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx.utils import tree_map


@dataclass(frozen=True)
class World:
    group: object
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, positions: list) -> list:
        """This rank's part of a global batch (round robin keeps shards within one example)."""
        return positions[self.rank::self.size]

    def sum(self, x):
        # the back-end picks its stream: NCCL on the GPU, ring and MPI on the CPU
        return mx.distributed.all_sum(x, group=self.group) if self.distributed else x

    def sum_tree(self, tree):
        return tree_map(self.sum, tree) if self.distributed else tree


_WORLD: World | None = None


def world() -> World:
    """The process group this process was launched in (a world of one without `mlx.launch`)."""
    global _WORLD
    if _WORLD is None:
        group = mx.distributed.init(strict=False) if mx.distributed.is_available() else None
        if group is None or group.size() == 1:
            _WORLD = World(group=group, rank=0, size=1)
        else:
            _WORLD = World(group=group, rank=group.rank(), size=group.size())
    return _WORLD
