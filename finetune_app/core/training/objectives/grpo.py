"""GRPO (DeepSeekMath, Shao et al. 2024): sample G answers per prompt with the current model,
score them with verifiable rewards (core/rewards.py), and push up the answers that beat their
group's mean, with a KL penalty to the base model (the adapter switched off).

Per completion token t of answer i of a group (the paper's eq. 3, as TRL computes it):

    r_t   = exp(logp_t - logp_old_t)            old policy: the model when the answers were sampled
    A_i   = (R_i - mean(R_group)) / (std(R_group) + 1e-4)       (sample std, as TRL's torch.std)
    kl_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1          (the k3 estimator, >= 0)
    l_t   = -(min(r_t A_i, clip(r_t, 1 - eps, 1 + eps) A_i) - beta kl_t)

and the loss is the mean over answers of each answer's token mean (`sum` = sum over answers of
their token means, `count` = answers). One update per sampled batch, so r_t is 1 up to dropout;
the formula is kept so the same code serves several updates per batch. The prompts' tokens are
never in the loss.

`Rollout` is the sampling half, run by the trainer in place of plain batching: prompt ids are the
Example's tokens before its answer, answers are sampled by mlx-lm / mlx-vlm's own `generate_step`
with the global MLX random state, which the loop seeds from (seed, step), so a resumed run samples
the same answers. It runs on the library path (the family's fast path is off for GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from finetune_app.core.data.tokenize import Example
from finetune_app.core.training.batch import Batch

NEEDS = ("target_mask",)  # {"prompt", "answer"} rows: the prompt is what comes before the answer


@dataclass
class GroupBatch(Batch):
    """A Batch of sampled answers (G consecutive rows per prompt) with what the loss needs, each
    laid out like `family.predictions` on the library path: one entry per position [B, L-1]."""

    advantages: np.ndarray | None = None  # float32: the advantage of the answer the position belongs to
    scale: np.ndarray | None = None  # float32: 1 / (tokens of that answer) on answer positions, else 0
    old_logps: mx.array | None = None  # log-probabilities of the sampled tokens when sampled
    ref_logps: mx.array | None = None  # ... under the base model (None when beta is 0)
    beta: float = 0.0
    clip: float = 0.2
    n_answers: int = 0


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) at each position, in float32."""
    return -nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")


def k3(ref: mx.array, logp: mx.array) -> mx.array:
    """Schulman's k3 estimator of KL(policy || reference) at each sampled token."""
    d = ref - logp
    return mx.exp(d) - d - 1


def loss(model, family, batch: GroupBatch) -> tuple[mx.array, mx.array, dict]:
    logits, targets, _ = family.predictions(model, batch)
    logp = token_logps(logits, targets)
    scale = mx.array(batch.scale)
    mask = scale > 0
    adv = mx.array(batch.advantages)
    ratio = mx.exp(mx.where(mask, logp - batch.old_logps, 0.0))  # masked first: no inf * 0 on padding
    clipped = mx.clip(ratio, 1 - batch.clip, 1 + batch.clip)
    per_token = -mx.minimum(ratio * adv, clipped * adv)
    metrics = {}
    if batch.beta:
        kl = k3(mx.where(mask, batch.ref_logps, logp), logp)
        per_token = per_token + batch.beta * kl
        metrics["kl"] = (kl * scale).sum()
    return (per_token * scale).sum(), mx.array(float(batch.n_answers)), metrics


def advantages(rewards: np.ndarray, group: int) -> np.ndarray:
    """Group-normalised advantages of rewards laid out G per prompt."""
    r = rewards.reshape(-1, group).astype(np.float64)
    std = r.std(axis=1, ddof=1, keepdims=True)
    return ((r - r.mean(axis=1, keepdims=True)) / (std + 1e-4)).reshape(-1).astype(np.float32)


def prompt_length(ex: Example) -> int:
    """Tokens before the answer (the first supervised token)."""
    hits = np.flatnonzero(ex.target_mask)
    return int(hits[0]) if len(hits) else len(ex.input_ids)


@dataclass
class Sampled:
    index: int  # dataset row
    tokens: list[int]
    text: str
    reward: float
    parts: dict
    live: bool = True  # False: a data-parallel filler row's answer (trains nothing, reported nowhere)
    kl: float | None = None  # to the base at sampling time, the token mean of k3 (None without beta)


