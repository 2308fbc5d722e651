"""Saved adapters load with the libraries' own loaders and generate what the engine generates;
the run folder has the documented layout; QLoRA leaves the vision tower in full precision."""

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from finetune_app.core.config import TrainConfig
from finetune_app.core.data import load_image
from finetune_app.core.data.sample import ImageRef
from finetune_app.core.generate import GenerationSettings, generate, vocab_guard
from finetune_app.core.training.trainer import Trainer


def train(model_dir, data, out, **kw):
    cfg = TrainConfig(model=str(model_dir), data=str(data), output=str(out), iters=kw.pop("iters", 12),
                      batch_size=4, learning_rate=3e-3, steps_per_report=4, steps_per_eval=100, save_every=100,
                      sample_count=0, **kw)
    trainer = Trainer(cfg)
    trainer.run()
    return trainer


def test_vlm_adapter_loads_with_mlx_vlm_and_generates_the_same(tiny_model, shapes_data, tmp_path):
    from mlx_vlm import generate as vlm_generate
    from mlx_vlm.utils import load as vlm_load

    model_dir = tiny_model("qwen2_vl")
    trainer = train(model_dir, shapes_data, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("adapters.safetensors", "adapter_config.json", "train_config.toml", "metrics.jsonl"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if m["kind"] == "train"]
    assert {"step", "loss", "learning_rate", "tokens_per_second", "peak_memory_gb"} <= set(train_rows[0])
    assert any("val_loss" in m for m in metrics)

    sample = trainer.data.samples[0]
    image = load_image(sample.images[0])
    settings = GenerationSettings(max_tokens=10)
    ours = generate(trainer.base, sample.prompt, [image], settings=settings)

    model, processor = vlm_load(str(model_dir), adapter_path=str(run))
    prompt = trainer.encoder.prompt_text(sample)
    theirs = vlm_generate(model, processor, prompt, image=[image], max_tokens=10, temperature=0.0,
                          logits_processors=[vocab_guard(processor.tokenizer)], verbose=False).text
    assert theirs.strip() == ours
    # and the adapter changed the model: the base alone answers differently or with other logits
    base_model, _ = vlm_load(str(model_dir))
    a = dict(tree_flatten(model.parameters()))
    assert any(k.endswith("lora_b") and float(mx.abs(v).max()) > 0 for k, v in a.items())


def test_text_adapter_loads_with_mlx_lm_and_generates_the_same(tiny_model, instruction_data, tmp_path):
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model_dir = tiny_model("llama")
    trainer = train(model_dir, instruction_data, tmp_path / "run")
    sample = trainer.data.samples[0]
    ours = generate(trainer.base, sample.prompt, settings=GenerationSettings(max_tokens=12))
    model, tok = mlx_lm.load(str(model_dir), adapter_path=str(tmp_path / "run"))
    prompt = trainer.encoder.prompt_text(sample)
    theirs = mlx_lm.generate(model, tok, prompt, max_tokens=12, sampler=make_sampler(temp=0.0),
                             logits_processors=[vocab_guard(tok)], verbose=False)
    assert theirs.strip() == ours
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["rank"] == 16


def test_qlora_keeps_vision_tower_in_float_and_loads(tiny_model, shapes_data, tmp_path):
    from mlx_vlm.utils import load as vlm_load

    model_dir = tiny_model("qwen2_vl")
    trainer = train(model_dir, shapes_data, tmp_path / "run", iters=2, quantize_bits=4, quantize_group_size=32)
    model = trainer.base.model
    quantized = [n for n, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert quantized and all(n.startswith("language_model.") for n in quantized)
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in model.vision_tower.named_modules())
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["base_quantization"] and all(k.startswith("language_model.") for k in config["base_quantization"])
    loaded, _ = vlm_load(str(model_dir), adapter_path=str(tmp_path / "run"))
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in loaded.named_modules())


@pytest.mark.parametrize("kind", ["dora", "full"])
def test_dora_and_full_fine_tune_save_loadable_adapters(kind, tiny_model, instruction_data, tmp_path):
    import mlx_lm

    model_dir = tiny_model("qwen2")
    trainer = train(model_dir, instruction_data, tmp_path / "run", iters=3, fine_tune_type=kind)
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == kind
    model, tok = mlx_lm.load(str(model_dir), adapter_path=str(tmp_path / "run"))
    ids = mx.array([[1, 2, 3, 4]])
    trainer.base.model.eval()
    assert mx.allclose(model(ids), trainer.base.model(ids), atol=1e-5)


def test_frozen_fastvlm_tower_stays_in_eval_mode(tiny_model, tmp_path):
    from PIL import Image

    from finetune_app.core import adapters
    from finetune_app.core.models import load_base

    base = load_base(tiny_model("fastvlm"))
    adapters.attach(base, TrainConfig(lora_rank=4))
    bns = [m for _, m in base.model.vision_tower.named_modules() if isinstance(m, nn.BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert not tree_flatten(base.model.vision_tower.trainable_parameters())
    assert any(m.training for _, m in base.model.language_model.named_modules() if adapters.is_adapter_layer(m))
