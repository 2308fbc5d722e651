"""Quantize a fused floating-point model for export (4 or 8 bits, affine, selectable group size).

Which layers: every Linear and Embedding of the language model and the vision-language projector
(as `mlx_vlm convert -q` does), and the vision tower only when asked. A layer is quantized only if
the loaders on the other side will quantize it too: its input width divides by the group size and
its weight has a multiple of 64 elements (mlx-vlm's and mlx-lm's loaders skip other layers,
then fail on their `.scales`). Each quantized layer gets `<path>.scales` and `<path>.biases`, which
is also how mlx-swift recognises them, and config.json gets `"quantization": {"group_size",
"bits"}` (no "mode" key: mlx-swift-examples 2.21 rejects unknown keys in that object).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx import nn

from finetune_app.core.adapters import VISION_NAMES
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


def is_vision_path(path: str) -> bool:
    return path.split(".")[0] in VISION_NAMES


def can_quantize(path: str, module: nn.Module, settings: QuantizeSettings) -> bool:
    if not isinstance(module, (nn.Linear, nn.Embedding)) or not hasattr(module, "to_quantized"):
        return False
    if is_vision_path(path) and not settings.quantize_vision:
        return False
    weight = module.weight
    return weight.ndim == 2 and weight.shape[-1] % settings.group_size == 0 and weight.size % 64 == 0


def quantize_model(model: nn.Module, settings: QuantizeSettings) -> list[str]:
    """Quantize `model` in place; return the paths of the quantized layers."""
    settings.check()
    chosen = [path for path, m in model.named_modules() if can_quantize(path, m, settings)]
    if not chosen:
        raise ConfigError(f"No layer of this model can be quantized with group size {settings.group_size}.",
                          "Choose a smaller group size (32), or export in full precision.", field="group_size")
    wanted = set(chosen)
    nn.quantize(model, group_size=settings.group_size, bits=settings.bits,
                class_predicate=lambda path, m: path in wanted)
    mx.eval(model.parameters())
    return chosen


def quantized_size(n_params: int, settings: QuantizeSettings, dtype_bytes: int = 2) -> int:
    """Bytes of `n_params` weights quantized: packed values plus a scale and bias per group."""
    per_group = 2 * dtype_bytes
    return int(n_params * settings.bits / 8 + n_params / settings.group_size * per_group)
