"""mlx-vlm 0.7.10's LLaVA-NeXT (``mlx_vlm.models.llava_next.llava_next.Model``) does not do
LLaVA-NeXT's "anyres" packing. ``get_input_embeddings`` encodes only the first row's tiles
(``pixel_values[0]``), appends newline "tiles" shaped like whole tiles, and
``_merge_input_ids_with_image_features`` puts one whole tile in place of each of the processor's
expanded ``<image>`` tokens: the sequence grows (a tiny model's 40 tokens became 56 positions),
the logits no longer line up with the tokens, and generation sees tiles in the wrong places.

The patch replaces ``get_input_embeddings`` with transformers' ``LlavaNextModel`` packing
(``get_image_features`` + ``pack_image_features``): per image, the base tile's features, then the
grid tiles arranged as one feature map, cropped back to the image's aspect (``unpad_image``), with
``image_newline`` closing each row; the result fills the ``<image>`` positions in order, one
feature per token, which is the count mlx-vlm's own processor expands to. ``__call__`` passes the
processor's ``image_sizes`` on, and ``ModelConfig.from_dict`` keeps config.json's
``image_grid_pinpoints`` (the dataclass drops it; transformers' default when absent). Plain mlx-vlm 0.7.10 runs a LLaVA-NeXT adapter with its broken
merge, so LLaVA-NeXT needs the app's patches at inference.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10"}
MARK = "_finetune_patched"
# transformers' LlavaNextConfig default (the llava-v1.6 checkpoints' own list)
DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def still_needed() -> bool:
    """True while the model encodes pixel_values[0] and merges a tile per image token."""
    import inspect

    from mlx_vlm.models.llava_next.llava_next import Model

    get = getattr(Model.get_input_embeddings, "__wrapped__", Model.get_input_embeddings)
    return "pixel_values[0]" in inspect.getsource(get)


def grid_shape(image_size, pinpoints, tile: int) -> tuple[int, int]:
    """(rows, columns) of tiles the processor cut an image of (height, width) into."""
    from transformers.image_processing_utils import select_best_resolution

    height, width = select_best_resolution([int(image_size[0]), int(image_size[1])], pinpoints)
    return height // tile, width // tile


def unpad(feature, image_size):
    """Crop a [C, H, W] feature map to the image's aspect ratio (transformers' unpad_image)."""
    original_height, original_width = int(image_size[0]), int(image_size[1])
    current_height, current_width = feature.shape[1:]
    if original_width / original_height > current_width / current_height:
        new_height = int(round(original_height * (current_width / original_width), 7))
        pad = (current_height - new_height) // 2
        return feature[:, pad:current_height - pad, :]
    new_width = int(round(original_width * (current_height / original_height), 7))
    pad = (current_width - new_width) // 2
    return feature[:, :, pad:current_width - pad]


def image_features(model, pixel_values, image_sizes):
    """Every image's packed features, [positions, hidden] each, in batch order."""
    import mlx.core as mx

    config = model.config
    tile, patch = config.vision_config.image_size, config.vision_config.patch_size
    pinpoints = getattr(config, "image_grid_pinpoints", None) or DEFAULT_PINPOINTS
    sizes = [tuple(int(x) for x in s) for s in image_sizes.tolist()]
    grids = [grid_shape(s, pinpoints, tile) for s in sizes]
    counts = [rows * cols + 1 for rows, cols in grids]
    pixels = pixel_values if pixel_values.ndim == 5 else pixel_values[None]
    tiles = mx.concatenate([pixels[i, :n] for i, n in enumerate(counts)], axis=0)
    *_, hidden_states = model.vision_tower(tiles.transpose(0, 2, 3, 1), output_hidden_states=True)
    selected = hidden_states[model.vision_feature_layer]
    if model.vision_feature_select_strategy == "default":
        selected = selected[:, 1:]
    features = model.multi_modal_projector(selected)
    side, out, start = tile // patch, [], 0
    newline = model.image_newline
    for (rows, cols), size, n in zip(grids, sizes, counts):
        feats, start = features[start:start + n], start + n
        base, grid = feats[0], feats[1:]
        dim = grid.shape[-1]
        grid = grid.reshape(rows, cols, side, side, dim).transpose(4, 0, 2, 1, 3)
        grid = unpad(grid.reshape(dim, rows * side, cols * side), size)
        lines = mx.broadcast_to(newline[:, None, None], (dim, grid.shape[1], 1)).astype(grid.dtype)
        grid = mx.concatenate([grid, lines], axis=-1).reshape(dim, -1).T
        out.append(mx.concatenate([base, grid], axis=0))
    return out


def _get_input_embeddings(self, input_ids=None, pixel_values=None, **kwargs):
    import mlx.core as mx
    import numpy as np
    from mlx_vlm.models.base import InputEmbeddingsFeatures

    embeds = self.language_model.model.embed_tokens(input_ids)
    if pixel_values is None:
        return InputEmbeddingsFeatures(inputs_embeds=embeds)
    image_sizes = kwargs.get("image_sizes")
    if image_sizes is None:
        raise ValueError("LLaVA-NeXT needs the processor's image_sizes with pixel_values")
    features = mx.concatenate(image_features(self, pixel_values, mx.array(image_sizes)), axis=0)
    rows, cols = np.where(np.array(input_ids) == self.config.image_token_index)
    if len(rows) != features.shape[0]:
        raise ValueError(f"{len(rows)} image tokens but {features.shape[0]} image features: the "
                         "prompt's <image> tokens were not expanded by this model's processor")
    embeds[mx.array(rows), mx.array(cols)] = features.astype(embeds.dtype)
    return InputEmbeddingsFeatures(inputs_embeds=embeds)


def _call(self, input_ids, pixel_values=None, mask=None, cache=None, **kwargs):
    embeds = self.get_input_embeddings(input_ids, pixel_values, **kwargs).inputs_embeds
    return self.language_model(input_ids, cache=cache, inputs_embeds=embeds)


def apply() -> None:
    import functools

    from mlx_vlm.models.llava_next.config import ModelConfig
    from mlx_vlm.models.llava_next.llava_next import Model

    if getattr(Model.get_input_embeddings, MARK, False):
        return
    original_from_dict = ModelConfig.from_dict.__func__

    def from_dict(klass, params):
        config = original_from_dict(klass, params)
        if params and params.get("image_grid_pinpoints"):
            config.image_grid_pinpoints = [list(p) for p in params["image_grid_pinpoints"]]
        return config

    get = functools.wraps(Model.get_input_embeddings)(_get_input_embeddings)
    call = functools.wraps(Model.__call__)(_call)
    for f in (get, call, from_dict):
        setattr(f, MARK, True)
    ModelConfig.from_dict = classmethod(from_dict)
    Model.get_input_embeddings, Model.__call__ = get, call
