"""Training objectives: `loss(model, family, batch, **settings) -> (sum, count, metrics)`.

An objective is one module with a `loss` function, `NEEDS` (what the batch must carry: "pairs"
of chosen / rejected answers, "reference_logps", ...) and optionally `settings(cfg) -> dict` (the
keyword arguments its loss takes from the run's settings, e.g. beta). The step divides the summed
loss, and every metric (sums too), by the step's total count, so gradient accumulation and data
parallel ranks weigh every counted unit (a supervised token for SFT, a pair for DPO) alike.
"""

from __future__ import annotations

from finetune_app.core.errors import ConfigError
from finetune_app.core.training.objectives import dpo, grpo, orpo, sft

OBJECTIVES = {"sft": sft, "dpo": dpo, "ipo": dpo, "orpo": orpo, "grpo": grpo}


class Objective:
    """An objective module bound to a run's settings: what the step calls."""

    def __init__(self, name: str, module, kwargs: dict):
        self.name, self.module, self.kwargs = name, module, kwargs
        self.NEEDS = tuple(getattr(module, "NEEDS", ()))
        self.METRICS = tuple(getattr(module, "METRICS", ()))  # the metrics `loss` returns for every batch

    def loss(self, model, family, batch):
        return self.module.loss(model, family, batch, **self.kwargs)


def objective(name: str = "sft", cfg=None) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"The objective '{name}' is not available in this version.",
                          f"Use one of: {', '.join(OBJECTIVES)}.", field="objective")
    module = OBJECTIVES[name]
    kwargs = module.settings(cfg) if cfg is not None and hasattr(module, "settings") else {}
    return Objective(name, module, kwargs)
