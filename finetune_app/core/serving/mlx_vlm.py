"""mlx-vlm's inference layout: `apply_chat_template(processor, config, messages, num_images=N)` and
the model's own processor through `prepare_inputs`, as mlx_vlm.generate calls them."""

from __future__ import annotations

import numpy as np

from finetune_app.core.data.sample import Sample
from finetune_app.core.serving.placement import span, turn_images


class Layout:
    name = "mlx-vlm"
    library_inputs = True  # mlx_vlm.generate builds ids and pixels from the text and images itself

    def __init__(self, base):
        self.base = base
        cfg = base.config
        self.image_token_index = cfg.get("image_token_index", cfg.get("image_token_id"))

    def messages(self, sample: Sample, upto: int | None = None) -> tuple[list[dict], int]:
        """The message list handed to apply_chat_template, and the images it covers. Explicit rows
        pass their content parts in order; other rows pass plain text and let the library place
        the images as it does for a prompt."""
        n = span(sample, upto)
        counts = turn_images(sample)
        out = []
        for t in sample.turns[:n]:
            if t.parts:
                content = [{"type": "image"} if p is None else {"type": "text", "text": p} for p in t.parts]
            else:
                content = t.text
            out.append({"role": t.role, "content": content})
        return out, sum(counts[:n])

    def render(self, sample: Sample, upto: int | None = None, *, generation_prompt: bool = False) -> str:
        from mlx_vlm.prompt_utils import apply_chat_template

        msgs, n_images = self.messages(sample, upto)
        return apply_chat_template(self.base.processor, self.base.config, msgs,
                                   add_generation_prompt=generation_prompt, num_images=n_images)

    def process(self, text: str, images: list) -> dict[str, np.ndarray]:
        """ids and image tensors exactly as mlx_vlm.generate prepares them (generate/dispatch.py)."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        special = should_add_special_tokens(self.base.config.get("model_type", ""), self.base.processor)
        out = prepare_inputs(self.base.processor, images=images or None, prompts=[text],
                             image_token_index=self.image_token_index, add_special_tokens=special,
                             padding=False)
        result = {}
        for k, v in out.items():
            if v is None or isinstance(v, (str, list, dict)) and k != "input_ids":
                continue
            result[k] = np.asarray(v)
        return result

    def text_ids(self, text: str) -> list[int]:
        return list(self.base.tokenizer.encode(text, add_special_tokens=False))
