"""Quantize a fused floating-point model for export (4 or 8 bits, affine, selectable group size),
with the libraries' own helpers: mlx-vlm's `quantize_model` (what `mlx_vlm convert -q` runs: every
layer that can be quantized and whose input width divides by the group size) with mlx-vlm's
loader predicate (`get_class_predicate`: multimodal parts (tower, projectors named like
`multi_modal_projector`) only when asked, and only weights of a multiple of 64 elements, the ones
mlx-vlm's loader quantizes back). Each quantized layer gets `<path>.scales` and `<path>.biases`,
which is also how mlx-swift recognises them, and config.json gets `"quantization": {"group_size",
"bits"}` (no "mode" key: mlx-swift-examples 2.21 rejects unknown keys in that object).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import mlx.core as mx
from mlx import nn

from finetune_app.core.errors import ConfigError

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantizeSettings:
    bits: int
    group_size: int = 64
    quantize_vision: bool = False

    def check(self) -> QuantizeSettings:
        if self.bits not in BITS:
            raise ConfigError(f"Cannot quantize to {self.bits} bits.", "Choose 4 or 8 bits.", field="quantize")
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(f"Group size {self.group_size} is not supported.", "Choose 32, 64 or 128.", field="group_size")
        return self

    def config_entry(self) -> dict:
        return {"group_size": self.group_size, "bits": self.bits}

    def describe(self) -> str:
        vision = ", vision tower too" if self.quantize_vision else ""
        return f"{self.bits}-bit, group size {self.group_size}{vision}"


def quantized_layers(model: nn.Module) -> list[str]:
    return [path for path, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]


def quantize_model(model: nn.Module, settings: QuantizeSettings) -> list[str]:
    """Quantize `model` in place; return the paths of the quantized layers."""
    from mlx_vlm.quant_utils import quantize_model as library_quantize
    from mlx_vlm.utils import get_class_predicate

    settings.check()
    before = set(quantized_layers(model))
    loadable = get_class_predicate(skip_vision=not settings.quantize_vision)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the bits per weight on stdout
        library_quantize(model, {}, settings.group_size, settings.bits, quant_predicate=loadable)
    chosen = [p for p in quantized_layers(model) if p not in before]
    if not chosen:
        raise ConfigError(f"No layer of this model can be quantized with group size {settings.group_size}.",
                          "Choose a smaller group size (32), or export in full precision.", field="group_size")
    mx.eval(model.parameters())
    return chosen
