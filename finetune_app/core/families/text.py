"""Plain decoder + head text models (Llama, Qwen2/3, Mistral): the compiled fast path.

mlx-lm's own forward is the reference; the fast path pads ids to a few shapes, runs the decoder,
and sends only the supervised positions through the head (no logit scaling in these families).

Packed rows (`pack`): several examples share a row, each attending to its own earlier positions
only (a block-diagonal causal mask). These families' rotary embedding makes an attention score a
function of the query-key distance alone, so an example at offset o of a row gets exactly the
scores it would get from position 0: positions restart per example in effect, and the loss equals
the unpacked run's (tests/test_packing.py). Sliding-window layers are not packed."""

from __future__ import annotations

import mlx.core as mx

from finetune_app.core.families.generic import Generic, assemble
from finetune_app.core.training.batch import Batch, gather_plan, segment_mask


class Text(Generic):
    model_types = ("llama", "qwen2", "qwen3", "mistral")
    names = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}
    vlm = False

    def start(self, cfg) -> None:
        from finetune_app.core.training.backend import compile_step

        self.fast = bool(cfg.compile)  # nothing to cache: the fast path is the compiled one (--no-compile: the library's)
        self.compiled = compile_step(self.fast)  # (#16 cputext) uncompiled on the CPU back-end
        sliding = getattr(self.base.model.model, "swa_idx", None) is not None
        self.pack = self.fast and bool(getattr(cfg, "pack", False)) and not sliding

    def plan(self, examples) -> Batch:
        if not self.fast:
            return super().plan(examples)
        return gather_plan(examples, lambda e: (), lambda k: 0, pad_ids=True, pack=self.pack, buckets=self.buckets)

    def inputs(self, batch: Batch):
        if batch.src is None:
            return batch
        a = {"ids": mx.array(batch.input_ids), "sel": mx.array(batch.sel),
             "sel_targets": mx.array(batch.sel_targets), "sel_weights": mx.array(batch.sel_weights)}
        if batch.segments is not None:
            a["src"], a["segments"] = mx.array(batch.src), mx.array(batch.segments)
        return a

    def fast_hidden(self, model, a: dict):
        if "segments" in a:  # packed: rows of several examples, each attending to itself only
            lm = model.model
            hidden = assemble(lm.embed_tokens, a["ids"], mx.zeros((0, 1)), a["src"])
            mask = segment_mask(a["segments"])
            for layer in lm.layers:
                hidden = layer(hidden, mask)
            hidden = lm.norm(hidden)
        else:
            hidden = model.model(a["ids"])
        picked = hidden.reshape(-1, hidden.shape[-1])[a["sel"]]
        return model, picked, a["sel_targets"], a["sel_weights"]
