"""mlx-vlm's layout for a prefix-LM (PaliGemma): the prompt is what mlx-vlm serves, the answer is
the processor's suffix.

mlx-vlm has no chat format for PaliGemma: `apply_chat_template` keeps only the last user message
(`<image>` + its text), and `prepare_inputs` has the processor expand the image tokens, insert
`<bos>` after them and end the prompt with "\\n". A training row is that same call with the answer
as `suffix` (`PaliGemmaProcessor(text=prompt, images, suffix=answer)`, which appends `<eos>` and
marks the suffix with token_type_ids 1), so the prompt's ids are, token for token, the ones
generation feeds the model. Only the last answer of a row is learnt (the runtime sends no history).
"""

from __future__ import annotations

import numpy as np

from finetune_app.core.data.sample import Sample
from finetune_app.core.errors import DataError
from finetune_app.core.serving import mlx_vlm
from finetune_app.core.serving.placement import last_answer

PREFIX_LENGTH = "prefix_length"  # per row: tokens that attend both ways (the family's mask reads it)


class Layout(mlx_vlm.Layout):
    prefix_lm = True

    def render(self, sample: Sample, upto: int | None = None, *, generation_prompt: bool = False) -> str:
        """The prompt as mlx-vlm serves it; without `generation_prompt`, followed by the answer."""
        answer = last_answer(sample) if upto is None else upto
        prompt = super().render(sample, answer, generation_prompt=True)
        if generation_prompt or upto is not None and upto <= answer:
            return prompt
        return prompt + "\n" + sample.turns[answer].text

    def encode_row(self, sample: Sample, images: list) -> tuple[np.ndarray, np.ndarray, dict]:
        """(ids, suffix mask, image inputs + prefix length) from the processor's prefix + suffix."""
        from mlx_vlm.utils import should_add_special_tokens

        if not images:
            raise DataError("PaliGemma reads every prompt with an image; this row has none.",
                            "Give each row an image, or choose another model for text-only data.",
                            file=sample.source, line=sample.line, field="images")
        answer = last_answer(sample)
        special = should_add_special_tokens(self.base.config.get("model_type", ""), self.base.processor)
        out = self.base.processor(text=[self.render(sample, answer, generation_prompt=True)], images=[images],
                                  suffix=[sample.turns[answer].text], add_special_tokens=special, padding=False)
        ids = np.asarray(out["input_ids"]).reshape(-1).astype(np.int32)
        suffix = np.asarray(out["token_type_ids"]).reshape(-1) == 1
        inputs = {"pixel_values": np.asarray(out["pixel_values"]),
                  PREFIX_LENGTH: np.asarray([int((~suffix).sum())], dtype=np.int32)}
        return ids, suffix, inputs
