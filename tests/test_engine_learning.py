"""The engine's default LoRA preset measurably teaches tiny random-weight VLMs the demo shapes task.

Held-out images (never trained on) are captioned greedily and scored: colour right ≥ 95%, and
colour+shape right at least as often as mlx-vlm's own trainer manages with the same model, data
and step budget (measured with benchmarks/learn_shapes.py --theirs: 0.60 for Qwen2-VL at 400 steps;
mlx-vlm cannot train FastVLM at all, see docs/engine.md)."""

import pytest

from finetune_app.core.config import DEFAULT_PRESET, TrainConfig, apply_preset
from finetune_app.core.data.demo import make_shapes_dataset
from finetune_app.core.data.tokenize import Encoder
from finetune_app.core.generate import GenerationSettings, generate_for_sample
from finetune_app.core.scoring import shapes_accuracy
from finetune_app.core.training.trainer import Trainer

MLX_VLM_COLOUR_AND_SHAPE = {"qwen2_vl": 0.60, "fastvlm": 0.0}


def held_out_accuracy(trainer):
    encoder = Encoder(trainer.base)
    settings = GenerationSettings(max_tokens=8)
    samples = trainer.data.samples
    outputs = [generate_for_sample(trainer.base, s, encoder.load_images(s), settings=settings, encoder=encoder)
               for s in samples]
    return shapes_accuracy(outputs, [s.answer for s in samples]), outputs


@pytest.mark.slow
@pytest.mark.parametrize("family, overrides", [("qwen2_vl", {}), ("fastvlm", {"image_size": 256})])
def test_default_preset_learns_shapes(family, overrides, tiny_model, tmp_path_factory, tmp_path):
    data = tmp_path_factory.mktemp("learn") / "shapes"
    make_shapes_dataset(data, n_train=300, n_valid=60, size=64, seed=0)
    model = tiny_model(family, **overrides)
    cfg = apply_preset(TrainConfig(), DEFAULT_PRESET).replace(
        model=str(model), data=str(data), output=str(tmp_path / "run"), iters=400, epochs=None,
        steps_per_eval=10**6, save_every=10**6, sample_count=0)
    trainer = Trainer(cfg)
    result = trainer.run()
    assert result.status == "finished"
    acc, outputs = held_out_accuracy(trainer)
    print(family, acc, outputs[:6])
    assert acc["n"] == 60
    assert acc["colour"] >= 0.95, outputs
    assert acc["colour_and_shape"] >= MLX_VLM_COLOUR_AND_SHAPE[family], outputs
