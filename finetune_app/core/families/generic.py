"""Any model mlx-vlm or mlx-lm can train, through the library's own forward (the reference path).

The ids are padded to the batch's longest row, the processor's image tensors go to the model as
the library's generate would pass them, and the logits must line up with the ids (a model that
expands image tokens itself needs its own family: see fastvlm.py).
"""

from __future__ import annotations

import mlx.core as mx

from finetune_app.core.families.base import Family
from finetune_app.core.training.batch import Batch, collate

# The names people know families by (mlx-vlm / mlx-lm load any of their model types generically).
# Trained through the library's own forward, each proved by a tiny random model of its real
# architecture (tests/test_more_vlm_families.py; docs/engine.md "Families beyond Qwen-VL and FastVLM").
NAMES = {
    "qwen3_5": "Qwen3.5",
    "gemma3": "Gemma 3",
    "idefics3": "Idefics3",
    "smolvlm": "SmolVLM",
    "pixtral": "Pixtral",
    "mistral3": "Mistral 3",
    "mllama": "Llama 3.2 Vision",
}


class Generic(Family):
    names = NAMES

    def __init__(self, base):
        super().__init__(base)
        self.vlm = base.kind == "vlm"

    def plan(self, examples) -> Batch:
        tok = self.base.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        return collate(examples, pad, self.expanded_token())

    def expanded_token(self) -> int | None:
        """The placeholder the model itself expands into several positions (None: the ids hold them)."""
        return None

    def logits(self, model, batch: Batch) -> mx.array:
        """Logits aligned with the token positions, from the library's own forward."""
        ids = mx.array(batch.input_ids)
        if not self.vlm:
            out = model(ids)
            return out.logits if hasattr(out, "logits") else out
        extra = {k: mx.array(v) for k, v in batch.images.items() if k != "pixel_values"}
        pixel_values = mx.array(batch.images["pixel_values"]) if "pixel_values" in batch.images else None
        # As mlx_vlm.generate runs it (generate/ar.py generate_step): the padding mask goes to
        # get_input_embeddings only, and the language model keeps its own causal mask. Several
        # models' __call__ (Gemma 3, Idefics3, SmolVLM, LLaVA) hand the padding mask to the
        # language model instead, which then attends to later tokens.
        emb = model.get_input_embeddings(ids, pixel_values, mask=mx.array(batch.attention_mask), **extra)
        fields = {k: v for k, v in emb.to_dict().items() if k != "inputs_embeds" and v is not None}
        out = model.language_model(ids, inputs_embeds=emb.inputs_embeds, **{**extra, **fields})
        logits = out.logits if hasattr(out, "logits") else out
        if logits.shape[1] != ids.shape[1]:
            raise RuntimeError(f"logits cover {logits.shape[1]} positions for {ids.shape[1]} tokens; "
                               "this model expands image tokens in a way the engine does not know")
        return logits

    def predictions(self, model, batch):
        if not isinstance(batch, Batch):  # the fast path's device arrays
            return self.fast_predictions(model, batch)
        logits = self.logits(model, batch)
        V = logits.shape[-1]
        targets = mx.maximum(mx.array(batch.input_ids[:, 1:]), 0)
        weights = mx.array(batch.target_mask[:, 1:]).astype(mx.float32)
        return logits[:, :-1].reshape(-1, V), targets.reshape(-1), weights.reshape(-1)

    def fast_predictions(self, model, arrays: dict):
        owner, hidden, targets, weights = self.fast_hidden(model, arrays)
        return head(owner, hidden), targets, weights

    def fast_hidden(self, model, arrays: dict):
        """(module holding the LM head, hidden states [K, D] of the predicting positions, targets [K],
        weights [K]): what `fast_predictions` puts through the head, for a loss that applies the head
        itself (SFT's chunked cross-entropy)."""
        raise NotImplementedError(f"{type(self).__name__} has no fast path")

    def hidden_predictions(self, model, batch):
        """`fast_hidden` on the fast path; None on the library path (its forward applies the head)."""
        return None if isinstance(batch, Batch) else self.fast_hidden(model, batch)


def head(owner, hidden: mx.array) -> mx.array:
    """The LM head (tied embeddings where the model has no lm_head)."""
    return owner.lm_head(hidden) if "lm_head" in owner else owner.model.embed_tokens.as_linear(hidden)


def assemble(embed_tokens, ids: mx.array, feats: mx.array, src: mx.array, project=None) -> mx.array:
    """Input embeddings in model positions: one gather from concat(token embeddings, features)
    (`project`: a projector the features go through first, in the embeddings' dtype)."""
    tok = embed_tokens(ids)
    B, L, D = tok.shape
    rows = tok.reshape(B * L, D)
    if feats.shape[0]:
        if project is not None:
            feats = project(feats.astype(tok.dtype))
        rows = mx.concatenate([rows, feats.reshape(-1, D).astype(tok.dtype)], axis=0)
    return rows[src]


def cached_features(cache, keys: list, dtype=mx.float32) -> mx.array:
    """The cached feature rows of a batch's images, in plan order ([0, 1] when it has none)."""
    if not keys:
        return mx.zeros((0, 1), dtype)
    return mx.concatenate([cache[k] for k in keys], axis=0)
