"""One Batch for every path: what a family plans from tokenised examples for one step.

The library path (generic family) uses the padded ids, attention and target masks and the
processor's image tensors. The fast path also lays the batch out in *model positions*: each
position the language model sees is a row of `concat(token_embeddings [B*L], image_features)`
(`src`), so embeddings are assembled by one gather inside a compiled step; the supervised
positions and the tokens they predict are picked on the host (`sel`, `sel_targets`,
`sel_weights`), so only they reach the LM head. Everything data-dependent is computed here, on
the host, before the step: the compiled function sees arrays only.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np


def padded_length(n: int) -> int:
    """Round a length up to a multiple of 1/32 of its power-of-two ceiling: under 6.25% padding,
    and at most 16 distinct shapes per octave for a compiled step to be traced for."""
    step = max(1, (1 << max(0, (n - 1).bit_length())) // 32)
    return -(-n // step) * step


SHAPE_CAP = 8  # distinct (positions, supervised) shapes of the compiled step in a run
# On CUDA (#16 textwarm) fewer: each new shape costs ~0.45-0.66 s of trace and kernel load even
# with warm kernel caches, while the H200's LoRA step is launch-bound at these sizes (a 3B step at
# 4 x 128 and 4 x 256 positions both ~90-97 ms, 4 x 512 ~128 ms): on 1,000 Alpaca-shaped rows 4
# shapes pad more (real/padded positions 0.72 vs 0.85) and come out ~1.4-2.2 s ahead (modelled from
# those step times: docs/performance.md "Text fixed costs (textwarm)"). A Mac's GPU is not
# launch-bound there (padding costs step time), so it keeps SHAPE_CAP.
CUDA_SHAPE_CAP = 4


def shape_cap() -> int:
    """The run's shape cap on this back-end."""
    from finetune_app.core.training.backend import on_cuda

    return CUDA_SHAPE_CAP if on_cuda() else SHAPE_CAP


def _cheapest_sizes(values: list[int], weights: list[int], cap: int) -> list[int]:
    """At most `cap` of the sorted distinct `values` (the largest always among them) such that
    padding each value up to the next chosen one costs the fewest padded units in all (weight x
    chosen size): a small dynamic programme over the cut points."""
    n = len(values)
    if n <= cap:
        return list(values)
    acc = np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])
    cost = np.full((cap + 1, n + 1), np.inf)  # cost[g, j]: values[:j] padded in g groups
    cut = np.zeros((cap + 1, n + 1), np.int64)
    cost[0, 0] = 0.0
    for g in range(1, cap + 1):
        for j in range(g, n + 1):
            c = cost[g - 1, :j] + values[j - 1] * (acc[j] - acc[:j])  # last group: values[i:j]
            cut[g, j] = int(np.argmin(c))
            cost[g, j] = c[cut[g, j]]
    g = int(np.argmin(cost[1:, n])) + 1
    sizes, j = [], n
    while j:
        sizes.append(values[j - 1])
        j, g = int(cut[g, j]), g - 1
    return sorted(sizes)


class ShapePlan:
    """The compiled step's shapes in a run (#16): at most `cap` (default `shape_cap()`) (positions
    M, supervised K) pairs, planned once from the run's batches, so the step is traced (and on CUDA
    its kernels loaded) a handful of times. M sizes: those of the batches' padded lengths that leave the fewest padded
    positions; each M's K: the largest padded supervised count among the batches it takes (the
    LM head still sees supervised positions only; padding entries weigh 0). A function of the data
    and (seed, epoch 0)'s batches, so a resumed run pads exactly as the uninterrupted one did.

    `batches`: (rows, longest length, supervised tokens) of each batch."""

    def __init__(self, batches, cap: int | None = None):
        cap = shape_cap() if cap is None else cap
        by_size: dict[int, int] = {}
        for rows, longest, _ in batches:
            m = padded_length(max(1, longest))
            by_size[m] = by_size.get(m, 0) + rows
        values = sorted(by_size)
        self.sizes = _cheapest_sizes(values, [by_size[v] for v in values], cap)
        k_of: dict[int, int] = {}
        for _, longest, supervised in batches:
            m = self.positions(longest)
            k_of[m] = max(k_of.get(m, 1), padded_length(max(1, supervised)))
        self.shapes = sorted(k_of.items())  # (M, K), by M

    def positions(self, n: int) -> int:
        """The planned M for a row of n positions (past the largest: its own padded size)."""
        i = bisect.bisect_left(self.sizes, n)
        return self.sizes[i] if i < len(self.sizes) else padded_length(n)

    def __call__(self, longest: int, supervised: int) -> tuple[int, int]:
        """(M, K) of a batch: the smallest planned shape that holds it, else its own padded sizes
        (a later epoch's batch beyond the plan: one more trace)."""
        for m, k in self.shapes:
            if m >= longest and k >= supervised:
                return m, k
        return self.positions(longest), padded_length(max(1, supervised))


