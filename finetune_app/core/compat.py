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

* ``no_remote_code``: transformers imports a model folder's own ``.py`` files when a config names
  them in ``auto_map`` and the caller passes ``trust_remote_code=True``, and mlx-vlm 0.7.10 does
  exactly that for its own families (``install_auto_processor_patch`` in ``mlx_vlm.models.base``
  does ``kwargs.setdefault("trust_remote_code", True)`` around ``AutoProcessor.from_pretrained``).
  The model loader refuses such folders before any library reads them
  (``finetune_app.core.model_folder``); this patch is the second wall: it forces
  ``resolve_trust_remote_code`` to answer False (never the interactive prompt) and makes
  transformers' two steps of running folder code (``get_cached_module_file`` copies it into the
  modules cache, ``get_class_in_module`` executes it) raise a ModelError instead, in
  ``transformers.dynamic_module_utils`` and in every transformers module that already imported
  them by name.
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


def _refuse_folder_code(what):
    def refuse(*args, **kwargs):
        from finetune_app.core.errors import ModelError

        source = next((str(a) for a in args if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__")), "the model")
        raise ModelError(f"Loading '{source}' would run Python code shipped with the model ({what}); it was refused.",
                         "Finetune never runs code from a model folder; use a model that mlx-vlm or mlx-lm support "
                         "natively, without auto_map / model_file entries or .py files.")

    refuse._finetune_patched = True  # type: ignore[attr-defined]
    return refuse


def _never_trust(original):
    def resolve_trust_remote_code(trust_remote_code, model_name, has_local_code, has_remote_code, *args, **kwargs):
        return original(False, model_name, has_local_code, has_remote_code, *args, **kwargs)

    resolve_trust_remote_code._finetune_patched = True  # type: ignore[attr-defined]
    return resolve_trust_remote_code


def _patch_no_remote_code() -> None:
    import sys

    from transformers import dynamic_module_utils as dmu

    replacements = {}
    for name, make in (("get_cached_module_file", lambda f: _refuse_folder_code("copying it into the modules cache")),
                       ("get_class_in_module", lambda f: _refuse_folder_code("importing it")),
                       ("resolve_trust_remote_code", _never_trust)):
        original = getattr(dmu, name)
        if not getattr(original, "_finetune_patched", False):
            replacements[original] = make(original)
    for module in list(sys.modules.values()):  # also where transformers imported them by name
        if not getattr(module, "__name__", "").startswith("transformers"):
            continue
        for attr in ("get_cached_module_file", "get_class_in_module", "resolve_trust_remote_code"):
            try:
                current = module.__dict__.get(attr)  # not getattr: transformers' lazy modules import on access
            except Exception:  # noqa: BLE001 - an odd module object: nothing of ours to replace
                continue
            if current is not None and current in replacements:
                setattr(module, attr, replacements[current])


_PATCHES = {
    "fastvlm_vision_config": _patch_fastvlm_vision_config,
    "no_remote_code": _patch_no_remote_code,
}


def apply(only: tuple[str, ...] | None = None) -> None:
    """Apply every patch (or the named ones) once per process (safe to call repeatedly and from
    several threads)."""
    with _lock:
        for name, patch in _PATCHES.items():
            if name not in _applied and (only is None or name in only):
                patch()
                _applied.add(name)


def applied() -> frozenset[str]:
    """Names of the patches applied in this process (for diagnostics and tests)."""
    return frozenset(_applied)
