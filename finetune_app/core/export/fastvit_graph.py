"""FastViTHD (FastVLM's vision tower) written once, as a sequence of ops over an abstract backend.

The same definition (`define_fastvithd`) drives two backends:

* `NumpyOps` (here): float32 numpy, evaluates the graph on any CPU, so the graph can be checked
  against mlx-vlm's MLX tower where CoreML cannot run (Linux);
* `MilOps` (in `coreml_encoder`): emits a CoreML MIL program through coremltools' builder.

Layout: NCHW throughout, like CoreML (mlx-vlm's tower runs NHWC). Weights are read from the MLX
module's own parameters (`tree_flatten(vision_tower.parameters())`), so fine-tuned tower weights
flow through; MLX conv weights [O, kH, kW, I/g] become [O, I/g, kH, kW] here.

What the graph computes is exactly the tensor mlx-vlm's `Model.get_input_embeddings` feeds to the
projector: `vision_tower(pixels_nhwc)[1]` (the `conv_exp` output, before `head` and before
`mm_projector`) reshaped to B x (H*W) x C. The input is the processor's `pixel_values` (NCHW, RGB,
already scaled to [0, 1]; FastVLM's mean is 0 and std is 1), so the graph does no rescaling.

BatchNorm uses its running statistics (eval mode) whatever mode the MLX module is in.
Only mlx-vlm's inference-time (reparameterised) FastViTHD form exists, so that is what is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune_app.core.errors import ModelError

#: mlx-vlm 0.7.10 `VisionConfig` class attributes (FastViTHD), used when a config lacks one.
FASTVITHD_DEFAULTS: dict[str, Any] = {
    "layers": [2, 12, 24, 4, 2],
    "embed_dims": [96, 192, 384, 768, 1536],
    "mlp_ratios": [4, 4, 4, 4, 4],
    "downsamples": [True, True, True, True, True],
    "pos_embs_shapes": [None, None, None, (7, 7), (7, 7)],
    "token_mixers": ("repmixer", "repmixer", "repmixer", "attention", "attention"),
    "repmixer_kernel_size": 3,
    "down_patch_size": 7,
    "down_stride": 2,
    "cls_ratio": 2.0,
    "image_size": 1024,
}

#: What Apple's FastVLM app checks (FastVLM.swift: `precondition(output.image_features.shape ==
#: [1, 256, 3072])`), for the real tower at 1024 px.
APP_IMAGE_SIZE = 1024
APP_FEATURES_SHAPE = (1, 256, 3072)

ATTENTION_HEAD_DIM = 32  # mlx-vlm's MHSA default; the tower never overrides it
BN_EPS = 1e-5            # mlx.nn.BatchNorm default
LN_EPS = 1e-5            # LayerNormChannel default
SE_RATIO = 0.0625        # SEBlock rd_ratio


# --------------------------------------------------------------------------------------------
# Architecture description
# --------------------------------------------------------------------------------------------

def _cfg_get(cfg: Any, name: str):
    if isinstance(cfg, Mapping):
        value = cfg.get(name)
    else:
        value = getattr(cfg, name, None)
    return FASTVITHD_DEFAULTS.get(name) if value is None else value


@dataclass(frozen=True)
class FastViTArch:
    """The architecture lists mlx-vlm reads from `VisionConfig` (instance or class attributes)."""

    layers: tuple[int, ...]
    embed_dims: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    downsamples: tuple[bool, ...]
    pos_embs_shapes: tuple[tuple[int, int] | None, ...]
    token_mixers: tuple[str, ...]
    repmixer_kernel_size: int
    down_patch_size: int
    down_stride: int
    cls_ratio: float
    image_size: int

    @classmethod
    def from_config(cls, cfg: Any) -> FastViTArch:
        layers = tuple(int(v) for v in _cfg_get(cfg, "layers"))
        n = len(layers)
        pos = _cfg_get(cfg, "pos_embs_shapes") or [None] * n
        pos = tuple(None if p is None else ((int(p), int(p)) if isinstance(p, (int, float))
                                             else (int(p[0]), int(p[1]))) for p in pos)
        arch = cls(
            layers=layers,
            embed_dims=tuple(int(v) for v in _cfg_get(cfg, "embed_dims")),
            mlp_ratios=tuple(float(v) for v in _cfg_get(cfg, "mlp_ratios")),
            downsamples=tuple(bool(v) for v in _cfg_get(cfg, "downsamples")),
            pos_embs_shapes=pos,
            token_mixers=tuple(str(v) for v in _cfg_get(cfg, "token_mixers")),
            repmixer_kernel_size=int(_cfg_get(cfg, "repmixer_kernel_size")),
            down_patch_size=int(_cfg_get(cfg, "down_patch_size")),
            down_stride=int(_cfg_get(cfg, "down_stride")),
            cls_ratio=float(_cfg_get(cfg, "cls_ratio")),
            image_size=int(_cfg_get(cfg, "image_size")),
        )
        lists = {"embed_dims": arch.embed_dims, "mlp_ratios": arch.mlp_ratios,
                 "downsamples": arch.downsamples, "pos_embs_shapes": arch.pos_embs_shapes,
                 "token_mixers": arch.token_mixers}
        bad = [k for k, v in lists.items() if len(v) != n]
        if bad:
            raise ModelError(
                f"The FastViT vision config is inconsistent: {', '.join(bad)} must have one entry "
                f"per stage ({n} stages, from 'layers').",
                "Use the vision_config the model was trained with.", field=bad[0])
        unknown = sorted(set(arch.token_mixers) - {"repmixer", "attention"})
        if unknown:
            raise ModelError(f"Unknown FastViT token mixer(s) {unknown} in the vision config.",
                             "Only 'repmixer' and 'attention' exist in FastViTHD.",
                             field="token_mixers")
        return arch

    @property
    def feature_width(self) -> int:
        """Channels of the tower output (FastVLM's mm_hidden_size; 3072 for FastViTHD)."""
        return int(self.embed_dims[-1] * self.cls_ratio)

    @property
    def total_stride(self) -> int:
        """Stem (4) times one downsampling per stage transition."""
        stride = 4
        for i in range(len(self.layers) - 1):
            if self.downsamples[i] or self.embed_dims[i] != self.embed_dims[i + 1]:
                stride *= self.down_stride
        return stride

    def grid(self, image_size: int) -> int:
        """Side of the output feature map for a square input of `image_size` pixels."""
        size = image_size
        size = (size + 2 - 3) // 2 + 1  # stem conv 3x3 s2 p1
        size = (size + 2 - 3) // 2 + 1  # stem depthwise 3x3 s2 p1
        k = self.down_patch_size
        for i in range(len(self.layers) - 1):
            if self.downsamples[i] or self.embed_dims[i] != self.embed_dims[i + 1]:
                size = (size + 2 * (k // 2) - k) // self.down_stride + 1
        return size

    def features_shape(self, image_size: int, batch: int = 1) -> tuple[int, int, int]:
        g = self.grid(image_size)
        return (batch, g * g, self.feature_width)


# --------------------------------------------------------------------------------------------
# Weights from the MLX module
# --------------------------------------------------------------------------------------------

PREFIX = "vision_model."


def tower_weights(vision_tower) -> dict[str, np.ndarray]:
    """float32 numpy copies of the tower's parameters, keyed like `tree_flatten` (minus nothing).

    Quantized linear layers (QLoRA bases) are dequantized. LoRA-wrapped layers must be fused
    first: their keys would not match the tower and are reported by `define_fastvithd`."""
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten

    out: dict[str, np.ndarray] = {}
    quantized: dict[str, Any] = {}
    for name, module in vision_tower.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            quantized[name] = module
    for name, module in quantized.items():
        kwargs = {"mode": module.mode} if getattr(module, "mode", None) else {}
        w = mx.dequantize(module.weight, module.scales, module.get("biases"),
                          group_size=module.group_size, bits=module.bits, **kwargs)
        out[f"{name}.weight"] = np.array(w.astype(mx.float32))
        if "bias" in module:
            out[f"{name}.bias"] = np.array(module.bias.astype(mx.float32))
    skip = {f"{n}.{k}" for n in quantized for k in ("weight", "scales", "biases", "bias")}
    for key, value in tree_flatten(vision_tower.parameters()):
        if key in skip:
            continue
        out[key] = np.array(value.astype(mx.float32))
    return out


class _Weights:
    """Looks weights up by tower key, converts their layout, and remembers what was used."""

    def __init__(self, weights: Mapping[str, np.ndarray], ops: Ops):
        self._w = weights
        self._ops = ops
        self.used: set[str] = set()

    def raw(self, key: str) -> np.ndarray:
        full = PREFIX + key
        if full not in self._w:
            hint = ""
            if any(k.startswith(full.rsplit(".", 1)[0] + ".linear.") or "lora_" in k
                   for k in self._w):
                hint = " The tower looks LoRA-wrapped: fuse the adapters into it first."
            raise ModelError(
                f"The vision tower has no weight '{full}', which its FastViT config needs.{hint}",
                "Check that the vision_config (layers, embed_dims, token_mixers, ...) is the one "
                "the tower was built with.")
        self.used.add(full)
        return np.asarray(self._w[full], dtype=np.float32)

    def const(self, key: str, shape: Sequence[int], layout: str = "plain"):
        value = self.raw(key)
        if layout == "conv":          # MLX [O, kH, kW, I/g] -> NCHW conv [O, I/g, kH, kW]
            value = value.transpose(0, 3, 1, 2)
        elif layout == "channel":     # (1, 1, C) layer scale (NHWC) -> (1, C, 1, 1)
            value = value.reshape(1, -1, 1, 1)
        if tuple(value.shape) != tuple(shape):
            raise ModelError(
                f"The vision tower's weight '{PREFIX + key}' has shape "
                f"{tuple(self._w[PREFIX + key].shape)}, but its FastViT config implies "
                f"{tuple(shape)} (after layout change).",
                "Use the vision_config the tower was built with (mlx-vlm hard-codes FastViTHD's "
                "sizes; a smaller tower needs its own layers/embed_dims).")
        return self._ops.const((PREFIX + key).replace(".", "__"), np.ascontiguousarray(value))


# --------------------------------------------------------------------------------------------
# The op interface
# --------------------------------------------------------------------------------------------

class Ops:
    """The primitives the definition uses. Tensors are NCHW (or [B, N, C] inside attention)."""

    def const(self, name: str, value: np.ndarray): ...
    def shape(self, x) -> tuple[int, ...]: ...
    def conv(self, x, weight, bias, *, stride: int, pad: int, groups: int, name=None): ...
    def batch_norm(self, x, mean, var, gamma, beta, *, eps: float, name=None): ...
    def layer_norm_channels(self, x, gamma, beta, *, eps: float, name=None): ...
    def gelu(self, x, name=None): ...
    def relu(self, x, name=None): ...
    def sigmoid(self, x, name=None): ...
    def add(self, x, y, name=None): ...
    def mul(self, x, y, name=None): ...
    def scale(self, x, factor: float, name=None): ...
    def linear(self, x, weight, bias, name=None): ...
    def matmul(self, x, y, *, transpose_y: bool = False, name=None): ...
    def softmax(self, x, *, axis: int, name=None): ...
    def reshape(self, x, shape: Sequence[int], name=None): ...
    def transpose(self, x, perm: Sequence[int], name=None): ...
    def split(self, x, *, parts: int, axis: int, name=None) -> list: ...
    def mean_spatial(self, x, name=None): ...


# --------------------------------------------------------------------------------------------
# The definition (the only place the architecture is written)
# --------------------------------------------------------------------------------------------

def _mobileone(ops: Ops, W: _Weights, x, key: str, cin: int, cout: int, k: int, stride: int,
               pad: int, groups: int, *, se: bool = False):
    """MobileOneBlock (inference form): reparam_conv -> [SE] -> GELU."""
    w = W.const(f"{key}.reparam_conv.weight", (cout, cin // groups, k, k), "conv")
    b = W.const(f"{key}.reparam_conv.bias", (cout,))
    x = ops.conv(x, w, b, stride=stride, pad=pad, groups=groups)
    if se:
        x = _se(ops, W, x, f"{key}.se", cout)
    return ops.gelu(x)


def _se(ops: Ops, W: _Weights, x, key: str, c: int):
    """SEBlock: global mean -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid -> scale."""
    r = int(c * SE_RATIO)
    s = ops.mean_spatial(x)
    s = ops.conv(s, W.const(f"{key}.reduce.weight", (r, c, 1, 1), "conv"),
                 W.const(f"{key}.reduce.bias", (r,)), stride=1, pad=0, groups=1)
    s = ops.relu(s)
    s = ops.conv(s, W.const(f"{key}.expand.weight", (c, r, 1, 1), "conv"),
                 W.const(f"{key}.expand.bias", (c,)), stride=1, pad=0, groups=1)
    s = ops.sigmoid(s)
    return ops.mul(x, s)


def _convffn(ops: Ops, W: _Weights, x, key: str, dim: int, hidden: int):
    """ConvFFN: depthwise 7x7 (no bias) -> BatchNorm -> 1x1 fc1 -> GELU -> 1x1 fc2."""
    x = ops.conv(x, W.const(f"{key}.conv.conv.weight", (dim, 1, 7, 7), "conv"), None,
                 stride=1, pad=3, groups=dim)
    x = ops.batch_norm(x, W.const(f"{key}.conv.bn.running_mean", (dim,)),
                       W.const(f"{key}.conv.bn.running_var", (dim,)),
                       W.const(f"{key}.conv.bn.weight", (dim,)),
                       W.const(f"{key}.conv.bn.bias", (dim,)), eps=BN_EPS)
    x = ops.conv(x, W.const(f"{key}.fc1.weight", (hidden, dim, 1, 1), "conv"),
                 W.const(f"{key}.fc1.bias", (hidden,)), stride=1, pad=0, groups=1)
    x = ops.gelu(x)
    return ops.conv(x, W.const(f"{key}.fc2.weight", (dim, hidden, 1, 1), "conv"),
                    W.const(f"{key}.fc2.bias", (dim,)), stride=1, pad=0, groups=1)


def _repmixer_block(ops: Ops, W: _Weights, x, key: str, dim: int, k: int, mlp_ratio: float):
    x = ops.conv(x, W.const(f"{key}.token_mixer.reparam_conv.weight", (dim, 1, k, k), "conv"),
                 W.const(f"{key}.token_mixer.reparam_conv.bias", (dim,)),
                 stride=1, pad=k // 2, groups=dim)
    y = _convffn(ops, W, x, f"{key}.convffn", dim, int(dim * mlp_ratio))
    return ops.add(x, ops.mul(W.const(f"{key}.layer_scale", (1, dim, 1, 1), "channel"), y))


def _mhsa(ops: Ops, W: _Weights, x, key: str, dim: int):
    """MHSA over the H*W tokens; qkv has no bias (mlx-vlm's default), proj has one."""
    if dim % ATTENTION_HEAD_DIM:
        raise ModelError(f"Attention stage width {dim} is not a multiple of the head size "
                         f"{ATTENTION_HEAD_DIM}.", "Use embed_dims that mlx-vlm accepts.")
    heads = dim // ATTENTION_HEAD_DIM
    b, c, h, w = ops.shape(x)
    n = h * w
    t = ops.transpose(ops.reshape(x, (b, c, n)), (0, 2, 1))                     # B, N, C
    qkv = ops.linear(t, W.const(f"{key}.qkv.weight", (3 * dim, dim)), None)     # B, N, 3C
    # mlx-vlm: reshape(B, N, 3, heads, hd).transpose(2, 0, 3, 1, 4): the 3 is the outer factor.
    q, k, v = [ops.transpose(ops.reshape(p, (b, n, heads, ATTENTION_HEAD_DIM)), (0, 2, 1, 3))
               for p in ops.split(qkv, parts=3, axis=2)]                          # B, h, N, hd
    q = ops.scale(q, ATTENTION_HEAD_DIM ** -0.5)
    attn = ops.softmax(ops.matmul(q, k, transpose_y=True), axis=3)              # B, h, N, N
    o = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))                        # B, N, h, hd
    o = ops.linear(ops.reshape(o, (b, n, dim)), W.const(f"{key}.proj.weight", (dim, dim)),
                   W.const(f"{key}.proj.bias", (dim,)))
    return ops.reshape(ops.transpose(o, (0, 2, 1)), (b, c, h, w))


def _attention_block(ops: Ops, W: _Weights, x, key: str, dim: int, mlp_ratio: float):
    y = ops.layer_norm_channels(x, W.const(f"{key}.norm.weight", (dim,)),
                                W.const(f"{key}.norm.bias", (dim,)), eps=LN_EPS)
    y = _mhsa(ops, W, y, f"{key}.token_mixer", dim)
    x = ops.add(x, ops.mul(W.const(f"{key}.layer_scale_1", (1, dim, 1, 1), "channel"), y))
    y = _convffn(ops, W, x, f"{key}.convffn", dim, int(dim * mlp_ratio))
    return ops.add(x, ops.mul(W.const(f"{key}.layer_scale_2", (1, dim, 1, 1), "channel"), y))


def define_fastvithd(ops: Ops, images, weights: Mapping[str, np.ndarray], arch: FastViTArch, *,
                     output_name: str = "image_features",
                     on_stage: Callable[[int, int], None] | None = None):
    """Emit FastViTHD on `ops`: images NCHW [B, 3, S, S] -> features [B, (S/64)^2, C].

    Mirrors mlx-vlm's `FastViTHDModel` (stem, `build_fast_vit_network`, `conv_exp`) followed by
    the reshape in `Model.get_input_embeddings`. Every tower weight except the unused
    classification `head` must be consumed; anything left over is an error (the tower and the
    config disagree)."""
    W = _Weights(weights, ops)
    d = arch.embed_dims
    # Stem (ConvolutionalStem)
    x = _mobileone(ops, W, images, "patch_embed.blocks.0", 3, d[0], 3, 2, 1, 1)
    x = _mobileone(ops, W, x, "patch_embed.blocks.1", d[0], d[0], 3, 2, 1, d[0])
    x = _mobileone(ops, W, x, "patch_embed.blocks.2", d[0], d[0], 1, 1, 0, 1)
    # Network (build_fast_vit_network): the indices follow mlx-vlm's flat `network` list.
    idx = 0
    stages = len(arch.layers)
    for i in range(stages):
        if on_stage:
            on_stage(i, stages)
        if arch.pos_embs_shapes[i] is not None:
            kh, kw = arch.pos_embs_shapes[i]
            if kh != kw:
                raise ModelError("Non-square positional-encoding kernels are not supported.",
                                 "Use square pos_embs_shapes such as (7, 7).")
            x = ops.conv(x, W.const(f"network.{idx}.reparam_conv.weight", (d[i], 1, kh, kw),
                                    "conv"),
                         W.const(f"network.{idx}.reparam_conv.bias", (d[i],)),
                         stride=1, pad=kh // 2, groups=d[i])
            idx += 1
        for j in range(arch.layers[i]):
            key = f"network.{idx}.{j}"
            if arch.token_mixers[i] == "repmixer":
                x = _repmixer_block(ops, W, x, key, d[i], arch.repmixer_kernel_size,
                                    arch.mlp_ratios[i])
            else:
                x = _attention_block(ops, W, x, key, d[i], arch.mlp_ratios[i])
        idx += 1
        if i == stages - 1:
            break
        if arch.downsamples[i] or d[i] != d[i + 1]:
            k = arch.down_patch_size
            x = ops.conv(x, W.const(f"network.{idx}.proj.0.lkb_reparam.weight",
                                    (d[i + 1], 1, k, k), "conv"),
                         W.const(f"network.{idx}.proj.0.lkb_reparam.bias", (d[i + 1],)),
                         stride=arch.down_stride, pad=k // 2, groups=d[i])
            x = ops.gelu(x)
            x = _mobileone(ops, W, x, f"network.{idx}.proj.1", d[i + 1], d[i + 1], 1, 1, 0, 1)
            idx += 1
    # conv_exp: depthwise-style 3x3 expanding to cls_ratio x channels, with SE.
    x = _mobileone(ops, W, x, "conv_exp", d[-1], arch.feature_width, 3, 1, 1, d[-1], se=True)
    # B x C x H x W -> B x (H*W) x C, as get_input_embeddings does (there in NHWC).
    b, c, *hw = ops.shape(x)
    x = ops.transpose(ops.reshape(x, (b, c, hw[0] * hw[1])), (0, 2, 1), name=output_name)

    leftover = sorted(k for k in weights
                      if k not in W.used and not k.startswith(PREFIX + "head."))
    if leftover:
        raise ModelError(
            f"The vision tower has {len(leftover)} weight(s) the FastViT config does not "
            f"account for (first: '{leftover[0]}').",
            "Use the vision_config the tower was built with, and fuse any adapters first.")
    return x


# --------------------------------------------------------------------------------------------
# numpy backend
# --------------------------------------------------------------------------------------------

# Numerical Recipes' erfc (Chebyshev fit): relative error below 1.2e-7 for every real argument.
_ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def erfc(z: np.ndarray) -> np.ndarray:
    """Complementary error function in float64, relative error < 1.2e-7 (numpy has no erf and
    scipy is not a dependency). Relative accuracy holds in both tails, so GELU built on it is
    accurate to float32 precision everywhere, including its near-zero negative side."""
    z = np.asarray(z, dtype=np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = np.full_like(t, _ERFC_COEFFS[-1])
    for c in _ERFC_COEFFS[-2::-1]:
        poly *= t
        poly += c
    r = t * np.exp(poly - a * a)
    return np.where(z >= 0, r, 2.0 - r)


def erf(z: np.ndarray) -> np.ndarray:
    return 1.0 - erfc(z)


class NumpyOps(Ops):
    """float32 numpy evaluation of the definition (exact-erf GELU, running-stat BatchNorm)."""

    def const(self, name, value):
        return np.asarray(value, dtype=np.float32)

    def shape(self, x):
        return tuple(x.shape)

    def conv(self, x, weight, bias, *, stride, pad, groups, name=None):
        return conv2d_nchw(x, weight, bias, stride=stride, pads=(pad, pad, pad, pad),
                           groups=groups)

    def batch_norm(self, x, mean, var, gamma, beta, *, eps, name=None):
        inv = (1.0 / np.sqrt(var.astype(np.float32) + np.float32(eps))).astype(np.float32)
        r = (1, -1) + (1,) * (x.ndim - 2)
        return ((x - mean.reshape(r)) * inv.reshape(r) * gamma.reshape(r)
                + beta.reshape(r)).astype(np.float32)

    def layer_norm_channels(self, x, gamma, beta, *, eps, name=None):
        u = x.mean(axis=1, keepdims=True)
        s = ((x - u) ** 2).mean(axis=1, keepdims=True)
        r = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - u) / np.sqrt(s + np.float32(eps))
        return (y * gamma.reshape(r) + beta.reshape(r)).astype(np.float32)

    def gelu(self, x, name=None):
        return gelu_exact(x)

    def relu(self, x, name=None):
        return np.maximum(x, np.float32(0))

    def sigmoid(self, x, name=None):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)

    def add(self, x, y, name=None):
        return np.add(x, y, dtype=np.float32)

    def mul(self, x, y, name=None):
        return np.multiply(x, y, dtype=np.float32)

    def scale(self, x, factor, name=None):
        return (x * np.float32(factor)).astype(np.float32)

    def linear(self, x, weight, bias, name=None):
        y = x @ weight.T
        if bias is not None:
            y = y + bias
        return y.astype(np.float32)

    def matmul(self, x, y, *, transpose_y=False, name=None):
        return np.matmul(x, np.swapaxes(y, -1, -2) if transpose_y else y).astype(np.float32)

    def softmax(self, x, *, axis, name=None):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)

    def reshape(self, x, shape, name=None):
        return np.reshape(x, tuple(shape))

    def transpose(self, x, perm, name=None):
        return np.ascontiguousarray(np.transpose(x, tuple(perm)))

    def split(self, x, *, parts, axis, name=None):
        return list(np.split(x, parts, axis=axis))

    def mean_spatial(self, x, name=None):
        return x.mean(axis=(2, 3), keepdims=True, dtype=np.float32)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) = 0.5 x erfc(-x / sqrt 2): mlx.nn.GELU's default (exact, approx='none')."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * erfc(x64 * (-1.0 / math.sqrt(2.0)))).astype(np.float32)


def conv2d_nchw(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, *, stride: int = 1,
                pads: Sequence[int] = (0, 0, 0, 0), groups: int = 1,
                dilation: int = 1) -> np.ndarray:
    """Grouped 2-D cross-correlation. x [N, C, H, W], weight [O, C/g, kH, kW], pads (t, b, l, r)."""
    n, c = x.shape[:2]
    o, cg, kh, kw = weight.shape
    g = groups
    if c != cg * g or o % g:
        raise ValueError(f"conv: input channels {c}, weight {weight.shape}, groups {g}")
    og = o // g
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(pads) else x
    hp, wp = xp.shape[2], xp.shape[3]
    ho = (hp - dilation * (kh - 1) - 1) // stride + 1
    wo = (wp - dilation * (kw - 1) - 1) // stride + 1
    xg = xp.reshape(n, g, cg, hp, wp)
    wg = weight.reshape(g, og, cg, kh, kw).astype(np.float32)
    out = np.zeros((n, g, og, ho, wo), dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation, j * dilation
            s = xg[:, :, :, r0:r0 + stride * (ho - 1) + 1:stride,
                   c0:c0 + stride * (wo - 1) + 1:stride]
            wij = wg[:, :, :, i, j]                                   # g, og, cg
            if cg == 1:
                out += s * wij[None, :, :, 0, None, None]
            else:
                out += np.matmul(wij[None], s.reshape(n, g, cg, ho * wo)).reshape(
                    n, g, og, ho, wo)
    out = out.reshape(n, o, ho, wo)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1).astype(np.float32)
    return out


def evaluate_numpy(images: np.ndarray, weights: Mapping[str, np.ndarray],
                   arch: FastViTArch) -> np.ndarray:
    """Run the definition on the numpy backend: images [N, 3, S, S] -> [N, (S/64)^2, C]."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {images.shape}")
    return define_fastvithd(NumpyOps(), images, weights, arch)
