"""Token negative log-likelihood of the reference answers, through the engine's own loss.

The example is encoded exactly as the trainer encodes it (Encoder, completion-only mask), planned
by the model's family on the library path and scored by the SFT objective, the loss the
validation uses, so perplexity = exp(validation loss per token) on the same rows."""

from __future__ import annotations

import math


class TokenNLL:
    """Summed NLL and supervised-token count of one sample under one model."""

    def __init__(self, base, *, image_size: int | None = None):
        from finetune_app.core.data.tokenize import Encoder
        from finetune_app.core.families import family_for
        from finetune_app.core.training.objectives import sft

        self.base = base
        self.family = family_for(base)  # not started: the library's own forward
        self.objective = sft
        self.encoder = Encoder(base, completion_only=True, image_size=image_size,
                               image_features=self.family.image_features())

    def __call__(self, sample, images: list | None = None) -> tuple[float, int]:
        example = self.encoder.encode(sample, images=images)
        batch = self.family.plan([example])
        self.base.model.eval()
        total, count, _ = self.objective.loss(self.base.model, self.family, self.family.inputs(batch))
        return float(total.item()), int(count.item())


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / tokens) if tokens else float("nan")
