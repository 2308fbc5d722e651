"""The fast training step: frozen-tower features from a cache, embeddings assembled by one gather,
and the language model's forward/backward/update compiled with `mx.compile`.

Why: on small and mid-size models a step is dominated by per-op overhead and by re-running the
frozen vision tower every epoch. mlx-vlm's `--compile` fails on the Qwen-VL models because their
vision code evaluates arrays inside the traced function (`rot_pos_emb`, `get_rope_index`); here
everything data-dependent is computed on the host before the step (gather indices, mRoPE position
ids, targets in model-position space), so the compiled function sees only arrays.

The plan for a batch maps each position the language model sees to a row of
`concat(token_embeddings, image_features)`: Qwen-VL image-pad tokens take their image's feature
rows one to one; a FastVLM `-200` placeholder becomes its F feature rows. Targets are laid out in
the same model positions (the position before a token predicts it), so the loss is the plain
shifted cross-entropy the reference path (forward.py) computes; tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from finetune_app.core.vision_cache import VisionFeatureCache, content_key

QWEN_MROPE = ("qwen2_vl", "qwen2_5_vl")
TEXT_FAST = ("llama", "qwen2", "qwen3", "mistral")  # plain decoder + head, no logit scaling

def padded_length(n: int) -> int:
    """Round a batch's length up to a multiple of 1/32 of its power-of-two ceiling: under 6.25%
    padding, and at most 16 distinct shapes per octave for the compiled step to be traced for."""
    step = max(1, (1 << max(0, (n - 1).bit_length())) // 32)
    return -(-n // step) * step


@dataclass
class Plan:
    ids: np.ndarray  # int32 [B, L] token ids (placeholders as 0)
    src: np.ndarray  # int32 [B, M] row of concat(tokens [B*L], features) for each model position
    targets: np.ndarray  # int32 [B, M] token predicted at each model position
    tmask: np.ndarray  # float32 [B, M] 1 where that prediction is supervised
    positions: np.ndarray | None  # int32 [3, B, M] mRoPE ids (Qwen-VL) or None
    feature_keys: list  # cache keys of the feature rows, in order
    n_targets: int
    sel: np.ndarray = None  # int32 [K] flat model positions (b*M + m) whose prediction is supervised
    sel_targets: np.ndarray = None  # int32 [K] the tokens they predict
    sel_weights: np.ndarray = None  # float32 [K] 1, or 0 for padding entries


def supported(base, cfg) -> str | None:
    """Which fast path applies ("text", "fastvlm", "qwen"), or None for the reference path."""
    if base.kind == "text":
        return "text" if base.model_type in TEXT_FAST else None
    if cfg.train_vision or not cfg.cache_vision:
        return None
    if base.is_fastvlm:
        return "fastvlm"
    if base.model_type in QWEN_MROPE and not cfg.train_projector:  # the merger sits inside the tower
        return "qwen"
    return None


class FastPath:
    def __init__(self, base, cfg, kind: str, *, compile: bool = True, world=None):
        from finetune_app.core.distributed import world as current_world

        self.world = world or current_world()
        self.base = base
        self.cfg = cfg
        self.kind = kind
        self.model = base.model
        self.compile = compile
        config = base.config
        self.image_token = config.get("image_token_index", config.get("image_token_id"))
        self.cache: VisionFeatureCache | None = None
        if kind == "fastvlm":
            from finetune_app.core.training.forward import Forward

            self.cache = VisionFeatureCache(lambda pv: Forward.tower_features(self.model, pv))
        elif kind == "qwen":
            self.cache = VisionFeatureCache(None)
        self._steps = {}

    # ---- per-example preparation (once) --------------------------------------------------------
    def prepare_example(self, ex) -> None:
        """Replace an example's pixels by cached features; precompute Qwen mRoPE position ids."""
        if self.kind == "fastvlm":
            self.cache.add_examples([ex])
        elif self.kind == "qwen":
            self._prepare_qwen(ex)

    def _prepare_qwen(self, ex) -> None:
        pv, grid = ex.images.get("pixel_values"), ex.images.get("image_grid_thw")
        keys = []
        if pv is not None and grid is not None:
            start = 0
            for g in grid.reshape(-1, 3):
                n = int(np.prod(g))
                rows, key = pv[start:start + n], None
                start += n
                key = content_key(rows) + "-" + "x".join(map(str, g.tolist()))
                if key not in self.cache.features:
                    feats = self.model.vision_tower(mx.array(rows), mx.array(g[None]), output_hidden_states=False)
                    feats = feats[0] if isinstance(feats, tuple) else feats
                    mx.eval(feats)
                    self.cache.features[key] = feats
                keys.append(key)
        lm = self.model.language_model
        pos, _ = lm.get_rope_index(mx.array(ex.input_ids[None]), mx.array(grid) if grid is not None else None, None, None)
        pos = np.asarray(pos)
        if pos.ndim == 2:  # a row without images: plain positions, the same on all three axes
            pos = np.broadcast_to(pos[None], (3, *pos.shape))
        ex.rope_positions = pos[:, 0, :].astype(np.int32)  # [3, L]
        lm._rope_deltas = lm._position_ids = None
        ex.feature_keys = keys
        ex.images = {}

    # ---- per-batch plan (host) -----------------------------------------------------------------
    def plan(self, examples) -> Plan:
        B = len(examples)
        L = max(len(e.input_ids) for e in examples)
        F = None
        if self.kind == "fastvlm":
            keys = [k for e in examples for k in e.feature_keys]
            F = self.cache.features[keys[0]].shape[0] if keys else 1
        lengths = []
        for e in examples:
            n = len(e.input_ids)
            if self.kind == "fastvlm":
                n += int((e.input_ids == self.image_token).sum()) * (F - 1)
            lengths.append(n)
        M = padded_length(max(lengths))
        if self.kind == "text":  # model positions are token positions; pad ids too
            L = M
        ids = np.zeros((B, L), np.int32)
        src = np.zeros((B, M), np.int32)
        targets = np.zeros((B, M), np.int32)
        tmask = np.zeros((B, M), np.float32)
        positions = np.zeros((3, B, M), np.int32) if self.kind == "qwen" else None
        feature_keys: list = []
        feat_row = B * L
        for b, e in enumerate(examples):
            tok = e.input_ids
            ids[b, :len(tok)] = np.maximum(tok, 0)
            m = 0  # model position
            keys = iter(e.feature_keys)
            qwen_rows = None
            for t, token in enumerate(tok):
                if self.kind == "fastvlm" and token == self.image_token:
                    key = next(keys)
                    feature_keys.append(key)
                    src[b, m:m + F] = np.arange(feat_row, feat_row + F)
                    feat_row += F
                    m += F
                elif self.kind == "qwen" and token == self.image_token:
                    if qwen_rows is None or qwen_rows[0] >= qwen_rows[1]:
                        key = next(keys)
                        feature_keys.append(key)
                        n = self.cache.features[key].shape[0]
                        qwen_rows = [feat_row, feat_row + n]
                        feat_row += n
                    src[b, m] = qwen_rows[0]
                    qwen_rows[0] += 1
                    m += 1
                else:
                    src[b, m] = b * L + t
                    m += 1
                # the position just written (m - 1) predicts token t + 1
                if t + 1 < len(tok) and e.target_mask[t + 1]:
                    targets[b, m - 1] = tok[t + 1]
                    tmask[b, m - 1] = 1.0
            src[b, m:] = b * L + len(tok) - 1 if len(tok) else 0
            if positions is not None:
                rp = e.rope_positions
                positions[:, b, :rp.shape[1]] = rp
                last = rp[:, -1:] if rp.shape[1] else np.zeros((3, 1), np.int32)
                positions[:, b, rp.shape[1]:] = last + np.arange(1, M - rp.shape[1] + 1)
        # Only supervised positions need logits: gather them before the LM head (the head is the
        # largest matmul of a small model, and its float32 logits dominate peak memory).
        flat = np.flatnonzero(tmask.reshape(-1)).astype(np.int32)
        K = padded_length(max(1, len(flat)))
        sel = np.zeros(K, np.int32)
        sel_targets = np.zeros(K, np.int32)
        sel_weights = np.zeros(K, np.float32)
        sel[:len(flat)] = flat
        sel_targets[:len(flat)] = targets.reshape(-1)[flat]
        sel_weights[:len(flat)] = 1.0
        return Plan(ids=ids, src=src, targets=targets, tmask=tmask, positions=positions,
                    feature_keys=feature_keys, n_targets=len(flat), sel=sel, sel_targets=sel_targets,
                    sel_weights=sel_weights)

    # ---- the step ------------------------------------------------------------------------------
    def _features(self, plan: Plan) -> mx.array:
        if not plan.feature_keys:
            return mx.zeros((0, 1), mx.float32)
        return mx.concatenate([self.cache.features[k] for k in plan.feature_keys], axis=0)

    def loss_sum(self, ids, feats, src, positions, sel, sel_targets, sel_weights):
        model = self.model
        if self.kind == "text":
            owner = model
            hidden = model.model(ids)
        else:
            owner = lm = model.language_model
            tok = lm.model.embed_tokens(ids)
            B, L, D = tok.shape
            if self.kind == "fastvlm":
                feats = model.mm_projector(feats.astype(tok.dtype)) if feats.shape[0] else feats
            rows = tok.reshape(B * L, D)
            if feats.shape[0]:
                rows = mx.concatenate([rows, feats.reshape(-1, D).astype(tok.dtype)], axis=0)
            embeds = rows[src]
            dummy = mx.zeros(src.shape, mx.int32)
            if self.kind == "qwen":
                hidden = lm.model(dummy, inputs_embeds=embeds, position_ids=positions)
            else:
                hidden = lm.model(dummy, input_embeddings=embeds)
        picked = hidden.reshape(-1, hidden.shape[-1])[sel]
        logits = owner.lm_head(picked) if "lm_head" in owner else owner.model.embed_tokens.as_linear(picked)
        ce = nn.losses.cross_entropy(logits.astype(mx.float32), sel_targets, reduction="none")
        return (ce * sel_weights).sum()

    def _arrays(self, plan: Plan):
        feats = self._features(plan)
        if self.kind == "fastvlm" and plan.feature_keys:
            n = len(plan.feature_keys)
            feats = feats.reshape(n, -1, feats.shape[-1])
        pos = mx.array(plan.positions) if plan.positions is not None else mx.zeros((1,), mx.int32)
        return (mx.array(plan.ids), feats, mx.array(plan.src), pos, mx.array(plan.sel), mx.array(plan.sel_targets),
                mx.array(plan.sel_weights))

    def make_step(self, optimizer, grad_clip: float | None, accumulate: bool):
        model = self.model

        def loss_fn(norm, *arrays):
            return self.loss_sum(*arrays) / norm

        loss_and_grad = nn.value_and_grad(model, loss_fn)

        if accumulate:
            def grads_only(norm, *arrays):
                loss, grads = loss_and_grad(norm, *arrays)
                return self.world.sum(loss), self.world.sum_tree(grads)

            if not self.compile:
                return grads_only
            # value_and_grad swaps traced arrays into the model: the model state is an output too
            state = [model.state, mx.random.state]
            return mx.compile(grads_only, inputs=state, outputs=state)

        def full_step(norm, *arrays):
            loss, grads = loss_and_grad(norm, *arrays)
            loss, grads = self.world.sum(loss), self.world.sum_tree(grads)  # data parallel: sum shards
            grad_norm = mx.array(0.0)
            if grad_clip:
                grads, grad_norm = optim.clip_grad_norm(grads, grad_clip)
            optimizer.update(model, grads)
            return loss, grad_norm

        if not self.compile:
            return full_step
        state = [model.state, optimizer.state, mx.random.state]
        return partial(mx.compile, inputs=state, outputs=state)(full_step)

    def train_step(self, plans: list[Plan], optimizer, grad_clip, norm: float | None = None):
        """`norm`: supervised tokens of the whole (global) step; the plans' own count by default."""
        norm = mx.array(float(norm if norm is not None else sum(p.n_targets for p in plans)) or 1.0)
        if len(plans) == 1:
            step = self._steps.get("full") or self._steps.setdefault("full", self.make_step(optimizer, grad_clip, False))
            loss, grad_norm = step(norm, *self._arrays(plans[0]))
            return loss, (grad_norm if grad_clip else None)
        step = self._steps.get("acc") or self._steps.setdefault("acc", self.make_step(optimizer, grad_clip, True))
        from mlx.utils import tree_map

        grads, loss = None, mx.array(0.0)
        for p in plans:
            l, g = step(norm, *self._arrays(p))
            grads = g if grads is None else tree_map(mx.add, grads, g)
            loss = loss + l
        grad_norm = None
        if grad_clip:
            grads, grad_norm = optim.clip_grad_norm(grads, grad_clip)
        optimizer.update(self.model, grads)
        return loss, grad_norm

    def loss_of(self, plan: Plan) -> tuple[mx.array, int]:
        """Summed loss of one batch without gradients (validation)."""
        return self.loss_sum(*self._arrays(plan)), plan.n_targets
