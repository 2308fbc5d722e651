"""PaliGemma: a prefix-LM. The prompt (image tokens, `<bos>`, text, "\\n") attends both ways, the
answer causally, and only the answer is learnt.

mlx-vlm 0.7.10 generates it right (a prompt is all prefix; each new token sees everything before
it) but gives training no such mask: its language model attends both ways whenever
`use_bidirectional_attention` (set by default) and `Model.__call__` passes a padding-only mask, so an
answer token would see the tokens after it. Rows are encoded by the processor as prefix + suffix
(core/serving/paligemma.py, which records each row's prefix length); the forward here is the
library's, with a prefix-LM mask handed to the language model.
"""

from __future__ import annotations

import mlx.core as mx

from finetune_app.core.families.generic import Generic
from finetune_app.core.serving.paligemma import PREFIX_LENGTH
from finetune_app.core.training.batch import Batch


class PaliGemma(Generic):
    model_types = ("paligemma",)
    names = {"paligemma": "PaliGemma"}
    layouts = {"mlx-vlm": "paligemma"}

    def logits(self, model, batch: Batch) -> mx.array:
        ids = mx.array(batch.input_ids)
        padding = mx.array(batch.attention_mask)
        emb = model.get_input_embeddings(ids, mx.array(batch.images["pixel_values"]), mask=padding)
        out = model.language_model(ids, inputs_embeds=emb.inputs_embeds,
                                   mask=prefix_lm_mask(batch.images[PREFIX_LENGTH], padding))
        return out.logits if hasattr(out, "logits") else out


def prefix_lm_mask(prefix_length, padding: mx.array) -> mx.array:
    """[B, 1, L, L] boolean: query q sees key k when k <= q or k lies in the row's prefix, and k is
    not padding (transformers' PaliGemma mask from token_type_ids)."""
    L = padding.shape[1]
    q = mx.arange(L)[None, :, None]
    k = mx.arange(L)[None, None, :]
    prefix = mx.array(prefix_length).reshape(-1, 1, 1)
    return (((k <= q) | (k < prefix)) & (padding[:, None, :] > 0))[:, None]