class Rollout:
    """Samples, scores and lays out one GRPO batch. `answer_of(row)`: the row's reference answer."""

    def __init__(self, cfg, base, family, reward, answer_of):
        self.cfg, self.base, self.family, self.reward, self.answer_of = cfg, base, family, reward, answer_of
        tok = base.tokenizer
        eos = getattr(tok, "eos_token_ids", None) or tok.eos_token_id
        self.eos = {int(t) for t in (eos if isinstance(eos, (list, tuple, set)) else [eos]) if t is not None}

    def sample(self, ex: Example, prompt: np.ndarray) -> list[int]:
        from mlx_lm.sample_utils import make_sampler

        from finetune_app.core.generate import vocab_guard

        cfg, model = self.cfg, self.base.model
        kwargs = dict(max_tokens=cfg.grpo_max_tokens, sampler=make_sampler(temp=cfg.grpo_temperature),
                      logits_processors=[vocab_guard(self.base.tokenizer)])
        if self.base.kind == "vlm":
            from mlx_vlm.generate.ar import generate_step

            images = {k: mx.array(v) for k, v in ex.images.items()}
            pixels = images.pop("pixel_values", None)
            steps = generate_step(mx.array(prompt[None]), model, pixels, None, **kwargs, **images)
        else:
            from mlx_lm.generate import generate_step

            steps = generate_step(mx.array(prompt), model, **kwargs)
        out = []
        for token, _ in steps:
            t = int(token.item() if hasattr(token, "item") else token)
            out.append(t)
            if t in self.eos:
                break
        return out

    def __call__(self, examples: list[Example], seed_of=None) -> tuple[GroupBatch, list[Sampled]]:
        """`seed_of(example)`: the random seed its G answers are sampled from, so an answer does
        not depend on which process or batch the prompt lands in (data parallel)."""
        G, model = self.cfg.grpo_group_size, self.base.model
        model.eval()  # sampling without dropout; the trainer restores its modes
        rows, sampled = [], []
        for ex in examples:
            if seed_of is not None:
                mx.random.seed(seed_of(ex))
            P = prompt_length(ex)
            prompt = ex.input_ids[:P]
            answer = self.answer_of(ex.index)
            live = bool(ex.target_mask.any())  # a data-parallel filler row contributes nothing
            for _ in range(G):
                toks = self.sample(ex, prompt)
                text = self.base.tokenizer.decode([t for t in toks if t not in self.eos])
                reward, parts = self.reward.score(text, answer)
                sampled.append(Sampled(ex.index, toks, text, reward, parts, live))
                ids = np.concatenate([prompt, np.asarray(toks, np.int32)]).astype(np.int32)
                mask = np.zeros(len(ids), bool)
                mask[P:] = live
                rows.append(Example(index=ex.index, input_ids=ids, target_mask=mask, images=ex.images,
                                    n_images=ex.n_images, model_length=len(ids)))
        n_answers = G * sum(1 for e in examples if e.target_mask.any())
        batch = self.layout(rows, np.array([s.reward for s in sampled], np.float32), n_answers)
        if batch.ref_logps is not None:
            scale = mx.array(batch.scale)
            kl = k3(mx.where(scale > 0, batch.ref_logps, batch.old_logps), batch.old_logps)
            for s, v in zip(sampled, np.array((kl * scale).reshape(len(rows), -1).sum(axis=1)).tolist()):
                s.kl = float(v)
        return batch, sampled

    def layout(self, rows: list[Example], rewards: np.ndarray, n_answers: int) -> GroupBatch:
        """The GroupBatch of sampled rows (G per prompt, in order) with their rewards: advantages,
        per-answer token weights, and the old and reference log-probabilities."""
        from finetune_app.core.training.reference import adapters_off

        cfg, model = self.cfg, self.base.model
        plain = self.family.plan(rows)
        tm = plain.target_mask[:, 1:]  # position t predicts token t + 1
        adv = advantages(rewards, cfg.grpo_group_size)
        lengths = np.maximum(tm.sum(axis=1, keepdims=True), 1)
        batch = GroupBatch(**vars(plain), advantages=(tm * adv[:, None]).astype(np.float32).reshape(-1),
                           scale=(tm / lengths).astype(np.float32).reshape(-1), beta=cfg.grpo_beta,
                           clip=cfg.grpo_clip, n_answers=n_answers)
        logits, targets, _ = self.family.predictions(model, plain)
        batch.old_logps = token_logps(logits, targets)
        if cfg.grpo_beta:
            with adapters_off(model):
                logits, targets, _ = self.family.predictions(model, plain)
                batch.ref_logps = token_logps(logits, targets)
        mx.eval(batch.old_logps, *([batch.ref_logps] if batch.ref_logps is not None else []))
        return batch


def summary(sampled: list[Sampled], group: int) -> dict:
    """Host metrics of rollouts (the live answers of every process): reward mean and spread (over
    all answers, and within groups, which is what GRPO learns from), each term's mean, KL to the
    base at sampling time (mean over answers of their token means) and answer length."""
    sampled = [s for s in sampled if s.live]
    if not sampled:
        return {}
    r = np.array([s.reward for s in sampled], np.float64)
    out = {"reward_mean": float(r.mean()), "reward_std": float(r.std()),
           "reward_group_std": float(r.reshape(-1, group).std(axis=1).mean()),
           "answer_tokens": float(np.mean([len(s.tokens) for s in sampled]))}
    for name in sampled[0].parts:
        out[f"reward_{name}"] = float(np.mean([s.parts[name] for s in sampled]))
    if all(s.kl is not None for s in sampled):
        out["kl"] = float(sum(s.kl for s in sampled)) / len(sampled)
    return out
