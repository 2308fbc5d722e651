"""LoRA's branch computed in the model's dtype as one AddMM, A and B kept float32 (#16 textmem2,
lmstep, loracut).

mlx-lm's and mlx-vlm's `LoRALinear` and `DoRALinear` (the same `__call__` in both libraries) hold A
and B in float32 and compute `y + (scale * ((x @ A) @ B)).astype(x.dtype)`: in a bfloat16 model the
matmul promotes x, and value_and_grad keeps that float32 copy of every LoRA layer's input for A's
gradient, and the branch's [tokens, out] result, its scaling and its gradient run in float32 too
(textmem2 and lmstep: ~3-5 GB of a 15 GB Llama-3B step; 165 float32 matmuls per 4 layers of the
Qwen2-VL-2B step). Here the branch runs in x's dtype (A and B cast to it; their gradients come
back through the cast in float32, and the optimizer updates the float32 values, as mixed-precision
training does), and it is written `addmm(y, x @ A, scale * B)`: the second matmul, the scaling and
the add are one kernel with the base output as the GEMM's C, where the library's form writes,
re-reads and adds a [tokens, out] result per projection and scales the [tokens, out] cotangent in
the backward pass. The scale goes into B ([rank, out], tiny), not AddMM's alpha: MLX's AddMM
gradient multiplies the cotangent by alpha once for each of its two matmul inputs.

Parameters, adapter files, fuse and the libraries' loading are the libraries' (only `__call__` is
ours). A float32 model computes the same function: with a power-of-two scale bit for bit, else
within float32 rounding (tests/test_lora_dtype.py).
"""

from __future__ import annotations

import sys

import mlx.core as mx
import mlx.nn as nn

from finetune_app.core.patches.mlx_lm_tuner_imports import import_module

_tuner = import_module("mlx_lm.tuner.lora"), import_module("mlx_lm.tuner.dora")
LoRALinear, DoRALinear = _tuner[0].LoRALinear, _tuner[1].DoRALinear
VLM_LAYERS = "mlx_vlm.trainer.peft.lora_layers"  # mlx-vlm's layers (imported only by VLM runs)
VLM_DORA = "mlx_vlm.trainer.peft.dora_layers"


def branch_added(layer, x: mx.array, y: mx.array) -> mx.array:
    """y + scale * (dropout(x) @ A) @ B in x's dtype, the second matmul, scale and add one AddMM
    (rows flattened: AddMM would broadcast B over the batch, a batched GEMM)."""
    shape = y.shape
    h = layer.dropout(x).reshape(-1, x.shape[-1]) @ layer.lora_a.astype(x.dtype)
    b = (layer.scale * layer.lora_b).astype(x.dtype)
    return mx.addmm(y.reshape(-1, shape[-1]), h, b).reshape(shape)


class _BranchInInputDtype:
    def __call__(self, x):
        return branch_added(self, x, self.linear(x))


class _DoRABranchInInputDtype:
    """The libraries' DoRA `__call__` with the LoRA branch as above; the magnitude and the
    adapted weight's norm (weight-sized, not token-sized) as the libraries compute them."""

    def __call__(self, x):
        w = self._dequantized_weight()
        out = branch_added(self, x, x @ w.T)
        adapted = w + (self.scale * self.lora_b.T) @ self.lora_a.T
        denom = mx.stop_gradient(mx.linalg.norm(adapted, axis=1))
        out = (self.m / denom).astype(x.dtype) * out
        if "bias" in self.linear:
            out = out + self.linear.bias
        return out


def _variant(cls, mixin, name: str, doc: str):
    return type(name, (mixin, cls), {"__doc__": doc, "__module__": __name__})


ModelDtypeLoRALinear = _variant(LoRALinear, _BranchInInputDtype, "ModelDtypeLoRALinear",
                                "mlx-lm's LoRALinear (same parameters, fuse, saving) with the branch in the input's dtype.")
ModelDtypeDoRALinear = _variant(DoRALinear, _DoRABranchInInputDtype, "ModelDtypeDoRALinear",
                                "mlx-lm's DoRALinear (same parameters, fuse, saving) with the branch in the input's dtype.")
_switched: dict = {LoRALinear: ModelDtypeLoRALinear, DoRALinear: ModelDtypeDoRALinear}


def model_dtype_class(cls):
    """The model-dtype variant of a LoRA / DoRA layer class (mlx-lm's or mlx-vlm's), or None."""
    if cls in _switched:
        return _switched[cls]
    for module, name, mixin in ((VLM_LAYERS, "LoRALinear", _BranchInInputDtype),
                                (VLM_DORA, "DoRALinear", _DoRABranchInInputDtype)):
        vlm = sys.modules.get(module)
        if vlm is not None and cls is getattr(vlm, name, None):
            _switched[cls] = _variant(cls, mixin, f"ModelDtypeVLM{name}",
                                      f"mlx-vlm's {name} (same parameters, fuse, saving) with the branch in the input's dtype.")
            return _switched[cls]
    return None


def in_model_dtype(model: nn.Module) -> int:
    """Switch every plain LoRALinear / DoRALinear of `model` (mlx-lm's or mlx-vlm's) to its
    model-dtype variant; the number switched."""
    n = 0
    for _, m in model.named_modules():
        cls = model_dtype_class(type(m))
        if cls is not None:
            m.__class__ = cls
            n += 1
    return n
