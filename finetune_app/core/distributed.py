"""Data-parallel training over MLX's own distributed backend (ring, MPI, NCCL via `mlx.launch`).

Every process builds the same global batches (same data, same seed); each takes its shard, the
gradients are summed with `mx.distributed.all_sum`, and every process applies the same update.
Losses are normalised by the global number of supervised tokens, so the summed gradient equals
the single-process gradient of the same global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass

import mlx.core as mx
from mlx.utils import tree_map

from finetune_app.core import launcher_env


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

    def gather(self, x):
        """Every process's `x`, concatenated along the first axis in rank order."""
        return mx.distributed.all_gather(x, group=self.group) if self.distributed else x

    def host_names(self) -> list[str]:
        """Each rank's host name (rank order); gathered as bytes, the collectives move numbers."""
        name = (socket.gethostname() or "?").encode()[:NAME_BYTES]
        local = mx.array(list(name) + [0] * (NAME_BYTES - len(name)), dtype=mx.int32)
        rows = self.gather(local).reshape(self.size, NAME_BYTES).tolist()
        return [bytes(c for c in row if c).decode(errors="replace") for row in rows]


NAME_BYTES = 64


_WORLD: World | None = None
_SIGTERM_HANDLERS: list = []  # the newest runs first; without one SIGTERM ends the process


def on_sigterm(handler) -> None:
    """Run `handler()` on SIGTERM instead of exiting at once (it should end the process)."""
    _SIGTERM_HANDLERS.insert(0, handler)


def remove_sigterm_handler(handler) -> None:
    if handler in _SIGTERM_HANDLERS:
        _SIGTERM_HANDLERS.remove(handler)


def _take_sigterm() -> None:
    signal.sigwait({signal.SIGTERM})
    if _SIGTERM_HANDLERS:
        _SIGTERM_HANDLERS[0]()
    os._exit(128 + signal.SIGTERM)


def world() -> World:
    """The process group this process was launched in (a world of one without `mlx.launch`)."""
    global _WORLD
    if _WORLD is None:
        # Under a launcher, SIGTERM is blocked before MLX starts its threads (they inherit the
        # mask) and taken by peers.PeerWatch on a thread of its own: a main thread stuck in a
        # dead collective never runs a Python signal handler.
        # The CLI and the rank entry block it first thing, before MLX's own threads exist (launcher_env).
        launched = launcher_env.launched() and threading.current_thread() is threading.main_thread()
        if launched:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            threading.Thread(target=_take_sigterm, name="finetune-sigterm", daemon=True).start()
        group = mx.distributed.init(strict=False) if mx.distributed.is_available() else None
        if group is None or group.size() == 1:
            _WORLD = World(group=group, rank=0, size=1)
            if launched:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        else:
            _WORLD = World(group=group, rank=group.rank(), size=group.size())
    return _WORLD
