"""mlx-vlm 0.7.10's Phi-3-Vision tower (``mlx_vlm.models.phi3_v.vision.VisionModel``) is built from
the class constant ``CLIP_VIT_LARGE_PATCH14_336_CONFIG`` (CLIP ViT-L/14-336: width 1024, 24
layers, 303M parameters) and ``image_dim_out = 1024``, whatever ``vision_config`` says; the real
checkpoints carry no tower sizes at all (their ``img_processor`` just names the CLIP model).

The patch builds the same tower with the width, depth, heads and MLP size of the model's
``vision_config`` (mlx-vlm's ``VisionConfig``, whose defaults *are* CLIP ViT-L/14-336, so a real
Phi-3-Vision builds exactly as before). It is what lets a tiny random Phi-3-Vision exist for the
tests. The 336 px tiles, 14 px patches and 12x12 merged grid stay hard-coded in the library's
forward, so the patch does not read ``image_size`` or ``patch_size``. A folder whose
``vision_config`` names a smaller tower needs the patch to load anywhere (plain mlx-vlm fails
on the weight shapes).
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10"}
MARK = "_finetune_patched"
SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "layer_norm_eps")


def still_needed() -> bool:
    """True while the tower ignores vision_config and builds the fixed CLIP ViT-L/14-336."""
    import inspect

    from mlx_vlm.models.phi3_v.vision import VisionModel

    init = getattr(VisionModel.__init__, "__wrapped__", VisionModel.__init__)
    return "ClipVModel(self.CLIP_VIT_LARGE_PATCH14_336_CONFIG)" in inspect.getsource(init)


def tower_config(config):
    """The CLIP constant with the sizes of `config.vision_config` (a VisionConfig or a dict)."""
    from types import SimpleNamespace

    from mlx_vlm.models.phi3_v.vision import VisionModel

    vision = getattr(config, "vision_config", None) or {}
    get = vision.get if isinstance(vision, dict) else (lambda k, d=None: getattr(vision, k, d))
    base = vars(VisionModel.CLIP_VIT_LARGE_PATCH14_336_CONFIG)
    return SimpleNamespace(**{**base, **{k: get(k) for k in SIZES if get(k) is not None}})


def apply() -> None:
    import functools

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_vlm.models.phi3_v.vision import ClipVModel, VisionModel

    original = VisionModel.__init__
    if getattr(original, MARK, False):
        return

    @functools.wraps(original)
    def __init__(self, config):
        nn.Module.__init__(self)
        tower = tower_config(config)
        self.model_type = config.model_type
        self.img_processor = ClipVModel(tower)
        self.image_dim_out = dim = tower.hidden_size
        self.glb_GN = mx.zeros([1, 1, dim * 4])
        self.sub_GN = mx.zeros([1, 1, 1, dim * 4])
        self.img_projection = [nn.Linear(dim * 4, config.hidden_size), nn.GELU(),
                               nn.Linear(config.hidden_size, config.hidden_size)]

    setattr(__init__, MARK, True)
    VisionModel.__init__ = __init__
