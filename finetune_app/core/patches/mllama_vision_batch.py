"""mlx-vlm 0.7.10's Mllama (``mlx_vlm.models.mllama``) takes ``vision_outputs[0]`` of its vision
tower in both ``get_input_embeddings`` and ``__call__``, as if the tower returned a tuple (as
transformers' does); but mlx-vlm's ``VisionModel.__call__`` returns one batched array, so ``[0]``
picks the first row's image: at batch 1 that happens to be right, at batch 2 every row
cross-attends to the first row's image (and rows with different tile counts fail with a broadcast
error).

The patch makes ``VisionModel.__call__`` return a 1-tuple ``(features,)``, so ``[0]`` is the
whole batch, exactly what the callers mean. Nothing else in mlx-vlm calls the Mllama tower.
Batch-1 values are unchanged, so inference is unchanged.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10"}
MARK = "_finetune_patched"


def still_needed() -> bool:
    """True while the tower returns a bare array that the model indexes with [0]."""
    import inspect

    from mlx_vlm.models.mllama import mllama, vision

    call = getattr(vision.VisionModel.__call__, "__wrapped__", vision.VisionModel.__call__)
    return ") -> mx.array:" in inspect.getsource(call) and "vision_outputs[0]" in inspect.getsource(mllama.Model)


def apply() -> None:
    import functools

    from mlx_vlm.models.mllama.vision import VisionModel

    original = VisionModel.__call__
    if getattr(original, MARK, False):
        return

    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        return (original(self, *args, **kwargs),)

    setattr(__call__, MARK, True)
    VisionModel.__call__ = __call__
