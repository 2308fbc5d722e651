"""mlx-vlm 0.7.10 declares the FastViTHD tower's architecture (``layers``, ``embed_dims``,
``mlp_ratios``, ``downsamples``, ``pos_embs_shapes``, ``token_mixers``, ...) as *class attributes*
of ``mlx_vlm.models.fastvlm.config.VisionConfig``, not dataclass fields, so ``from_dict`` drops them
and every FastVLM gets the full 125M-parameter FastViTHD tower whatever config.json says.

The patch makes ``from_dict`` set those keys on the instance when ``vision_config`` carries them
(the same keys mlx-swift-lm's MLXVLM reads). A real FastVLM config without them keeps mlx-vlm's
defaults. We deliberately do not use mlx-vlm's ``model_file`` mechanism instead: it executes
Python from the model folder, and the app refuses remote code.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10"}

# Architecture keys of FastViTHD that mlx-vlm keeps as class attributes (or that mlx-swift-lm reads).
FASTVLM_VISION_KEYS = (
    "cls_ratio", "down_patch_size", "down_stride", "downsamples", "embed_dims", "hidden_size",
    "image_size", "intermediate_size", "layers", "layer_scale_init_value", "mlp_ratios",
    "num_classes", "patch_size", "pos_embs_shapes", "projection_dim", "repmixer_kernel_size",
    "token_mixers",
)
MARK = "_finetune_patched"  # set on our replacement, so applying twice is harmless


def still_needed() -> bool:
    """True while VisionConfig keeps the architecture out of its dataclass fields."""
    import dataclasses

    from mlx_vlm.models.fastvlm.config import VisionConfig

    fields = {f.name for f in dataclasses.fields(VisionConfig)}
    return not {"layers", "embed_dims", "token_mixers"} <= fields


def _normalise(key: str, value):
    """JSON has no tuples: give the tower the shapes its builder expects."""
    if key == "pos_embs_shapes" and value is not None:
        return [tuple(s) if isinstance(s, (list, tuple)) else s for s in value]
    if key == "token_mixers" and value is not None:
        return tuple(value)
    if key in ("layers", "embed_dims", "mlp_ratios", "downsamples") and value is not None:
        return list(value)
    return value


def apply() -> None:
    from mlx_vlm.models.fastvlm import config as fastvlm_config

    cls = fastvlm_config.VisionConfig
    if getattr(cls.from_dict, MARK, False):
        return
    original = cls.from_dict.__func__

    def from_dict(klass, params):
        instance = original(klass, params)
        for key in FASTVLM_VISION_KEYS:
            if params and key in params:
                setattr(instance, key, _normalise(key, params[key]))
        return instance

    setattr(from_dict, MARK, True)
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
