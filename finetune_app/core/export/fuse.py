"""Merge a saved LoRA / DoRA adapter (or a full fine-tune) into its base model.

The adapter is applied with the libraries' own loaders (`adapters.load_into`), so what is fused is
exactly what `mlx_vlm.load(base, adapter_path=...)` / `mlx_lm.load(...)` run. Each adapter layer is
then replaced by the library's own `fuse(dequantize=True)`: on a quantized (QLoRA) base the merged
weight stays in floating point. (Without `dequantize=True` the libraries re-quantize the merged
weight, which moves the logits by more than 1 on the tiny models and breaks a strict reload:
shared/reference/mlx-findings.md.) Every other quantized layer of a QLoRA base is dequantized as
well, so the fused model is one floating-point model that computes what base+adapter computed;
quantize.py re-quantizes it only when the user asks for a quantized export.

A full fine-tune ("fine_tune_type": "full") is not an adapter: its weights file holds every
weight, and loading it is the whole "fuse".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_unflatten

from finetune_app.core import adapters
from finetune_app.core.errors import AdapterError
from finetune_app.core.models import BaseModel


@dataclass(frozen=True)
class FuseReport:
    fine_tune_type: str
    fused_layers: int
    dequantized_layers: int

    def summary(self) -> str:
        if self.fine_tune_type == "full":
            return "full fine-tune: weights loaded as saved"
        name = {"lora": "LoRA", "dora": "DoRA"}.get(self.fine_tune_type, self.fine_tune_type)
        text = f"{self.fused_layers} {name} layers merged into the base"
        if self.dequantized_layers:
            text += f", {self.dequantized_layers} quantized base layers dequantized"
        return text


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}


def restore_base_quantization(model: nn.Module, base_quantization: dict) -> int:
    """Quantize exactly the layers a QLoRA run quantized (adapter_config `base_quantization`).

    mlx-vlm's adapter loader does this itself; mlx-lm's does not (it expects an already quantized
    base), so text QLoRA adapters need it before they are applied. Returns the layers quantized."""
    modules = dict(model.named_modules())
    pending = {}
    for name, params in (base_quantization or {}).items():
        layer = modules.get(name)
        if isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            continue
        if not isinstance(layer, (nn.Linear, nn.Embedding)):
            raise AdapterError(f"The adapter's base_quantization names a layer '{name}' that this base model does not have.",
                               "Use the base model the adapter was trained on.")
        pending[name] = {"group_size": int(params["group_size"]), "bits": int(params["bits"]),
                         "mode": params.get("mode", "affine")}
    if pending:
        nn.quantize(model, class_predicate=lambda path, _: pending.get(path, False))
    return len(pending)


def apply_adapter(base: BaseModel, adapter_dir: str | Path) -> dict:
    """Put the saved adapter onto a freshly loaded base, as the libraries' loaders would (plus
    the QLoRA base quantization for text adapters). Returns adapter_config."""
    config = adapters.read_config(adapter_dir)
    if base.kind == "text" and config.get("fine_tune_type", "lora") != "full" and config.get("base_quantization"):
        restore_base_quantization(base.model, config["base_quantization"])
    return adapters.load_into(base, adapter_dir)


def dequantize(model: nn.Module) -> int:
    """Replace every quantized layer by its floating-point equivalent (mlx-vlm's
    `dequantize_model`); returns how many linear/embedding layers were quantized."""
    from mlx_vlm.quant_utils import dequantize_model

    n = len(quantized_layers(model))
    dequantize_model(model)
    return n


def fuse(model: nn.Module, fine_tune_type: str = "lora") -> FuseReport:
    """Merge every adapter layer in place (in floating point) and dequantize the rest."""
    replacements = []
    for name, layer in model.named_modules():
        if adapters.is_adapter_layer(layer) or (hasattr(layer, "fuse") and hasattr(layer, "lora_a")):
            replacements.append((name, layer.fuse(dequantize=True)))
    if replacements:
        model.update_modules(tree_unflatten(replacements))
    left = [n for n, m in model.named_modules() if hasattr(m, "lora_a")]
    if left:
        raise AdapterError(f"Some adapter layers could not be merged: {', '.join(left[:3])}.",
                           "Export the adapter on its own (target 'adapter') instead.")
    n_deq = dequantize(model)
    model.freeze()
    model.eval()
    mx.eval(model.parameters())
    return FuseReport(fine_tune_type=fine_tune_type, fused_layers=len(replacements), dequantized_layers=n_deq)


def fuse_adapter(base: BaseModel, adapter_dir: str | Path) -> tuple[dict, FuseReport]:
    """apply_adapter + fuse: `base.model` becomes the merged floating-point model."""
    config = apply_adapter(base, adapter_dir)
    report = fuse(base.model, config.get("fine_tune_type", "lora"))
    return config, report
