"""Apple's FastVLM app (the `mlx-swift` export): the prompt and pixels its own processor builds.

Transcribed from apple/ml-fastvlm app/FastVLM/FastVLM.swift (commit 5004c18e), `FastVLMProcessor`
(lines 339-428):
* `prepare(prompt:imageTHW:)` (lines 373-416): a system message "You are a helpful assistant." is inserted when
  the first message is not a system one; the image tokens (`<image>` x (h/64)*(w/64), 256 at
  1024 px) are appended to the LAST message's text with no separator; the messages are joined as
  ChatML `<|im_start|>{role}\\n{content}<|im_end|>` with "\\n", then "\\n<|im_start|>assistant\\n"
  (lines 383-385, 396-404, 409-415; `FastVLMProcessorConfiguration`: imageToken "<image>", patchSize
  64, no additional tokens, no select strategy, so no -1). One image at most (lines 426-428).
* `preprocess(image:processing:)` (lines 351-371): the shortest edge is resized bicubically to
  preprocessor_config `size.shortest_edge` (`MediaProcessing.fitIn(_:shortestEdge:)`: the long
  edge scales in proportion), then centre-cropped to `crop_size`, then normalised with
  `image_mean` / `image_std`.
The engine keeps ONE placeholder (config `image_token_index`, -200) per image where the app has
(h/64)*(w/64) `<image>` tokens: the model expands the placeholder into exactly that many feature
positions, so the sequence of model positions is the app's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from finetune_app.core.data.sample import Sample
from finetune_app.core.errors import DataError
from finetune_app.core.serving.placement import span, turn_images

SYSTEM = "You are a helpful assistant."
IMAGE_TOKEN = "<image>"


class Layout:
    name = "mlx-swift"
    library_inputs = False  # generation is given this layout's ids and pixels (the app's, not mlx-vlm's)

    def __init__(self, base):
        self.base = base
        self.image_token_index = base.config.get("image_token_index", -200)
        ip = getattr(base.processor, "image_processor", base.processor)
        size = getattr(ip, "size", None) or {}
        crop = getattr(ip, "crop_size", None) or {}
        self.shortest_edge = int(size.get("shortest_edge") or size.get("height") or 1024)
        self.crop = (int(crop.get("height") or self.shortest_edge), int(crop.get("width") or self.shortest_edge))
        self.mean = np.asarray(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0], dtype=np.float32)
        self.std = np.asarray(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0], dtype=np.float32)

    def messages(self, sample: Sample, upto: int | None = None) -> tuple[list[dict], int]:
        n = span(sample, upto)
        counts = turn_images(sample)
        msgs = [{"role": t.role, "content": t.text + IMAGE_TOKEN * k}
                for t, k in zip(sample.turns[:n], counts)]
        if msgs and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": SYSTEM})
        return msgs, sum(counts[:n])

    def render(self, sample: Sample, upto: int | None = None, *, generation_prompt: bool = False) -> str:
        if len(sample.images) > 1:
            raise DataError("Apple's FastVLM app takes one image per prompt; this row has "
                            f"{len(sample.images)}.", "Keep one image per row, or choose another serve target.",
                            file=sample.source, line=sample.line, field="images")
        msgs, _ = self.messages(sample, upto)
        text = "\n".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" for m in msgs)
        return text + "\n<|im_start|>assistant\n" if generation_prompt else text

    def process(self, text: str, images: list) -> dict[str, np.ndarray]:
        parts = text.split(IMAGE_TOKEN)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if part:
                ids += self.text_ids(part)
            if i < len(parts) - 1:
                ids.append(self.image_token_index)
        out = {"input_ids": np.asarray(ids, dtype=np.int32)[None]}
        if images:
            out["pixel_values"] = np.stack([self.pixels(im) for im in images])
        return out

    def text_ids(self, text: str) -> list[int]:
        return list(self.base.tokenizer.encode(text, add_special_tokens=False))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """[3, H, W] float32, the app's `preprocess`: shortest edge -> size (bicubic), centre crop,
        normalise. (Core Image's bicubic and PIL's differ in the last digits; the geometry is the app's.)"""
        image = image.convert("RGB")
        w, h = image.size
        se = self.shortest_edge
        new = (se, round(se * h / w)) if w <= h else (round(se * w / h), se)
        image = image.resize(new, Image.Resampling.BICUBIC)
        ch, cw = self.crop
        left, top = max(0, (new[0] - cw) // 2), max(0, (new[1] - ch) // 2)
        image = image.crop((left, top, left + min(cw, new[0]), top + min(ch, new[1])))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - self.mean) / self.std
        return arr.transpose(2, 0, 1)
