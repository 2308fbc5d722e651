"""mlx-vlm 0.7.10's DeepSeek-VL2 ``Model.get_input_embeddings`` counts each row's tiles with
``for jdx in range(pixel_values.shape[1])`` over ``images_spatial_crop[idx][jdx]``, but
``pixel_values.shape[1]`` is the number of *tiles* (global + local views, at least 2 per image)
while ``images_spatial_crop`` has one entry per *image*. It reads past the end of the crop
array; MLX does not bounds-check, so the count depends on whatever memory follows, and a row
may hand the tower too few tiles ("[reshape] Cannot reshape array of size 0 into shape
(1,1,1,1,64)" in ``process_image_features``), at random, in training and in generation alike.
DeepSeek's own code loops over ``images_spatial_crop.shape[1]``.

The patch pads ``images_spatial_crop`` with zero rows up to ``pixel_values.shape[1]`` before
the library's method runs: a zero entry is the library's own "no more images" marker, so every
read is in bounds and the result is what the library meant.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10"}
MARK = "_finetune_patched"


def still_needed() -> bool:
    """True while the tile count loops over pixel_values' tile axis."""
    import inspect

    from mlx_vlm.models.deepseek_vl_v2.deepseek_vl_v2 import Model

    source = inspect.getsource(getattr(Model.get_input_embeddings, "__wrapped__", Model.get_input_embeddings))
    return "max_n_images = pixel_values.shape[1]" in source


def pad_crops(pixel_values, images_spatial_crop):
    """images_spatial_crop [B, N, 2] padded with zeros to [B, max(N, tiles), 2]."""
    import mlx.core as mx

    if pixel_values is None or images_spatial_crop is None:
        return images_spatial_crop
    crop = mx.array(images_spatial_crop)
    missing = pixel_values.shape[1] - crop.shape[1]
    if missing <= 0:
        return crop
    return mx.concatenate([crop, mx.zeros((crop.shape[0], missing, crop.shape[2]), dtype=crop.dtype)], axis=1)


def apply() -> None:
    import functools

    from mlx_vlm.models.deepseek_vl_v2.deepseek_vl_v2 import Model

    original = Model.get_input_embeddings
    if getattr(original, MARK, False):
        return

    @functools.wraps(original)
    def get_input_embeddings(self, input_ids=None, pixel_values=None, images_spatial_crop=None,
                             images_seq_mask=None, **kwargs):
        return original(self, input_ids, pixel_values, pad_crops(pixel_values, images_spatial_crop),
                        images_seq_mask, **kwargs)

    setattr(get_input_embeddings, MARK, True)
    Model.get_input_embeddings = get_input_embeddings
