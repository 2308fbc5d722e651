"""One forward pass per model family, returning logits aligned with the token positions.

Qwen-VL processors expand image placeholders into the token ids, so logits line up with the ids.
FastVLM keeps one `-200` placeholder per image and expands it into H×W feature positions inside the
model, so its logits are longer than the ids; mlx-vlm's trainer then compares mismatched positions.
Here the image features are merged explicitly and the logits are gathered back onto the token
positions (the logit that predicts the token after an image is the one at the image's last
feature position), so the usual shift-by-one loss applies to every family.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from finetune_app.core.data.batching import Batch


class Forward:
    def __init__(self, base):
        self.kind = base.kind
        self.is_fastvlm = base.is_fastvlm
        self.image_token_index = base.config.get("image_token_index", base.config.get("image_token_id"))

    # ---- FastVLM ----------------------------------------------------------------------------
    @staticmethod
    def tower_features(model, pixel_values: mx.array) -> mx.array:
        """Vision tower output before the projector, [N, H*W, C] (what a frozen-tower cache keeps)."""
        tower = model.vision_tower
        dtype = tower.vision_model.patch_embed.blocks[0].reparam_conv.weight.dtype
        _, feats, _ = tower(pixel_values.astype(dtype).transpose(0, 2, 3, 1))
        n, h, w, c = feats.shape
        return feats.reshape(n, h * w, c)

    def _fastvlm_logits(self, model, batch: Batch, ids: mx.array):
        tower_feats = self.tower_features(model, mx.array(batch.images["pixel_values"]))
        feats = model.mm_projector(tower_feats)
        n_feat = feats.shape[1]
        embed = model.language_model.model.embed_tokens
        tok = embed(mx.maximum(ids, 0))  # placeholders embedded as id 0, then replaced
        rows, gathers = [], []
        k = 0
        L = ids.shape[1]
        for r, positions in enumerate(batch.image_positions):
            pieces, start, index, offset = [], 0, [], 0
            for p in positions:
                pieces += [tok[r, start:p], feats[k]]
                index += list(range(start + offset, p + offset)) + [p + offset + n_feat - 1]
                offset += n_feat - 1
                start, k = p + 1, k + 1
            pieces.append(tok[r, start:])
            index += list(range(start + offset, L + offset))
            rows.append(mx.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0])
            gathers.append(index)
        longest = max(x.shape[0] for x in rows)
        embeds = mx.stack([mx.pad(x, [(0, longest - x.shape[0]), (0, 0)]) for x in rows])
        out = model.language_model(ids, inputs_embeds=embeds)
        logits = out.logits if hasattr(out, "logits") else out
        idx = mx.array(np.asarray(gathers, dtype=np.int32))[:, :, None]
        return mx.take_along_axis(logits, idx, axis=1)

    # ---- all families -----------------------------------------------------------------------
    def logits(self, model, batch: Batch) -> mx.array:
        ids = mx.array(batch.input_ids)
        if self.kind == "text":
            out = model(ids)
            return out.logits if hasattr(out, "logits") else out
        if self.is_fastvlm and "pixel_values" in batch.images and any(batch.image_positions):
            return self._fastvlm_logits(model, batch, ids)
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

    def loss_sum(self, model, batch: Batch) -> tuple[mx.array, mx.array]:
        """Summed cross-entropy over supervised tokens, and their count."""
        logits = self.logits(model, batch)
        targets = mx.maximum(mx.array(batch.input_ids[:, 1:]), 0)
        mask = mx.array(batch.target_mask[:, 1:])
        ce = nn.losses.cross_entropy(logits[:, :-1].astype(mx.float32), targets, reduction="none")
        return (ce * mask).sum(), mask.sum()