def unplanned(longest: int, supervised: int) -> tuple[int, int]:
    """(M, K) without a run's plan: each padded on its own."""
    return padded_length(max(1, longest)), padded_length(max(1, supervised))


@dataclass
class Batch:
    input_ids: np.ndarray  # int32 [B, L] (fast path: placeholders as 0, padded to M for text)
    target_mask: np.ndarray  # bool [B, L]: token t is supervised (predicted from position t-1)
    n_targets: int  # supervised tokens (the step's loss normaliser)
    attention_mask: np.ndarray | None = None  # int32 [B, L] (library path)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # processor outputs (library path)
    image_positions: list[list[int]] = field(default_factory=list)  # placeholders a model expands itself
    indices: list[int] = field(default_factory=list)  # dataset rows
    # ---- the fast path (model positions) ----
    src: np.ndarray | None = None  # int32 [B, M]: row of concat(tokens, features) at each position
    positions: np.ndarray | None = None  # int32 [3, B, M]: mRoPE position ids (Qwen-VL)
    feature_keys: list = field(default_factory=list)  # vision-cache keys of the feature rows, in order
    sel: np.ndarray | None = None  # int32 [K]: flat positions (b*M + m) whose prediction is supervised
    sel_targets: np.ndarray | None = None  # int32 [K]: the tokens they predict
    sel_weights: np.ndarray | None = None  # float32 [K]: 1, or 0 for padding entries
    segments: np.ndarray | None = None  # int32 [R, M] when packed: 1 + example's slot in its row, 0 padding
    placement: list[tuple[int, int]] = field(default_factory=list)  # (row, first position) of each example
    # ---- what an objective needs beyond the tokens (its NEEDS: pairs, reference log-probs, ...) ----
    units: int | None = None  # what the objective's loss is a mean over, when not tokens (pairs)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # reaches the objective as device arrays

    def prediction_rows(self) -> np.ndarray:
        """The row of each prediction `family.predictions` returns, in its order (int32 [K])."""
        if self.sel is not None:
            return (self.sel // self.src.shape[1]).astype(np.int32)
        B, L = self.input_ids.shape
        return np.repeat(np.arange(B, dtype=np.int32), max(L - 1, 0))

    @property
    def n_examples(self) -> int:
        return len(self.indices)


def collate(examples: list, pad_id: int, expanded_token: int | None = None) -> Batch:
    """The library path's batch: ids right-padded to the longest row. `expanded_token`: the
    placeholder a model expands into several positions itself (its positions are recorded)."""
    longest = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = np.full((B, longest), pad_id, dtype=np.int32)
    attn = np.zeros((B, longest), dtype=np.int32)
    tmask = np.zeros((B, longest), dtype=bool)
    positions = []
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = e.input_ids
        attn[r, :n] = 1
        tmask[r, :n] = e.target_mask
        positions.append(np.flatnonzero(e.input_ids == expanded_token).tolist() if expanded_token is not None else [])
    images = {}
    for k in sorted({k for e in examples for k in e.images}):
        parts = [e.images[k] for e in examples if k in e.images]
        # Qwen-style patch rows and grid_thw rows concatenate; FastVLM's [1,3,H,W] too.
        images[k] = np.concatenate(parts, axis=0) if parts[0].ndim >= 1 else np.stack(parts)
    return Batch(input_ids=ids, target_mask=tmask, n_targets=int(tmask[:, 1:].sum()), attention_mask=attn,
                 images=images, image_positions=positions, indices=[e.index for e in examples])


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence packing: examples (by index into `lengths`) into rows of at most `capacity`
    positions, first fit by decreasing length; deterministic (ties by index), so the step's layout
    is a function of its examples alone."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if r is None:
            rows.append([i])
            free.append(capacity - lengths[i])
        else:
            rows[r].append(i)
            free[r] -= lengths[i]
    return rows


def segment_mask(segments):
    """Block-diagonal causal attention mask [R, 1, M, M] (bool, True = may attend) from packed
    segment ids [R, M]: a position sees the earlier positions of its own example only. Built in
    the step from the device array, so a compiled step traces it once per shape."""
    import mlx.core as mx

    M = segments.shape[1]
    causal = mx.arange(M)[:, None] >= mx.arange(M)[None, :]
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


def gather_plan(examples: list, runs_of, rows_of, *, pad_ids: bool = False, pack: bool = False,
                buckets: tuple | None = None) -> Batch:
    """The fast path's batch. `runs_of(example)`: the example's images as (first token, tokens,
    cache key) runs of image tokens; `rows_of(key)`: feature rows that image expands into. A run
    of c tokens becomes n model positions; its j-th token sits at the run's position n - c + j
    (one FastVLM placeholder -> its last feature row; Qwen pads one to one). `pad_ids`: text
    models, whose model positions are token positions, get ids padded to M too.
    `pack`: several examples share a row of model positions (`pack_rows`, capacity the longest
    example's padded length), told apart by `segments`; `src` still gathers each example's own
    token rows, so ids stay one row per example. `buckets`: the run's `ShapePlan` (default:
    each size padded on its own)."""
    B = len(examples)
    runs = [runs_of(e) for e in examples]
    lengths = [len(e.input_ids) + sum(rows_of(k) - c for _, c, k in r) for e, r in zip(examples, runs)]
    n_sup = sum(int(np.count_nonzero(e.target_mask[1:])) for e in examples)
    M, K = (buckets or unplanned)(max(lengths), n_sup)
    rows = pack_rows(lengths, M) if pack else [[b] for b in range(B)]
    pack = len(rows) < B  # nothing shares a row: the plain layout (its causal mask is the fast one)
    if not pack:
        rows = [[b] for b in range(B)]
    R = len(rows)
    longest_ids = max(len(e.input_ids) for e in examples)  # bucketed too: the ids are a step input
    L = M if pad_ids else (buckets.positions if buckets else padded_length)(longest_ids)
    ids = np.zeros((B, L), np.int32)
    tmask = np.zeros((B, L), bool)
    src = np.zeros((R, M), np.int32)
    segments = np.zeros((R, M), np.int32)
    targets = np.zeros((R, M), np.int32)
    supervised = np.zeros((R, M), bool)
    row_of, offset_of = [0] * B, [0] * B
    for r, members in enumerate(rows):
        o = 0
        for slot, b in enumerate(members):
            row_of[b], offset_of[b] = r, o
            segments[r, o:o + lengths[b]] = slot + 1
            o += lengths[b]
    feature_keys: list = []
    feat_row = B * L
    for b, (e, example_runs) in enumerate(zip(examples, runs)):
        r, o = row_of[b], offset_of[b]
        tok = e.input_ids
        ids[b, :len(tok)] = np.maximum(tok, 0)
        tmask[b, :len(tok)] = e.target_mask
        where = np.empty(len(tok), np.int64)  # model position of each token
        m, t = o, 0
        for start, c, key in example_runs:
            n = rows_of(key)
            where[t:start] = np.arange(m, m + start - t)
            src[r, m:m + start - t] = b * L + np.arange(t, start)
            m += start - t
            src[r, m:m + n] = np.arange(feat_row, feat_row + n)
            where[start:start + c] = m + n - c + np.arange(c)
            feature_keys.append(key)
            feat_row += n
            m += n
            t = start + c
        where[t:] = np.arange(m, m + len(tok) - t)
        src[r, m:m + len(tok) - t] = b * L + np.arange(t, len(tok))
        m += len(tok) - t
        if b == rows[r][-1]:  # the row's padding repeats its last token
            src[r, m:] = b * L + len(tok) - 1 if len(tok) else 0
        sup = np.flatnonzero(e.target_mask[1:])  # token s + 1 is predicted at token s's position
        targets[r, where[sup]] = tok[sup + 1]
        supervised[r, where[sup]] = True
    # Only supervised positions need logits: gather them before the LM head (the head is the
    # largest matmul of a small model, and its float32 logits dominate peak memory).
    flat = np.flatnonzero(supervised.reshape(-1)).astype(np.int32)
    sel, sel_targets, sel_weights = np.zeros(K, np.int32), np.zeros(K, np.int32), np.zeros(K, np.float32)
    sel[:len(flat)] = flat
    sel_targets[:len(flat)] = targets.reshape(-1)[flat]
    sel_weights[:len(flat)] = 1.0
    batch = Batch(input_ids=ids, target_mask=tmask, n_targets=len(flat), indices=[e.index for e in examples],
                  src=src, feature_keys=feature_keys, sel=sel, sel_targets=sel_targets, sel_weights=sel_weights,
                  segments=segments if pack else None, placement=list(zip(row_of, offset_of)))
    return batch
