"""mlx-vlm 0.7.10's ``LlavaProcessor.__call__`` (``mlx_vlm.models.llava.processing_llava``) hands
*all* its keyword arguments to the image processor as well as to the tokenizer. Its callers pass
text options (``padding``, ``add_special_tokens``, ...: ``mlx_vlm.utils.prepare_inputs`` always
passes ``padding``), and transformers 5's image processors validate their options, so every LLaVA
prompt with an image fails with "ImagesKwargs.__init__() got an unexpected keyword argument
'padding'", in generation as in training.

The patch is the library's own ``__call__`` with the options split: the image processor gets the
ones it declares (``valid_kwargs``), the tokenizer the others. Token ids and pixels are what the
library meant, so an adapter trained with the patch matches inference with it; a user running a
LLaVA adapter in plain mlx-vlm 0.7.10 cannot run LLaVA with images at all.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10", "transformers": "5.25.0"}
MARK = "_finetune_patched"


def still_needed() -> bool:
    """True while the processor passes every option to the image processor."""
    import inspect

    from mlx_vlm.models.llava.processing_llava import LlavaProcessor

    call = getattr(LlavaProcessor.__call__, "__wrapped__", LlavaProcessor.__call__)
    return "self.image_processor(images, **kwargs)" in inspect.getsource(call)


def image_options(image_processor) -> frozenset[str] | None:
    """The options an image processor accepts (None: it does not say, so it gets them all)."""
    valid = getattr(image_processor, "valid_kwargs", None)
    keys = getattr(valid, "__annotations__", None)
    return frozenset(keys) if keys else None


def _call(self, images=None, text=None, **kwargs):
    from mlx_vlm.models.base import to_mlx
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.image_utils import get_image_size, to_numpy_array

    if images is None and text is None:
        raise ValueError("You have to specify at least one of `images` or `text`.")
    kwargs.pop("return_tensors", None)
    accepted = image_options(self.image_processor)
    image_kwargs = {k: v for k, v in kwargs.items() if accepted is None or k in accepted}
    text_kwargs = {k: v for k, v in kwargs.items() if accepted is None or k not in accepted}
    image_inputs = self.image_processor(images, **image_kwargs) if images is not None else {}
    if isinstance(text, str):
        text = [text]
    elif not isinstance(text, list) and not isinstance(text[0], str):
        raise TypeError("Invalid input text. Please provide a string, or a list of strings")
    prompts = text
    if image_inputs.get("pixel_values") is not None:
        height, width = get_image_size(to_numpy_array(image_inputs["pixel_values"][0]))
        n = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            n -= 1
        prompts = [sample.replace(self.image_token, self.image_token * n) for sample in text]
    text_inputs = self.tokenizer(prompts, **text_kwargs, return_tensors=None)
    return BatchFeature(data=to_mlx({**text_inputs, **image_inputs}))


def apply() -> None:
    import functools

    from mlx_vlm.models.llava.processing_llava import LlavaProcessor

    original = LlavaProcessor.__call__
    if getattr(original, MARK, False):
        return
    call = functools.wraps(original)(_call)
    setattr(call, MARK, True)
    LlavaProcessor.__call__ = call
