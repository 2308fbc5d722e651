"""mlx-lm's inference layout: the tokenizer's chat template, as mlx_lm.generate applies it."""

from __future__ import annotations

import numpy as np

from finetune_app.core.data.sample import Sample
from finetune_app.core.serving.placement import span


class Layout:
    name = "mlx-lm"

    def __init__(self, base):
        self.base = base

    def messages(self, sample: Sample, upto: int | None = None) -> tuple[list[dict], int]:
        return [{"role": t.role, "content": t.text} for t in sample.turns[:span(sample, upto)]], 0

    def render(self, sample: Sample, upto: int | None = None, *, generation_prompt: bool = False) -> str:
        msgs, _ = self.messages(sample, upto)
        return self.base.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                       add_generation_prompt=generation_prompt)

    def process(self, text: str, images: list) -> dict[str, np.ndarray]:
        return {"input_ids": np.asarray(self.text_ids(text), dtype=np.int32)}

    def text_ids(self, text: str) -> list[int]:
        # the template already holds the BOS (if any): mlx-lm tokenizes it without adding another
        return list(self.base.tokenizer.encode(text, add_special_tokens=False))
