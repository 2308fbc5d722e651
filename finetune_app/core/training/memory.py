"""Held memory during training: MLX's buffer cache bounded, restored when the run ends (#16).

MLX keeps freed buffers in a cache for reuse, and by default lets it grow to the device's memory
limit. A compiled step traced for several shapes frees buffers of many sizes, so the process
held about twice its working set on the GPU (issue 16: 53.5 GB held vs 27.6 GB MLX peak, where
mlx-lm held 28.8 GB). A cache of a small fraction of the memory keeps the reuse that matters
(the same step's buffers, step after step) without hoarding the rest.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from contextlib import contextmanager

import mlx.core as mx

CACHE_FRACTION = 0.05  # of the device's memory (unified memory or RAM): 0.8 GB of 16 GB
# ... and never more than this (#16 textmem2): 5% of an H200 is 7.2 GB, which the text run kept cached
# beside its working set (NVML process peak 10.2 GB above the MLX peak, mlx_lm's 5.4: mlx-lm's
# trainer empties the cache after every step). A step's buffers are reused within the step either way.
CACHE_CAP = 2 << 30


MMAP_THRESHOLD = 128 * 1024  # glibc's initial M_MMAP_THRESHOLD


def return_freed_memory() -> bool:
    """Linux (glibc): keep malloc's mmap threshold at its initial 128 KiB for the process.

    MLX's CPU buffers come from malloc. glibc raises the threshold to the size of each mmapped
    block freed (up to 32 MiB), so after the first large step the step's buffers come from the heap,
    and freed heap memory stays in the process: a tiny Llama's training process held ~100 MB more
    between steps than without compiling, and its max RSS was 616 MB vs 570 MB with the threshold
    fixed (docs/performance.md, #16). Fixed, large buffers are mapped and unmapped, so a freed one goes
    back to the system (MLX's buffer cache still reuses them). macOS and Metal: nothing to do."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


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
    return min(int(device_memory() * fraction), CACHE_CAP)


@contextmanager
def bounded_cache(fraction: float = CACHE_FRACTION):
    """Limit MLX's buffer cache to `fraction` of the device memory (never above the limit already
    set) while the block runs; the previous limit comes back afterwards. Yields the limit. Also
    `return_freed_memory` (process-wide, kept: it only makes freed memory go back sooner)."""
    return_freed_memory()
    previous = mx.set_cache_limit(0)  # (the only way to read the limit is to set one)
    limit = min(previous, cache_limit(fraction)) if previous > 0 else cache_limit(fraction)
    mx.set_cache_limit(limit)
    try:
        yield limit
    finally:
        mx.set_cache_limit(previous)
