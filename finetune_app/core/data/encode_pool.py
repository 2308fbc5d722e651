"""Rows encoded on a few threads and handed back in order.

Encoding a picture row is mostly the image processor (PIL decoding and resizing, numpy
normalising), which releases the GIL, so a handful of threads shorten the wait before the first
step by about the core count. Rows are read on the caller's thread and their results come back in
row order, a bounded window ahead, so everything after encoding (length checks, problems, the
family's own MLX work) runs exactly as in a sequential pass. The processor hands back MLX arrays,
so each worker releases its MLX streams before it ends (docs/engine.md, "Threads").
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future
from typing import Iterator

MAX_WORKERS = 8
AHEAD = 2  # rows in flight per worker: enough to keep them busy, few pixel arrays held


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def _encode(encode, sample, i: int):
    """(example, failure): whatever one row raises is its own failure, never the pool's."""
    try:
        return encode(sample, index=i), None
    except Exception as exc:  # noqa: BLE001 - located per row by the caller
        return None, exc


def encoded_rows(dataset, encode, indices: list[int], *, workers: int | None = None
                 ) -> Iterator[tuple[object, object, BaseException | None]]:
    """(sample or None, example or None, failure or None) for each index, in order; `encode(sample,
    index=i)` makes a row's example (an Encoder's `encode`, or its header-only `encode_sized`)."""
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(indices) < 2:
        for i in indices:
            try:
                sample = dataset.sample(i)
            except Exception as exc:  # noqa: BLE001
                yield None, None, exc
                continue
            yield (sample, *_encode(encode, sample, i))
        return
    yield from _Pool(min(workers, len(indices)), encode).run(dataset, indices)


class _Pool:
    def __init__(self, n: int, encode):
        self.n, self.encode = n, encode
        self.tasks: queue.Queue = queue.Queue()

    def _work(self) -> None:
        try:
            while (task := self.tasks.get()) is not None:
                future, sample, i = task
                if future.set_running_or_notify_cancel():
                    future.set_result(_encode(self.encode, sample, i))
        finally:
            import mlx.core as mx

            mx.clear_streams()

    def run(self, dataset, indices: list[int]):
        threads = [threading.Thread(target=self._work, name=f"encode-{k}", daemon=True) for k in range(self.n)]
        for t in threads:
            t.start()
        pending: deque = deque()
        rows = iter(indices)
        try:
            while True:
                while len(pending) < self.n * AHEAD and (i := next(rows, None)) is not None:
                    try:
                        sample = dataset.sample(i)  # (on this thread: sources need not be thread-safe)
                    except Exception as exc:  # noqa: BLE001
                        pending.append((None, exc))
                        continue
                    future = Future()
                    self.tasks.put((future, sample, i))
                    pending.append((sample, future))
                if not pending:
                    return
                sample, got = pending.popleft()
                yield (None, None, got) if sample is None else (sample, *got.result())
        finally:  # also when the caller stops early: drop queued rows, let the workers end
            for _, got in pending:
                if isinstance(got, Future):
                    got.cancel()
            for _ in threads:
                self.tasks.put(None)
            for t in threads:
                t.join()
