"""LoRA's branch computed in the model's dtype, its A and B kept float32 (#16 textmem2, lmstep).

mlx-lm's and mlx-vlm's `LoRALinear` (the same `__call__`) hold A and B in float32 and compute
`(x @ A) @ B`; in a bfloat16 model the matmul promotes x, and value_and_grad keeps that float32
copy of every LoRA layer's input for A's gradient (once per distinct input: attention, o_proj,
MLP, down_proj), and the branch's [tokens, out] result, its scaling and its gradient run in
float32 too. On Llama-3B-sized bf16 at 4 x 640 tokens the copies were ~3-5 GB of a ~15 GB step
(the step's peak 14-15% lower without them); in the Qwen2-VL-2B step (mlx-vlm's layer, every LM
projection, MLP width 8,960) they were ~60 float32 copies of [tokens, 256-8,960] and 165 float32
matmuls per 4 layers (every LoRA matmul, forward and backward), where the text step had none
(lmstep: the traced graph, docs/performance.md). Here the branch runs in x's dtype: A and B are
cast to it (their gradients come back through the cast in float32, and the optimizer updates the
float32 values), as mixed-precision training does. A float32 model is unchanged (the casts are
no-ops): the same losses and gradients bit for bit (tests/test_lora_dtype.py).
"""

from __future__ import annotations

import sys

import mlx.nn as nn

from finetune_app.core.patches.mlx_lm_tuner_imports import import_module

LoRALinear = import_module("mlx_lm.tuner.lora").LoRALinear
VLM_LAYERS = "mlx_vlm.trainer.peft.lora_layers"  # mlx-vlm's LoRALinear (imported only by VLM runs)


class _BranchInInputDtype:
    def __call__(self, x):
        y = self.linear(x)
        z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return y + (self.scale * z).astype(x.dtype)


class ModelDtypeLoRALinear(_BranchInInputDtype, LoRALinear):
    """mlx-lm's LoRALinear (same parameters, fuse, saving) with the branch in the input's dtype."""


_switched: dict = {LoRALinear: ModelDtypeLoRALinear}


def model_dtype_class(cls):
    """The model-dtype variant of a LoRA layer class (mlx-lm's or mlx-vlm's LoRALinear), or None."""
    if cls in _switched:
        return _switched[cls]
    vlm = sys.modules.get(VLM_LAYERS)
    if vlm is not None and cls is vlm.LoRALinear:
        _switched[cls] = type("ModelDtypeVLMLoRALinear", (_BranchInInputDtype, cls), {
            "__doc__": "mlx-vlm's LoRALinear (same parameters, fuse, saving) with the branch in the input's dtype.",
            "__module__": __name__})
        return _switched[cls]
    return None


def in_model_dtype(model: nn.Module) -> int:
    """Switch every plain LoRALinear of `model` (mlx-lm's or mlx-vlm's) to its model-dtype variant;
    the number switched."""
    n = 0
    for _, m in model.named_modules():
        cls = model_dtype_class(type(m))
        if cls is not None:
            m.__class__ = cls
            n += 1
    return n
