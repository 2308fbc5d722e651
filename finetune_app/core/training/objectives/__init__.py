"""Training objectives: `loss(model, family, batch) -> (sum, count, metrics)`.

An objective is one module with a `loss` function and `NEEDS` (what the batch must carry); the
step divides the summed loss by the step's total count, so gradient accumulation and data
parallel ranks weigh every counted unit (a supervised token, for SFT) alike.
"""

from finetune_app.core.training.objectives import grpo, sft

OBJECTIVES = {"sft": sft, "grpo": grpo}


def objective(name: str = "sft"):
    return OBJECTIVES[name]
