"""Every family the engine supports trains (a few real steps, finite decreasing-capable loss) and
saves an adapter its library loads; plus the options not covered elsewhere (vision-tower LoRA,
projector training, gradient checkpointing)."""

import json
import math

import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.events import TrainReport
from finetune_app.core.training.trainer import Trainer


def run(model, data, out, **kw):
    reports = []
    cfg = TrainConfig(model=str(model), data=str(data), output=str(out), iters=kw.pop("iters", 3), batch_size=2,
                      steps_per_report=1, steps_per_eval=100, save_every=100, sample_count=0, **kw)
    trainer = Trainer(cfg, listeners=[lambda e: reports.append(e) if isinstance(e, TrainReport) else None])
    result = trainer.run()
    assert result.status == "finished"
    assert [r.step for r in reports] == list(range(1, cfg.iters + 1))
    assert all(math.isfinite(r.loss) and r.loss > 0 for r in reports)
    return trainer, reports


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "fastvlm"])
def test_vlm_families_train_and_load(family, tiny_model, shapes_data, tmp_path):
    from mlx_vlm.utils import load as vlm_load

    model = tiny_model(family)
    run(model, shapes_data, tmp_path / "run")
    loaded, _ = vlm_load(str(model), adapter_path=str(tmp_path / "run"))
    assert any("lora" in type(m).__name__.lower() for _, m in loaded.named_modules())


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_text_families_train_and_load(family, tiny_model, instruction_data, tmp_path):
    import mlx_lm

    model = tiny_model(family)
    run(model, instruction_data, tmp_path / "run", grad_checkpoint=family == "llama")
    mlx_lm.load(str(model), adapter_path=str(tmp_path / "run"))


def test_vision_lora_and_projector_training(tiny_model, shapes_data, tmp_path):
    from mlx.utils import tree_flatten

    trainer, _ = run(tiny_model("qwen2_vl"), shapes_data, tmp_path / "run", train_vision=True, train_projector=True)
    trained = [k for k, _ in tree_flatten(trainer.base.model.trainable_parameters())]
    assert any(k.startswith("vision_tower.") and "lora" in k for k in trained)
    assert any(".merger." in k for k in trained)
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert any(k.startswith("vision_tower.") for k in config["lora_parameters"]["keys"])
