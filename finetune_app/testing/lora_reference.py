"""The LoRA branch as it was before loracut (#16): `y + scale * ((x @ A) @ B)` in x's dtype, the
second matmul, the scaling and the add three [tokens, out] writes. Kept to compare against (tests,
and the step benchmarks' `--lora-branch previous`), never used by a run."""

from __future__ import annotations

from contextlib import contextmanager

from finetune_app.core.training import lora_dtype


def previous_call(self, x):
    y = self.linear(x)
    z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
    return y + (self.scale * z).astype(x.dtype)


def use_previous_branch() -> None:
    """For the rest of the process (the step benchmarks' `--lora-branch previous`), every switched
    LoRA layer computes the previous form."""
    lora_dtype._BranchInInputDtype.__call__ = previous_call


@contextmanager
def previous_branch():
    """Within the block, every switched LoRA layer (mlx-lm's and mlx-vlm's) computes the previous form."""
    cls = lora_dtype._BranchInInputDtype
    saved = cls.__call__
    cls.__call__ = previous_call
    try:
        yield
    finally:
        cls.__call__ = saved
