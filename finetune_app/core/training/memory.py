"""Held memory during training: MLX's buffer cache bounded, restored when the run ends (#16).

MLX keeps freed buffers in a cache for reuse, and by default lets it grow to the device's memory
limit. A compiled step traced for several shapes frees buffers of many sizes, so the process
held about twice its working set on the GPU (issue 16: 53.5 GB held vs 27.6 GB MLX peak, where
mlx-lm held 28.8 GB). A cache of a small fraction of the memory keeps the reuse that matters
(the same step's buffers, step after step) without hoarding the rest.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import mlx.core as mx

CACHE_FRACTION = 0.05  # of the device's memory (unified memory or RAM): 0.8 GB of 16 GB, 7 GB of an H200


def device_memory() -> int:
    """Bytes of memory the device computes in: its own (GPU) or the machine's RAM (CPU, Apple's
    unified memory when MLX does not say)."""
    info = mx.device_info()
    if info.get("memory_size"):
        return int(info["memory_size"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fit_budget() -> int:
    """Bytes a run may plan to use: Metal's recommended working set (what macOS lets the GPU keep
    resident), else the device's memory (a CUDA GPU's own, or RAM)."""
    info = mx.device_info()
    return int(info.get("max_recommended_working_set_size") or device_memory())


def cache_limit(fraction: float = CACHE_FRACTION) -> int:
    return int(device_memory() * fraction)


@contextmanager
def bounded_cache(fraction: float = CACHE_FRACTION):
    """Limit MLX's buffer cache to `fraction` of the device memory (never above the limit already
    set) while the block runs; the previous limit comes back afterwards. Yields the limit."""
    previous = mx.set_cache_limit(0)  # (the only way to read the limit is to set one)
    limit = min(previous, cache_limit(fraction)) if previous > 0 else cache_limit(fraction)
    mx.set_cache_limit(limit)
    try:
        yield limit
    finally:
        mx.set_cache_limit(previous)
