"""Plain decoder + head text models (Llama, Qwen2/3, Mistral): the compiled fast path.

mlx-lm's own forward is the reference; the fast path pads ids to a few shapes, runs the decoder,
and sends only the supervised positions through the head (no logit scaling in these families)."""

from __future__ import annotations

import mlx.core as mx

from finetune_app.core.families.generic import Generic, head
from finetune_app.core.training.batch import Batch, gather_plan


class Text(Generic):
    model_types = ("llama", "qwen2", "qwen3", "mistral")
    names = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}
    vlm = False

    def start(self, cfg) -> None:
        self.fast = self.compiled = bool(cfg.compile)  # nothing to cache: the fast path is the compiled one

    def plan(self, examples) -> Batch:
        if not self.fast:
            return super().plan(examples)
        return gather_plan(examples, lambda e: (), lambda k: 0, pad_ids=True)

    def inputs(self, batch: Batch):
        if batch.src is None:
            return batch
        return {"ids": mx.array(batch.input_ids), "sel": mx.array(batch.sel),
                "sel_targets": mx.array(batch.sel_targets), "sel_weights": mx.array(batch.sel_weights)}

    def fast_predictions(self, model, a: dict):
        hidden = model.model(a["ids"])
        picked = hidden.reshape(-1, hidden.shape[-1])[a["sel"]]
        return head(model, picked), a["sel_targets"], a["sel_weights"]
