"""Small, documented patches the app applies to the MLX libraries it pins.

Each patch fixes one measured gap in a pinned library version, is applied by `apply()` (idempotent,
called by the model loader and the tiny-model builder, never at package import), and leaves the
library's behaviour unchanged for inputs it already handled.

Patches:

* ``fastvlm_vision_config``: mlx-vlm 0.7.10 declares the FastViTHD tower's architecture
  (``layers``, ``embed_dims``, ``mlp_ratios``, ``downsamples``, ``pos_embs_shapes``,
  ``token_mixers``, ...) as *class attributes* of ``mlx_vlm.models.fastvlm.config.VisionConfig``,
  not dataclass fields, so ``VisionConfig.from_dict`` drops them and every FastVLM gets the full
  125M-parameter FastViTHD tower whatever config.json says. The patch makes ``from_dict`` set those
  keys on the instance when ``vision_config`` carries them (the same keys mlx-swift-lm's MLXVLM
  reads). A real FastVLM config without them keeps mlx-vlm's defaults. We deliberately do not use
  mlx-vlm's ``model_file`` mechanism instead: it executes Python from the model folder, and the
  app refuses remote code.
"""

from __future__ import annotations

import threading

# Architecture keys of FastViTHD that mlx-vlm keeps as class attributes (or that mlx-swift-lm reads).
FASTVLM_VISION_KEYS = (
    "cls_ratio", "down_patch_size", "down_stride", "downsamples", "embed_dims", "hidden_size",
    "image_size", "intermediate_size", "layers", "layer_scale_init_value", "mlp_ratios",
    "num_classes", "patch_size", "pos_embs_shapes", "projection_dim", "repmixer_kernel_size",
    "token_mixers",
)

_lock = threading.Lock()
_applied: set[str] = set()


def _normalise_fastvlm_value(key: str, value):
    """JSON has no tuples: give the tower the shapes its builder expects."""
    if key == "pos_embs_shapes" and value is not None:
        return [tuple(s) if isinstance(s, (list, tuple)) else s for s in value]
    if key == "token_mixers" and value is not None:
        return tuple(value)
    if key in ("layers", "embed_dims", "mlp_ratios", "downsamples") and value is not None:
        return list(value)
    return value


def _patch_fastvlm_vision_config() -> None:
    from mlx_vlm.models.fastvlm import config as fastvlm_config

    cls = fastvlm_config.VisionConfig
    if getattr(cls.from_dict, "_finetune_patched", False):
        return
    original = cls.from_dict.__func__

    def from_dict(klass, params):
        instance = original(klass, params)
        for key in FASTVLM_VISION_KEYS:
            if params and key in params:
                setattr(instance, key, _normalise_fastvlm_value(key, params[key]))
        return instance

    from_dict._finetune_patched = True  # type: ignore[attr-defined]
    cls.from_dict = classmethod(from_dict)


def fastvlm_vision_dict(vision_config) -> dict:
    """Every FastViTHD architecture key of a (possibly patched) VisionConfig, as JSON values.

    mlx-vlm's dataclass `to_dict` drops class attributes; use this to write them back."""
    out = {}
    for key in FASTVLM_VISION_KEYS:
        value = getattr(vision_config, key)
        if isinstance(value, tuple):
            value = list(value)
        if key == "pos_embs_shapes" and value is not None:
            value = [list(s) if isinstance(s, (list, tuple)) else s for s in value]
        out[key] = value
    return out


_PATCHES = {
    "fastvlm_vision_config": _patch_fastvlm_vision_config,
}


def apply() -> None:
    """Apply every patch once per process (safe to call repeatedly and from several threads)."""
    with _lock:
        for name, patch in _PATCHES.items():
            if name not in _applied:
                patch()
                _applied.add(name)


def applied() -> frozenset[str]:
    """Names of the patches applied in this process (for diagnostics and tests)."""
    return frozenset(_applied)
