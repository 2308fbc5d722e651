"""What the back-end changes in a run: on the CPU, the step (and a VLM's frozen tower) is not compiled (#16 cputext).

On MLX's CPU back-end `mx.compile` builds each fused kernel as a C++ shared library with the
system compiler (~3-4 s per kernel here, ~30 kernels for a Llama LoRA step: ~2 minutes before a
machine's first step) and traces the step again for every new padded shape (up to `SHAPE_CAP` per
run). A user with no GPU pays both on a run of a few dozen steps; the uncompiled step pays
neither, and without traces the batch shapes are free, so each batch is padded on its own (less
padding than a shared plan). Measured side by side in docs/performance.md ("CPU done-when
(cputext)"). GPUs (CUDA, Metal) keep the compiled step: their kernels are not built per process
by a C++ compiler, and there the fused step is the faster one.

`FINETUNE_CPU_COMPILE=1` compiles on the CPU too (the tests do, so the compiled step the GPU runs
stays covered on this CPU-only box).
"""

from __future__ import annotations

import os

import mlx.core as mx

CPU_COMPILE_ENV = "FINETUNE_CPU_COMPILE"


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def on_cuda() -> bool:
    """MLX's CUDA back-end (an MLX built without it has no `mx.cuda`)."""
    try:
        return bool(mx.cuda.is_available()) and mx.default_device() == mx.gpu
    except AttributeError:
        return False


def compile_step(requested: bool) -> bool:
    """Whether the step is compiled: as `requested` (the `compile` setting) except on the CPU,
    where compiling costs more than it saves on a run's worth of shapes (unless the environment
    asks for it)."""
    if not requested:
        return False
    return not on_cpu() or os.environ.get(CPU_COMPILE_ENV, "") not in ("", "0")


def plan_shapes(family) -> bool:
    """Whether the run's batches share a `ShapePlan` of a few (positions, supervised) sizes: when
    the step is compiled (each shape is a trace), and off the CPU also uncompiled (the buffer
    cache of a GPU run keeps buffers of every size it met). Uncompiled on the CPU, each batch is
    padded on its own."""
    return family.fast and (family.compiled or not on_cpu())
