"""FastVLM (mlx-vlm's `llava_qwen2` / `fastvlm`): one `-200` placeholder per image, expanded into
H×W feature positions inside the model, a BatchNorm FastViTHD tower, and Apple's app as a target.

The library's forward returns logits longer than the ids (mlx-vlm's trainer then compares
mismatched positions), so the library path merges the features explicitly and gathers the logits
back onto the token positions: the logit that predicts the token after an image is the one at the
image's last feature position. The fast path lays the batch out in model positions and runs the
projector and the language model in the (compiled) step, taking the frozen tower's output from the
feature cache (`cache_vision`, filled while the first epoch trains) or, uncached, running the tower
inside the same step: so cached and uncached runs differ by the cache alone, not by compilation.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from finetune_app.core.families.generic import Generic, assemble, cached_features
from finetune_app.core.training.batch import Batch, gather_plan
from finetune_app.core.vision_cache import VisionFeatureCache, content_key, same_shape_runs

APP_MODEL_TYPE = "llava_qwen2"  # what Apple's app and MLXVLM decode


class FastVLM(Generic):
    model_types = ("llava_qwen2", "fastvlm")
    names = {"llava_qwen2": "FastVLM", "fastvlm": "FastVLM"}
    apple_app = True
    swift_model_type = APP_MODEL_TYPE
    swift_processor = "FastVLMProcessor"

    def __init__(self, base):
        super().__init__(base)
        self.cache = VisionFeatureCache(self._images, self._tower_call, runs=same_shape_runs)
        self.cached = False  # the fast path reads the feature cache (else the tower runs in the step)
        self.compiled_tower = None  # the cache fill's tower, compiled with the step (see _tower_call)

    def image_features(self) -> int:
        """(image side / 64)² positions per image: 256 at 1024 px."""
        ip = getattr(self.base.processor, "image_processor", None)
        size = getattr(ip, "crop_size", None) or getattr(ip, "size", None) or {}
        side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
        side = int(side or self.base.config.get("vision_config", {}).get("image_size", 1024))
        return (side // 64) ** 2

    def start(self, cfg) -> None:
        frozen = not cfg.train_vision  # (the projector runs in the step, trained or not)
        self.cached = frozen and bool(cfg.cache_vision)
        # uncached but compiled: the tower runs inside the compiled step (#16: the speed figure then
        # separates caching from compilation); uncached and uncompiled: the library path
        from finetune_app.core.training.backend import compile_step

        compiled = compile_step(bool(cfg.compile))  # (not on the CPU back-end: "CPU done-when (cputext)")
        self.fast = self.cached or (frozen and compiled)
        self.compiled = self.fast and compiled

    def expanded_token(self) -> int:
        return self.image_token

    @staticmethod
    def tower_features(model, pixel_values: mx.array) -> mx.array:
        """Vision tower output before the projector, [N, H*W, C] (what a frozen-tower cache keeps)."""
        tower = model.vision_tower
        dtype = tower.vision_model.patch_embed.blocks[0].reparam_conv.weight.dtype
        _, feats, _ = tower(pixel_values.astype(dtype).transpose(0, 2, 3, 1))
        n, h, w, c = feats.shape
        return feats.reshape(n, h * w, c)

    @staticmethod
    def _images(ex, keys=None):
        """(cache key, pixels [3, H, W]) of each image of the example (its pixels still held);
        `keys`: the example's keys as already named (`ex.feature_keys`), so they are not hashed again."""
        pv = ex.images.get("pixel_values")
        if pv is None:
            return []
        images = list(pv.reshape((-1,) + pv.shape[-3:]))
        return list(zip(keys if keys is not None else map(content_key, images), images))

    def _tower_call(self, images):
        """One tower call on same-sized images: each one's features [H*W, C]. Compiled where the
        step is (one trace per group shape, a batch's worth of pictures): FastViTHD's BatchNorms,
        GELUs and layer scales fused, as the uncached step fuses them, so the first epoch's fill
        costs what the uncached step's tower costs (#16: the speed figure separates caching from
        compilation)."""
        model, pixels = self.base.model, mx.array(np.stack(images))
        if self.compiled:
            if self.compiled_tower is None:
                self.compiled_tower = mx.compile(lambda p: mx.stop_gradient(self.tower_features(model, p)),
                                                 inputs=model.vision_tower.state)
            feats = self.compiled_tower(pixels)
        else:
            feats = self.tower_features(model, pixels)
        return [(feats[i], None) for i in range(len(images))]

    def group_images(self, groups, reread) -> None:
        if self.cached:
            self.cache.plan(groups, reread)

    # ---- the library path ------------------------------------------------------------------------
    def logits(self, model, batch: Batch) -> mx.array:
        if "pixel_values" not in batch.images or not any(batch.image_positions):
            return super().logits(model, batch)
        ids = mx.array(batch.input_ids)
        feats = model.mm_projector(self.tower_features(model, mx.array(batch.images["pixel_values"])))
        n_feat = feats.shape[1]
        tok = model.language_model.model.embed_tokens(mx.maximum(ids, 0))  # placeholders as id 0, then replaced
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

    # ---- the fast path ---------------------------------------------------------------------------
    def prepare_example(self, ex) -> None:
        if self.fast:  # the images' keys only: features are computed by the first batch needing them
            ex.feature_keys = [key for key, _ in self._images(ex)]

    def ready(self, ex) -> bool:
        return self.fast and self.cached and self.cache.ready(ex)

    def plan(self, examples) -> Batch:
        if not self.fast:
            return super().plan(examples)
        if self.cached:
            self.cache.fill(examples)  # this batch's images not seen before (the first epoch)
            features = self.cache.features
            rows = lambda k: features[k].shape[0]  # noqa: E731
        else:
            n = self.image_features()
            rows = lambda k: n  # noqa: E731

        def runs(e):
            return [(int(t), 1, k) for t, k in zip(np.flatnonzero(e.input_ids == self.image_token), e.feature_keys)]

        batch = gather_plan(examples, runs, rows, buckets=self.buckets)
        if not self.cached and batch.feature_keys:  # the tower runs in the step, on these pixels
            batch.images = {"pixel_values": np.concatenate(
                [e.images["pixel_values"] for e in examples if "pixel_values" in e.images], axis=0)}
        return batch

    def inputs(self, batch: Batch):
        if batch.src is None:
            return batch
        a = {"ids": mx.array(batch.input_ids), "src": mx.array(batch.src),
             "sel": mx.array(batch.sel), "sel_targets": mx.array(batch.sel_targets),
             "sel_weights": mx.array(batch.sel_weights)}
        if "pixel_values" in batch.images:
            a["pixels"] = mx.array(batch.images["pixel_values"])
            return a
        feats = cached_features(self.cache.features, batch.feature_keys)
        if batch.feature_keys:
            feats = feats.reshape(len(batch.feature_keys), -1, feats.shape[-1])
        a["feats"] = feats
        return a

    def fast_hidden(self, model, a: dict):
        lm = model.language_model
        # uncached: the frozen tower in the step (no gradient flows into it)
        feats = mx.stop_gradient(self.tower_features(model, a["pixels"])) if "pixels" in a else a["feats"]
        embeds = assemble(lm.model.embed_tokens, a["ids"], feats, a["src"], project=model.mm_projector)
        hidden = lm.model(mx.zeros(a["src"].shape, mx.int32), input_embeddings=embeds)
        picked = hidden.reshape(-1, hidden.shape[-1])[a["sel"]]
        return lm, picked, a["sel_targets"], a["sel_weights"]
