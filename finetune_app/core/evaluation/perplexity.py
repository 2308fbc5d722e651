"""Token negative log-likelihood of the reference answers, through the engine's own loss.

The example is encoded exactly as the trainer encodes it (Encoder, completion-only mask) and scored
with `Forward.loss_sum`, the function the validation loss uses, so perplexity = exp(validation
loss per token) on the same rows."""

from __future__ import annotations

import math


class TokenNLL:
    """Summed NLL and supervised-token count of one sample under one model."""

    def __init__(self, base, *, image_size: int | None = None):
        from finetune_app.core.data.tokenize import Encoder
        from finetune_app.core.training.forward import Forward

        self.base = base
        self.encoder = Encoder(base, completion_only=True, image_size=image_size)
        self.forward = Forward(base)
        tok = base.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def __call__(self, sample, images: list | None = None) -> tuple[float, int]:
        from finetune_app.core.data.batching import collate

        example = self.encoder.encode(sample, images=images)
        batch = collate([example], self.pad, self.forward.image_token_index)
        self.base.model.eval()
        total, count = self.forward.loss_sum(self.base.model, batch)
        return float(total.item()), int(count.item())


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / tokens) if tokens else float("nan")
