"""mlx-swift-lm (MLXVLM / MLXLLM, ml-explore/mlx-swift-examples): the prompt and pixels its own
processors build.

Transcribed from ml-explore/mlx-swift-examples, newest stored version of each file:
Libraries/MLXVLM/Models/Qwen2VL.swift @fd11b387, Qwen25VL.swift @881ad5a1, Qwen3VL.swift @9b6c0315,
QwenVL.swift @7de86841 (ml-explore/mlx-swift-lm cee7f38e has the same Qwen2VL code).
* Messages (`generate(from: UserInput)`: a `.text` prompt is one user message, a `.chat` prompt
  message by message; each message carries its own images):
  `Qwen2VLMessageGenerator` (used by Qwen2VLProcessor and Qwen25VLProcessor): content =
  `[{"type": "text", "text": content}] + [{"type": "image"}] * images`: the image AFTER the text
  (mlx-vlm puts a Qwen2.5-VL image first). `Qwen3VLMessageGenerator`: images, videos, then the text:
  the image FIRST. Stored versions agree on this per family (forks' newer Qwen2VL generators put the
  image first; ml-explore's stored ones do not).
* `prepare(input:)`: `tokenizer.applyChatTemplate(messages:)` (swift-transformers: the tokenizer's own
  Jinja chat template, add_generation_prompt true, then `encode(text: rendered, addSpecialTokens:
  false)`), then `QwenVL.replacePaddingTokens`: each `<|vision_start|><|image_pad|><|vision_end|>`
  becomes `<|vision_start|>` + `<|image_pad|>` x frame.product / mergeSize² + `<|vision_end|>`.
* `preprocess(images:processing:)`: `QwenVL.targetSize(height, width, factor: patchSize *
  mergeSize, minPixels, maxPixels)` (round to the factor with Swift's half-away-from-zero round;
  above max_pixels scale by beta and floor, below min_pixels scale and ceil), then (Qwen2/2.5-VL
  only) the sRGB tone curve, bicubic resample to that size, normalise with image_mean / image_std,
  `QwenVL.patchify` (one image repeated to temporal_patch_size; patches in (t, h/m, w/m, m, m, c,
  tp, p, p) order, as HF's processor). min/max pixels come from preprocessor_config.json as each
  processor configuration decodes them (see PIXEL_LIMITS).
Not reproducible here exactly: Core Image's bicubic kernel and its tone-curve colour handling; PIL
bicubic on the sRGB bytes is the closest and differs in the last digits. The token layout (the
text, the image's place and its pad count) is exact.

MLXLLM (text models) is the same minus images: `LLMUserInputProcessor` hands `DefaultMessageGenerator`
messages (`{"role", "content": text}`) to the same swift-transformers `applyChatTemplate`, which is
what mlx-lm does (`apply_chat_template(tokenize=False)` + `encode(add_special_tokens=False)`); the
only difference is the Jinja engine (swift-jinja, not Python's jinja2) running the same template.
"""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from finetune_app.core.data.sample import Sample
from finetune_app.core.errors import DataError
from finetune_app.core.serving import mlx_lm
from finetune_app.core.serving.placement import span, turn_images

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_FIRST = {"qwen2_vl": False, "qwen2_5_vl": False, "qwen3_vl": True}  # the message generators


def pixel_limits(model_type: str, pre: dict) -> tuple[int, int]:
    """(min, max) pixels as each processor configuration decodes preprocessor_config.json:
    Qwen2VL `_minPixels ?? _size?.minPixels ?? 3136` (size holds min_pixels / max_pixels keys),
    Qwen25VL the top-level keys (required), Qwen3VL the top-level keys or 3136 / 12845056
    (it ignores HF's `size` {shortest_edge, longest_edge})."""
    size = pre.get("size") if model_type == "qwen2_vl" and isinstance(pre.get("size"), dict) else {}
    lo = pre.get("min_pixels", size.get("min_pixels", 3136))
    hi = pre.get("max_pixels", size.get("max_pixels", 12_845_056))
    return int(lo), int(hi)


def swift_round(x: float) -> int:
    """Swift's `round` (half away from zero), not Python's banker's rounding."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def target_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """`QwenVL.targetSize` (Float arithmetic as in Swift)."""
    if height < factor or width < factor:
        raise ValueError(f"image {width}x{height} is smaller than {factor} px")
    if max(height, width) // min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200: {width}x{height}")
    f = np.float32
    h_bar = max(factor, swift_round(float(f(height) / f(factor))) * factor)
    w_bar = max(factor, swift_round(float(f(width) / f(factor))) * factor)
    if h_bar * w_bar > max_pixels:
        beta = np.sqrt(f(height * width) / f(max_pixels), dtype=f)
        h_bar = int(math.floor(f(height) / beta / f(factor))) * factor
        w_bar = int(math.floor(f(width) / beta / f(factor))) * factor
    elif h_bar * w_bar < min_pixels:
        beta = np.sqrt(f(min_pixels) / f(height * width), dtype=f)
        h_bar = int(math.ceil(f(height) * beta / f(factor))) * factor
        w_bar = int(math.ceil(f(width) * beta / f(factor))) * factor
    if h_bar <= 0 or w_bar <= 0:
        raise ValueError(f"invalid target size {w_bar}x{h_bar}")
    return h_bar, w_bar


class TextLayout(mlx_lm.Layout):
    """MLXLLM: the tokenizer's chat template, as mlx-lm (see the module docstring)."""
    name = "mlx-swift-lm"


