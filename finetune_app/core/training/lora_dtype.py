"""LoRA's branch computed in the model's dtype, its A and B kept float32 (#16 textmem2).

mlx-lm's `LoRALinear` holds A and B in float32 and computes `(x @ A) @ B`; in a bfloat16 model the
matmul promotes x, and value_and_grad keeps that float32 copy of every LoRA layer's input for A's
gradient (once per distinct input: attention, o_proj, MLP, down_proj). On Llama-3B-sized bf16 at
4 x 640 tokens that is ~(3 x 3,072 + 8,192) x 4 bytes per token and layer, ~3-5 GB of a ~15 GB
step (CPU cuts of the 3B config: the step's peak 14-15% lower). Here the branch runs in x's dtype:
A and B are cast to it (their gradients come back through the cast in float32, and the optimizer
updates the float32 values), as mixed-precision training does. A float32 model is unchanged (the
casts are no-ops): the same losses and gradients bit for bit (tests/test_lora_dtype.py).
"""

from __future__ import annotations

import mlx.nn as nn

from finetune_app.core.patches.mlx_lm_tuner_imports import import_module

LoRALinear = import_module("mlx_lm.tuner.lora").LoRALinear


class ModelDtypeLoRALinear(LoRALinear):
    """mlx-lm's LoRALinear (same parameters, fuse, saving) with the branch in the input's dtype."""

    def __call__(self, x):
        y = self.linear(x)
        z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return y + (self.scale * z).astype(x.dtype)


def in_model_dtype(model: nn.Module) -> int:
    """Switch every plain LoRALinear of `model` to `ModelDtypeLoRALinear`; the number switched."""
    n = 0
    for _, m in model.named_modules():
        if type(m) is LoRALinear:
            m.__class__ = ModelDtypeLoRALinear
            n += 1
    return n
