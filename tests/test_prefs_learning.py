"""DPO and ORPO teach a preference to tiny random-weight models (issue 17), measured on held-out
pairs as the fraction whose chosen answer gets the higher log-probability.

VLM (Qwen2-VL tiny): captions naming the shape's right colour over a wrong colour (the image alone
can rank them). Text (Llama tiny): a word in square brackets over the same word wrapped otherwise
(a format; held-out words were never seen). Measured 2026-12-03 on this CPU: text 0.46 -> 1.00
(DPO and ORPO, 25 steps); shapes 0.42 -> 0.98 (DPO, 60 steps), 0.42 -> 0.94 (ORPO, 80 steps).
"""

import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.trainer import Trainer
from finetune_app.testing.preference_tasks import (make_format_preferences, make_shapes_preferences,
                                                   preference_accuracy)

CASES = {  # (model, task, steps, learning rate, beta)
    ("llama", "dpo"): ("format", 25, 2e-3, 0.1),
    ("llama", "orpo"): ("format", 25, 2e-3, 0.1),
    ("qwen2_vl", "dpo"): ("shapes", 60, 1e-3, 0.25),
    ("qwen2_vl", "orpo"): ("shapes", 80, 1e-3, 1.0),
}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference-tasks")
    return {"format": make_format_preferences(root / "format"), "shapes": make_shapes_preferences(root / "shapes")}


@pytest.mark.parametrize("family,objective", list(CASES))
def test_preference_training_raises_held_out_accuracy(family, objective, tiny_model, tasks, tmp_path):
    task, steps, lr, beta = CASES[family, objective]
    cfg = TrainConfig(model=str(tiny_model(family)), data=str(tasks[task]), output=str(tmp_path / "run"),
                      objective=objective, beta=beta, iters=steps, batch_size=4, learning_rate=lr,
                      lr_schedule="constant", sample_count=0, steps_per_eval=10**6, save_every=10**6)
    trainer = Trainer(cfg)
    trainer.setup()
    assert len(trainer.data.valid) == 48
    before = preference_accuracy(trainer)
    trainer._loop(0.0)
    after = preference_accuracy(trainer)
    print(f"{family} {objective}: held-out preference accuracy {before:.3f} -> {after:.3f}")
    assert before <= 0.7, "a random model ranks the pairs about at chance"
    assert after >= 0.90