class VisionLayout:
    name = "mlx-swift-lm"
    library_inputs = False  # generation is given this layout's ids and pixels (MLXVLM's, not mlx-vlm's)

    def __init__(self, base):
        self.base = base
        mt = base.model_type
        ip = base.processor.image_processor
        self.patch, self.merge = int(ip.patch_size), int(ip.merge_size)
        self.temporal = int(ip.temporal_patch_size)
        path = base.path / "preprocessor_config.json"
        pre = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {
            "min_pixels": getattr(ip, "min_pixels", 3136), "max_pixels": getattr(ip, "max_pixels", 12_845_056)}
        self.min_pixels, self.max_pixels = pixel_limits(mt, pre)
        self.mean = np.asarray(ip.image_mean, dtype=np.float32)
        self.std = np.asarray(ip.image_std, dtype=np.float32)
        self.image_first = IMAGE_FIRST[mt]
        self.pad_id = base.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def messages(self, sample: Sample, upto: int | None = None) -> tuple[list[dict], int]:
        """The family's message generator. A row that places its images explicitly keeps its order
        (what a `.messages` prompt hands the template as it is)."""
        n = span(sample, upto)
        counts = turn_images(sample)
        out = []
        for t, k in zip(sample.turns[:n], counts):
            if t.parts:
                content = [{"type": "image"} if p is None else {"type": "text", "text": p} for p in t.parts]
            else:
                text, images = [{"type": "text", "text": t.text}], [{"type": "image"}] * k
                content = images + text if self.image_first else text + images
            out.append({"role": t.role, "content": content})
        return out, sum(counts[:n])

    def render(self, sample: Sample, upto: int | None = None, *, generation_prompt: bool = False) -> str:
        msgs, _ = self.messages(sample, upto)
        tok = self.base.tokenizer
        template = getattr(tok, "chat_template", None) or getattr(self.base.processor, "chat_template", None)
        return tok.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                       add_generation_prompt=generation_prompt)

    def process(self, text: str, images: list) -> dict[str, np.ndarray]:
        ids = self.text_ids(text)
        if not images:
            return {"input_ids": np.asarray(ids, dtype=np.int32)[None]}
        pixels, grids = zip(*(self.pixels(im) for im in images))
        placeholder = self.text_ids(PLACEHOLDER)
        out, i, k = [], 0, 0
        while i < len(ids):
            if ids[i:i + len(placeholder)] == placeholder and k < len(grids):
                pads = int(np.prod(grids[k])) // self.merge ** 2
                out += placeholder[:1] + [self.pad_id] * pads + placeholder[-1:]
                i, k = i + len(placeholder), k + 1
            else:
                out.append(ids[i])
                i += 1
        if k != len(grids):  # Swift: "Number of placeholder tokens does not match number of frames"
            raise DataError(f"The prompt has {k} image place(s) for the row's {len(grids)} image(s).",
                            "Give each image one image part in the messages.", field="images")
        return {"input_ids": np.asarray(out, dtype=np.int32)[None],
                "pixel_values": np.concatenate(pixels), "image_grid_thw": np.asarray(grids, dtype=np.int64)}

    def text_ids(self, text: str) -> list[int]:
        return list(self.base.tokenizer.encode(text, add_special_tokens=False))

    def pixels(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(patches [t*gh*gw, C*tp*p*p], (t, gh, gw)): `preprocess` + `QwenVL.patchify`."""
        image = image.convert("RGB")
        w, h = image.size
        try:
            rh, rw = target_size(h, w, self.patch * self.merge, self.min_pixels, self.max_pixels)
        except ValueError as e:
            raise DataError(f"mlx-swift-lm cannot read this image: {e}.",
                            "Use a larger image, or one less elongated.", field="images") from None
        arr = np.asarray(image.resize((rw, rh), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
        arr = ((arr - self.mean) / self.std).transpose(2, 0, 1)[None]  # [1, C, H, W]
        arr = np.concatenate([arr] * self.temporal)  # patchify: one image repeated to temporal_patch_size
        p, m, tp, c = self.patch, self.merge, self.temporal, arr.shape[1]
        gh, gw = rh // p, rw // p
        x = arr.reshape(1, tp, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(gh * gw, c * tp * p * p), (1, gh, gw)


def Layout(base):
    """The MLXLLM layout for a text model, MLXVLM's Qwen-VL processor for the Qwen-VL family."""
    return TextLayout(base) if base.kind == "text" else VisionLayout(base)
