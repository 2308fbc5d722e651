"""transformers imports a model folder's own ``.py`` files when a config names them in
``auto_map`` and the caller passes ``trust_remote_code=True``, and mlx-vlm 0.7.10 does exactly that
for its own families (``install_auto_processor_patch`` in ``mlx_vlm.models.base`` does
``kwargs.setdefault("trust_remote_code", True)`` around ``AutoProcessor.from_pretrained``).

The model loader refuses such folders before any library reads them
(``finetune_app.core.model_folder``); this patch is the second wall: it forces
``resolve_trust_remote_code`` to answer False (never the interactive prompt) and makes
transformers' two steps of running folder code (``get_cached_module_file`` copies it into the
modules cache, ``get_class_in_module`` executes it) raise a ModelError instead, in
``transformers.dynamic_module_utils`` and in every transformers module that already imported
them by name.
"""

from __future__ import annotations

import sys

WRITTEN_FOR = {"transformers": "5.25.0", "mlx-vlm": "0.7.10"}
MARK = "_finetune_patched"
NAMES = ("get_cached_module_file", "get_class_in_module", "resolve_trust_remote_code")


def still_needed() -> bool:
    """True while mlx-vlm asks transformers to trust a processor's folder code by default."""
    import inspect

    from mlx_vlm.models import base

    return 'setdefault("trust_remote_code", True)' in inspect.getsource(base)


def _refuse_folder_code(what):
    def refuse(*args, **kwargs):
        from finetune_app.core.errors import ModelError

        source = next((str(a) for a in args if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__")), "the model")
        raise ModelError(f"Loading '{source}' would run Python code shipped with the model ({what}); it was refused.",
                         "Finetune never runs code from a model folder; use a model that mlx-vlm or mlx-lm support "
                         "natively, without auto_map / model_file entries or .py files.")

    setattr(refuse, MARK, True)
    return refuse


def _never_trust(original):
    def resolve_trust_remote_code(trust_remote_code, model_name, has_local_code, has_remote_code, *args, **kwargs):
        return original(False, model_name, has_local_code, has_remote_code, *args, **kwargs)

    setattr(resolve_trust_remote_code, MARK, True)
    return resolve_trust_remote_code


def apply() -> None:
    from transformers import dynamic_module_utils as dmu

    makers = {"get_cached_module_file": lambda f: _refuse_folder_code("copying it into the modules cache"),
              "get_class_in_module": lambda f: _refuse_folder_code("importing it"),
              "resolve_trust_remote_code": _never_trust}
    replacements = {}
    for name in NAMES:
        original = getattr(dmu, name)
        if not getattr(original, MARK, False):
            replacements[original] = makers[name](original)
    for module in list(sys.modules.values()):  # also where transformers imported them by name
        if not getattr(module, "__name__", "").startswith("transformers"):
            continue
        for attr in NAMES:
            try:
                current = module.__dict__.get(attr)  # not getattr: transformers' lazy modules import on access
            except Exception:  # noqa: BLE001 - an odd module object: nothing of ours to replace
                continue
            if current is not None and current in replacements:
                setattr(module, attr, replacements[current])
