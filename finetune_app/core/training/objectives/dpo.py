"""Direct Preference Optimization (Rafailov et al. 2023) and its IPO variant (Azar et al. 2023).

With h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l)) for a pair (chosen y_w,
rejected y_l; log-probs of the answer tokens given the prompt):
  DPO  loss = −log σ(β·h)                       (sequence log-probs summed over tokens)
  IPO  loss = (h − 1/(2β))²                     (log-probs averaged over the answer's tokens)
The reference π_ref is the base with the adapter switched off; its log-probs arrive with the
batch (reference.py). Metrics, summed over pairs (the step divides by the pair count): reward
accuracy (β(log π − log π_ref) ranks chosen first), reward margin, and the answers' log-probs.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from finetune_app.core.training.objectives.logps import extra, sequence_logps

NEEDS = ("pairs", "reference_logps")
METRICS = ("reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps")  # what `loss` returns


def settings(cfg) -> dict:
    return {"beta": float(cfg.beta), "ipo": cfg.objective == "ipo"}


def loss(model, family, batch, *, beta: float = 0.1, ipo: bool = False) -> tuple[mx.array, mx.array, dict]:
    logps, tokens = sequence_logps(model, family, batch)
    ref = extra(batch, "ref_logps")
    w = extra(batch, "pair_weights")
    P = w.shape[0]
    scores = logps
    if ipo:  # IPO compares mean token log-probs (the reference covers the same tokens)
        n = mx.maximum(tokens, 1.0)
        scores, ref = logps / n, ref / n
    chosen, rejected, ref_chosen, ref_rejected = scores[:P], scores[P:], ref[:P], ref[P:]
    h = (chosen - rejected) - (ref_chosen - ref_rejected)
    losses = (h - 1.0 / (2.0 * beta)) ** 2 if ipo else -nn.log_sigmoid(beta * h)
    chosen_reward, rejected_reward = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    metrics = {"reward_accuracy": (w * (chosen_reward > rejected_reward)).sum(),
               "reward_margin": (w * (chosen_reward - rejected_reward)).sum(),
               "chosen_logps": (w * logps[:P]).sum(), "rejected_logps": (w * logps[P:]).sum()}
    return (w * losses).sum(), w.sum(), metrics
