"""The model and argument classes mlx-lm builds a text model from, for a config dict.

`mlx_lm.load` reads them from a folder; building a model from a config in memory (the offline tiny
models in finetune_app/testing) needs mlx-lm's private `_get_classes`, which maps `model_type`
(and its remapping) to `mlx_lm.models.<module>`.
"""

from __future__ import annotations

import copy

WRITTEN_FOR = {"mlx-lm": "0.32.2"}


def still_needed() -> bool:
    """True while mlx_lm.utils has no public function for it."""
    import mlx_lm.utils as utils

    return hasattr(utils, "_get_classes") and not any(hasattr(utils, n) for n in ("get_classes", "get_model_classes"))


def model_classes(config: dict):
    """(Model class, ModelArgs class) of `config["model_type"]`."""
    from mlx_lm.utils import _get_classes

    return _get_classes(config=copy.deepcopy(config))
