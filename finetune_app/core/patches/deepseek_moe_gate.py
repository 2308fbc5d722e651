"""mlx-vlm 0.7.10's DeepSeek-VL2 MoE gate (``mlx_vlm.models.deepseek_vl_v2.language.MoEGate``)
zeroes the dropped expert groups with ``scores[batch_idx, seq_idx, group_idx] = 0.0``, where
``group_idx`` comes from ``argpartition`` of the scores themselves. The indices therefore sit on
the gradient tape, and any gradient through the language model fails with
"[scatter] Cannot calculate VJP with respect to indices" (LoRA included: the gate is upstream of
every adapted layer after the first MoE block).

The patch is the library's own ``__call__`` with ``mx.stop_gradient`` on the routing indices
(``group_idx`` and, in the ``noaux_tc`` branch, ``inds``): the forward values are identical, so
inference is unchanged and an adapter trained with the patch runs on the plain library. Routing
is a discrete choice, so no gradient was lost.
"""

from __future__ import annotations

WRITTEN_FOR = {"mlx-vlm": "0.7.10"}
MARK = "_finetune_patched"
_original = None


def _tiny_gate():
    from mlx_vlm.models.deepseek_vl_v2.config import TextConfig
    from mlx_vlm.models.deepseek_vl_v2.language import MoEGate

    config = TextConfig.from_dict({"hidden_size": 8, "n_routed_experts": 4, "num_experts_per_tok": 2,
                                   "topk_method": "greedy", "model_type": "deepseek_v2"})
    return MoEGate(config)


def still_needed() -> bool:
    """True while differentiating the library's own gate fails."""
    import mlx.core as mx

    from mlx_vlm.models.deepseek_vl_v2.language import MoEGate

    call = _original or MoEGate.__call__
    gate, x = _tiny_gate(), mx.ones((1, 2, 8))
    gate.weight = mx.ones((4, 8)) / 8
    try:
        mx.eval(mx.grad(lambda v: call(gate, v)[1].sum())(x))
    except (ValueError, RuntimeError):
        return True
    return False


def _call(self, x):
    import mlx.core as mx

    gates = x @ self.weight.T
    if self.scoring_func == "softmax":
        scores = mx.softmax(gates, axis=-1, precise=True)
    elif self.scoring_func == "sigmoid":
        scores = mx.sigmoid(gates)
    else:
        raise ValueError(f"Unknown scoring function: {self.scoring_func}")

    bsz, seq_len = x.shape[:2]
    batch_idx = mx.expand_dims(mx.arange(bsz), (1, 2))
    seq_idx = mx.expand_dims(mx.arange(seq_len), (0, 2))
    k = self.n_group - self.topk_group
    if self.topk_method == "greedy":
        scores = scores.reshape(bsz, seq_len, self.n_group, -1)
        group_scores = scores.max(axis=-1)
        group_idx = mx.stop_gradient(mx.argpartition(group_scores, kth=k - 1, axis=-1)[..., :k])
        scores[batch_idx, seq_idx, group_idx] = 0.0
        scores = scores.reshape(bsz, seq_len, -1)
        inds = mx.stop_gradient(mx.argpartition(-scores, kth=self.top_k - 1, axis=-1)[..., :self.top_k])
        scores = mx.take_along_axis(scores, inds, axis=-1)
    elif self.topk_method == "noaux_tc":
        choice = scores.reshape(bsz * seq_len, -1) + mx.expand_dims(self.e_score_correction_bias, 0)
        group_scores = mx.topk(choice.reshape(bsz * seq_len, self.n_group, -1), 2, axis=-1).sum(axis=-1)
        group_idx = mx.stop_gradient(mx.argpartition(group_scores, kth=k - 1, axis=-1)[..., :k])
        scores[batch_idx, seq_idx, group_idx] = 0.0
        inds = mx.stop_gradient(mx.argpartition(scores, kth=-self.top_k, axis=-1)[..., -self.top_k:])
        flat = scores.reshape(bsz * seq_len, -1)
        rows = mx.expand_dims(mx.arange(bsz * seq_len), 1)
        scores = mx.take(flat, inds + rows * flat.shape[1])
    else:
        raise ValueError(f"Unknown topk method: {self.topk_method}")
    return inds, scores * self.routed_scaling_factor


def apply() -> None:
    global _original
    from mlx_vlm.models.deepseek_vl_v2.language import MoEGate

    if getattr(MoEGate.__call__, MARK, False):
        return
    _original = MoEGate.__call__
    setattr(_call, MARK, True)
    MoEGate.__call__ = _call
