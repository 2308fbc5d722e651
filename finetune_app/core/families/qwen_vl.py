"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: image pads already expanded by the processor, mRoPE.

Fast path (frozen tower): each image's merged tower features are computed once, by the first
batch that needs them (so the first step does not wait for every image), in one tower call with
the other images of its epoch-0 batch (vision_cache.py), and cached by the pixels' content; the
mRoPE position ids are computed once per example on the host, in numpy (`rope_positions`:
mlx-vlm's `get_rope_index` evaluates arrays, so it cannot run inside a compiled step). Qwen3-VL's
deepstack features (tower outputs added to the first decoder layers' hidden states at the image
positions) are cached beside the main features and added by a gather, as mlx-vlm's
`_deepstack_process` adds them. The merger sits inside the tower, so training it (or the tower) uses the library path.

Compiled tower (#16): uncompiled, the frozen tower is launch/overhead-bound (a Python loop per
image for attention, position tables built per image, many small ops). With compilation on, a
group *signature* (each picture's grid, in order) met by at least two planned groups gets its own
`mx.compile`d tower with the grid captured as a constant, so mlx-vlm's host reads of the grid
(`int(grid_thw[i, 0])`, `cu_seqlens.tolist()`) run on a constant at trace time and only the pixels
(and the weights) are traced. Which signatures compile is a function of the plan alone (the most
frequent `MAX_COMPILED`), so a resumed run computes each group the way the uninterrupted run did;
other signatures (pictures of many sizes) take the uncompiled call.

Packed rows (`pack`): several examples share a row behind a block-diagonal causal mask, and each
keeps its own mRoPE ids (its per-example `get_rope_index`), so its positions restart at its start.
"""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import numpy as np

from finetune_app.core.families.generic import Generic, assemble, cached_features
from finetune_app.core.patches import qwen_rope_state as rope_state
from finetune_app.core.training.batch import Batch, gather_plan, segment_mask
from finetune_app.core.vision_cache import VisionFeatureCache, content_key


MAX_COMPILED = 8  # compiled tower signatures held at most


def signature(grids) -> tuple[str, ...]:
    """A tower call's signature: each picture's grid, in order (the grid part of its cache key)."""
    return tuple("x".join(map(str, g.tolist())) for g in np.asarray(grids).reshape(-1, 3))


class QwenVL(Generic):
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    names = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}

    def __init__(self, base):
        super().__init__(base)
        self.deepstack = base.model_type == "qwen3_vl"
        self.cache = VisionFeatureCache(self._images, self._tower_call)  # grouped tower calls
        self.features = self.cache.features  # cache key -> [n, D] merged tower features
        self.deep = self.cache.extra  # cache key -> [layers, n, D] deepstack features (Qwen3-VL)
        self.compiled_signatures: frozenset = frozenset()  # chosen from the plan (`group_images`)
        self.compiled_towers: dict = {}  # signature -> its compiled tower
        self.compiled_calls = 0  # tower calls that took a compiled tower (tests, benchmarks)

    def start(self, cfg) -> None:
        self.fast = bool(cfg.cache_vision and not cfg.train_vision and not cfg.train_projector)
        from finetune_app.core.training.backend import compile_step

        self.compiled = self.fast and compile_step(bool(cfg.compile))  # (uncompiled on the CPU back-end, step and tower)
        self.pack = self.fast and bool(getattr(cfg, "pack", False))

    # ---- once per example ------------------------------------------------------------------------
    def tower_features(self, model, pixel_values, grid=None):
        """Merged tower features [n, D] of the images (their patch rows concatenated, one grid row
        each), and Qwen3-VL's deepstack features [layers, n, D] (None for the others)."""
        tower = model.vision_tower
        # in the tower's dtype, as mlx-vlm's `get_input_embeddings` (its training and serving) casts
        # them: the processor's float32 rows promoted every matmul of a bf16 tower to float32, and the
        # features differed from the served ones (#16 towerspeed)
        pixel_values = pixel_values.astype(tower.patch_embed.proj.weight.dtype)
        if not self.deepstack:
            out = tower(pixel_values, grid, output_hidden_states=False)
            return (out[0] if isinstance(out, tuple) else out), None
        feats, deep = tower(pixel_values, grid)
        return feats, (mx.stack(list(deep)) if deep is not None and len(deep) else None)

    def sized_processor(self, layout):
        """mlx-vlm's Qwen-VL processor from picture sizes: each picture's grid as its image
        processor resizes it (`_resolved_size`: smart_resize with its min/max pixels and
        patch x merge factor, the helper its own `num_image_tokens` uses), and the text's
        image pads expanded as the processor's `__call__` does, then tokenised without pictures."""
        from finetune_app.core.data.tokenize import SizeUnknown

        processor = self.base.processor
        ip, token = getattr(processor, "image_processor", None), getattr(processor, "image_token", None)
        if not (self.fast and getattr(layout, "name", None) == "mlx-vlm" and token
                and callable(getattr(ip, "_resolved_size", None))):
            return None
        merge = int(ip.merge_size) ** 2

        def sized(text: str, sizes: list) -> dict:
            pieces = text.split(token)
            if len(pieces) - 1 != len(sizes):  # (the processor's own error or fix-up: let it say)
                raise SizeUnknown
            grids = []
            for w, h in sizes:
                rh, rw = ip._resolved_size(h, w)
                grids.append([1, rh // ip.patch_size, rw // ip.patch_size])
            out = [pieces[0]]
            for g, after in zip(grids, pieces[1:]):
                out += [token * (int(np.prod(g)) // merge), after]
            processed = layout.process("".join(out), [])
            processed["image_grid_thw"] = np.asarray(grids, dtype=np.int64)
            return processed

        return sized

    def prepare_example(self, ex) -> None:
        """The images' cache keys and the example's mRoPE ids; the tower runs later (`fill`).
        A picture whose pixels come later (`ex.image_ids`) is keyed by its identity and grid,
        the same before and after it is read; a held one by its pixels' content."""
        if not self.fast:
            return
        pv, grid = ex.images.get("pixel_values"), ex.images.get("image_grid_thw")
        if ex.image_ids and grid is not None:
            ex.feature_keys = [f"{i}-{s}" for i, s in zip(ex.image_ids, signature(grid))]
        else:
            ex.feature_keys = [key for key, _ in self._images(ex)]
        ex.rope_positions = self.rope_positions(ex.input_ids, grid)  # [3, L]
        if pv is None:
            ex.images = {}

    def rope_positions(self, ids, grid) -> np.ndarray:
        """The row's mRoPE ids [3, L] (int32), on the host: what mlx-vlm's `get_rope_index` gives
        for images (the same in Qwen2-, 2.5- and 3-VL): text runs count on from the last id on all
        three axes, an image's pads take (t, h, w) grid ids offset by where it starts. mlx-vlm's
        builds them with per-token Python loops and a device sync per grid entry (1.3 ms a row
        on this CPU against 0.07; on a GPU, round trips), on the training thread. A row whose
        pads do not match its grid rows (not the processor's layout) takes the library's call."""
        ids = np.asarray(ids)
        L = len(ids)
        if grid is None:
            return np.broadcast_to(np.arange(L, dtype=np.int32), (3, L)).copy()
        cfg, merge = self.base.model.config, self.base.model.config.vision_config.spatial_merge_size
        pads = np.flatnonzero(ids == cfg.image_token_id)
        grids = np.asarray(grid).reshape(-1, 3).astype(np.int64)
        sizes = [int(t * (h // merge) * (w // merge)) for t, h, w in grids]
        starts, at = [], 0
        for n in sizes:  # each image: its first pad, then n consecutive pads
            if at + n > len(pads) or pads[at + n - 1] - pads[at] != n - 1:
                return self._library_rope_positions(ids, grid)
            starts.append(int(pads[at]))
            at += n
        if at != len(pads) or np.any(ids == cfg.video_token_id):
            return self._library_rope_positions(ids, grid)
        pos = np.empty((3, L), np.int64)
        st, nxt = 0, 0  # next token, next id
        for (t, h, w), ed, n in zip(grids, starts, sizes):
            pos[:, st:ed] = nxt + np.arange(ed - st)
            nxt += ed - st
            gh, gw = h // merge, w // merge
            thw = np.indices((t, gh, gw)).reshape(3, -1)
            pos[:, ed:ed + n] = nxt + thw
            nxt = int(pos[:, ed:ed + n].max()) + 1
            st = ed + n
        pos[:, st:] = nxt + np.arange(L - st)
        return pos.astype(np.int32)

    def _library_rope_positions(self, ids, grid) -> np.ndarray:
        lm = self.base.model.language_model
        pos, _ = lm.get_rope_index(mx.array(np.asarray(ids)[None]), mx.array(grid), None, None)
        rope_state.clear(lm)  # get_rope_index leaves the prompt's mRoPE state on the model
        pos = np.asarray(pos)
        if pos.ndim == 2:
            pos = np.broadcast_to(pos[None], (3, *pos.shape))
        return pos[:, 0, :].astype(np.int32)

    @staticmethod
    def _images(ex, keys=None):
        """(cache key, (patch rows, grid)) of each image of the example (its pixels still held);
        `keys`: the example's keys as already named (`ex.feature_keys`), so they are not hashed again."""
        pv, grid = ex.images.get("pixel_values"), ex.images.get("image_grid_thw")
        if pv is None or grid is None:
            return []
        images, start = [], 0
        for g in grid.reshape(-1, 3):
            n = int(np.prod(g))
            images.append((pv[start:start + n], g))
            start += n
        if keys is None:
            keys = [content_key(rows) + "-" + signature(g)[0] for rows, g in images]
        return list(zip(keys, images))

    def _tower_call(self, images):
        """One tower call on images of any sizes (block-diagonal attention by grid): each one's
        features, split back by its merged-row count."""
        grids = np.stack([g for _, g in images])
        # each picture's rows copied once, joined on the device (a host concatenate first was a
        # second copy on the training thread: ~120 MB a step for four 1,120-px pictures)
        pixels = mx.concatenate([mx.array(r) for r, _ in images]) if len(images) > 1 else mx.array(images[0][0])
        sig = signature(grids)
        if sig in self.compiled_signatures:
            feats, *deep = self._compiled_tower(sig, grids)(pixels)
            deep = deep[0] if deep else None
            self.compiled_calls += 1
        else:
            feats, deep = self.tower_features(self.base.model, pixels, mx.array(grids))
        ends = np.cumsum([r.shape[0] for r, _ in images]) * feats.shape[0] // sum(r.shape[0] for r, _ in images)
        starts = [0, *ends[:-1].tolist()]
        return [(feats[a:b], None if deep is None else deep[:, a:b]) for a, b in zip(starts, ends.tolist())]

    def _compiled_tower(self, sig, grids):
        """The signature's compiled tower: pixels -> (features,) or (features, deepstack), the grid
        a constant of the trace (so it traces: no host read of a traced array), the weights read at
        each call (`inputs`), no gradient."""
        if sig not in self.compiled_towers:
            model, grid = self.base.model, mx.array(grids)

            def tower(pixels):
                feats, deep = self.tower_features(model, pixels, grid)
                return tuple(mx.stop_gradient(a) for a in (feats, deep) if a is not None)

            self.compiled_towers[sig] = mx.compile(tower, inputs=model.vision_tower.state)
        return self.compiled_towers[sig]

    def group_images(self, groups, reread) -> None:
        if self.fast:
            self.cache.plan(groups, reread)
            if self.compiled:  # the signatures met by two planned groups or more, most frequent first
                met = Counter(tuple(k.rsplit("-", 1)[1] for k in keys) for keys, _ in self.cache.groups)
                self.compiled_signatures = frozenset(s for s, n in met.most_common(MAX_COMPILED) if n >= 2)

    def ready(self, ex) -> bool:
        return self.fast and self.cache.ready(ex)

    def fill(self, examples) -> None:
        """Tower features of these examples' images not cached yet, by groups (vision_cache.py);
        the examples' pixels are dropped (the features replace them)."""
        self.cache.fill(examples)

    # ---- per batch (host) ------------------------------------------------------------------------
    def _runs(self, e):
        """Each image's pads, in order: (first pad, pads, key); the processor wrote one pad per row."""
        pads = np.flatnonzero(e.input_ids == self.image_token)
        runs, at = [], 0
        for key in e.feature_keys:
            n = self.features[key].shape[0]
            runs.append((int(pads[at]), n, key))
            at += n
        return runs

    def plan(self, examples) -> Batch:
        if not self.fast:
            return super().plan(examples)
        self.fill(examples)  # this batch's images not seen before (the first epoch)
        batch = gather_plan(examples, self._runs, lambda k: self.features[k].shape[0], pack=self.pack, buckets=self.buckets)
        R, M = batch.src.shape
        positions = np.zeros((3, R, M), np.int32)
        ends = {}  # row -> (end of its last example, that example's last ids)
        for e, (r, o) in zip(examples, batch.placement):
            rp = e.rope_positions
            positions[:, r, o:o + rp.shape[1]] = rp
            last = rp[:, -1:] if rp.shape[1] else np.zeros((3, 1), np.int32)
            if o + rp.shape[1] >= ends.get(r, (0,))[0]:
                ends[r] = (o + rp.shape[1], last)
        for r, (end, last) in ends.items():  # padding continues the row's last example
            positions[:, r, end:] = last + np.arange(1, M - end + 1)
        batch.positions = positions
        return batch

    def inputs(self, batch: Batch):
        if batch.src is None:
            return batch
        a = {"ids": mx.array(batch.input_ids), "feats": cached_features(self.features, batch.feature_keys),
             "src": mx.array(batch.src), "positions": mx.array(batch.positions), "sel": mx.array(batch.sel),
             "sel_targets": mx.array(batch.sel_targets), "sel_weights": mx.array(batch.sel_weights)}
        if batch.segments is not None:
            a["segments"] = mx.array(batch.segments)
        if self.deepstack and batch.feature_keys and batch.feature_keys[0] in self.deep:
            # deepstack rows: 0 is a zero row (text positions), 1 + i is feature row i
            first = batch.input_ids.shape[0] * batch.input_ids.shape[1]
            a["deep"] = mx.concatenate([self.deep[k] for k in batch.feature_keys], axis=1)
            a["deep_src"] = mx.array(np.where(batch.src >= first, batch.src - first + 1, 0).astype(np.int32))
        return a

    # ---- in the step -------------------------------------------------------------------------------
    def fast_hidden(self, model, a: dict):
        lm = model.language_model
        embeds = assemble(lm.model.embed_tokens, a["ids"], a["feats"], a["src"])
        mask = segment_mask(a["segments"]) if "segments" in a else None  # packed rows
        if "deep" in a:
            hidden = self._decode_deepstack(lm.model, embeds, a["positions"], a["deep"], a["deep_src"], mask)
        else:
            hidden = lm.model(mx.zeros(a["src"].shape, mx.int32), inputs_embeds=embeds, mask=mask,
                              position_ids=a["positions"])
        picked = hidden.reshape(-1, hidden.shape[-1])[a["sel"]]
        return lm, picked, a["sel_targets"], a["sel_weights"]

    @staticmethod
    def _decode_deepstack(text_model, h, positions, deep, deep_src, mask=None):
        """mlx-vlm's Qwen3-VL decoder loop, with the deepstack addition as a gather of cached rows
        (its `_deepstack_process` reads the image mask on the host, which a compiled step cannot)."""
        from mlx_vlm.models.base import create_attention_mask

        if mask is None:
            mask = create_attention_mask(h, None)
        rope = text_model.layers[0].self_attn.rotary_emb
        position_embeddings = None if rope.fused_apply else rope(h, positions)
        zero = mx.zeros((deep.shape[0], 1, deep.shape[-1]), h.dtype)
        deep = mx.concatenate([zero, deep.astype(h.dtype)], axis=1)
        for i, layer in enumerate(text_model.layers):
            h = layer(h, mask, None, positions, position_embeddings)
            if i < deep.shape[0]:
                h = h + deep[i][deep_src]
        return text_model.norm(h)
