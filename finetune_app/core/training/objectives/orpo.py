"""Odds Ratio Preference Optimization (Hong et al. 2024): no reference model.

With P(y) = exp(mean log-prob of the answer's tokens) and odds(y) = P / (1 − P):
  loss = −mean log P(y_w) + λ · (−log σ(log odds(y_w) − log odds(y_l)))
the chosen answers' NLL plus the odds-ratio term, λ = the `beta` setting (as TRL and mlx-vlm
name it). Metrics, summed over pairs: preference accuracy (the log odds ratio is positive), its
mean (the margin), the answers' log-probs and the NLL term.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from finetune_app.core.training.objectives.logps import extra, sequence_logps

NEEDS = ("pairs",)
METRICS = ("reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "nll")  # what `loss` returns


def settings(cfg) -> dict:
    return {"beta": float(cfg.beta)}


def log1mexp(x: mx.array, eps: float = 1e-6) -> mx.array:
    """log(1 − exp(x)) for x < 0, stable at both ends (Mächler 2012)."""
    x = mx.minimum(x, -eps)
    return mx.where(x > -0.6931471805599453, mx.log(-mx.expm1(x)), mx.log1p(-mx.exp(x)))


def loss(model, family, batch, *, beta: float = 0.1) -> tuple[mx.array, mx.array, dict]:
    logps, tokens = sequence_logps(model, family, batch)
    w = extra(batch, "pair_weights")
    P = w.shape[0]
    mean = logps / mx.maximum(tokens, 1.0)
    chosen, rejected = mean[:P], mean[P:]
    log_odds = (chosen - log1mexp(chosen)) - (rejected - log1mexp(rejected))
    losses = -chosen + beta * -nn.log_sigmoid(log_odds)
    metrics = {"reward_accuracy": (w * (log_odds > 0)).sum(), "reward_margin": (w * log_odds).sum(),
               "chosen_logps": (w * logps[:P]).sum(), "rejected_logps": (w * logps[P:]).sum(),
               "nll": (w * -chosen).sum()}
    return (w * losses).sum(), w.sum(), metrics
