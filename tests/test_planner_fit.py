"""The will-it-fit planner (core/estimates.py `run_memory_gb`, the form's and `data check`'s estimate)
against MLX's measured peak of a few real training steps (#16: within 15%), on small models whose
activations, not their weights, are most of the peak: Llama- and Qwen2-shaped text in bf16 (2
layers, hidden 256, rows of ~650 tokens) and a Qwen2-VL (first epoch: the tower runs). Each run is a fresh
trainer; the peak counts from just before it (fit_check.predicted_vs_measured)."""

import gc
import json

import pytest

from finetune_app.core.data.demo import make_shapes_dataset
from finetune_app.testing.fit_check import predicted_vs_measured
from finetune_app.testing.tiny_models import build_tiny_model

TEXT = {"llama": {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "head_dim": 64, "num_hidden_layers": 2},
        "qwen2": {"hidden_size": 256, "intermediate_size": 1408, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "num_hidden_layers": 2}}
VLM = {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4, "num_key_value_heads": 2,
       "num_hidden_layers": 2, "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
       "vision_config": {"depth": 2, "embed_dim": 128, "hidden_size": 256, "num_heads": 4, "mlp_ratio": 2}}


def bf16(folder):
    """The model's weights in bfloat16 (the GPU's and a Mac's usual width; the tiny builder writes float32)."""
    import mlx.core as mx

    for f in folder.glob("*.safetensors"):
        w = mx.load(str(f))
        mx.save_safetensors(str(f), {k: v.astype(mx.bfloat16) if mx.issubdtype(v.dtype, mx.floating) else v
                                     for k, v in w.items()}, metadata={"format": "mlx"})
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | {"torch_dtype": "bfloat16"}))
    return folder


def measured(model, data, tmp_path, **settings):
    import mlx.core as mx

    gc.collect()  # earlier tests' arrays: freed, or subtracted as held
    mx.clear_cache()
    mx.reset_peak_memory()
    return predicted_vs_measured(model, data, output=tmp_path, lora_rank=16, **settings)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_text_planner_within_15_percent(family, tmp_path):
    model = bf16(build_tiny_model(family, tmp_path / "m", **TEXT[family]))
    row = {"messages": [{"role": "user", "content": "say alpha alpha alpha " * 10},
                        {"role": "assistant", "content": "beta gamma delta " * 45}]}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text((json.dumps(row) + "\n") * 4)
    r = measured(model, tmp_path / "d" / "train.jsonl", tmp_path, batch_size=4)
    assert r["seq_len"] >= 256, r  # long enough that activations are most of the peak
    assert 0.85 <= r["ratio"] <= 1.15, r


def test_vlm_planner_within_15_percent(tmp_path):
    model = build_tiny_model("qwen2_vl", tmp_path / "m", **VLM)
    data = make_shapes_dataset(tmp_path / "d", n_train=4, n_valid=0, size=224, seed=0)
    r = measured(model, data, tmp_path, batch_size=2)
    assert 0.85 <= r["ratio"] <= 1.15, r


def test_sizes_of_towers_with_per_stage_lists_do_not_stop_a_load():
    """Florence-2's DaViT and FastViT give per-stage lists (and some configs strings): the estimate
    takes the largest or its default, never raises (model_sizes runs when the GUI or `data check`
    loads any model)."""
    from finetune_app.core.estimates import model_sizes

    s = model_sizes({"text_config": {"d_model": 768, "num_attention_heads": [12]},
                     "vision_config": {"num_heads": [3, 6, 12, 24], "patch_size": [7, 3, 3, 3],
                                       "embed_dims": [64, 128, 256], "mlp_ratio": "4", "in_channels": None}})
    assert s["hidden_size"] == 768 and s["heads"] == 12
    assert s["vision"] == {"width": 256, "heads": 24, "mlp_ratio": 4.0, "patch_width": 3 * 7 * 7}


def test_cached_features_count_at_the_width_they_are_stored():
    """FastVLM caches its tower's output before the projector (3,072 values a row, not the LM's 896):
    the resident cache is counted at the stored width when the caller knows it."""
    from finetune_app.core.estimates import ImageLoad, vision_bytes

    sizes = {"hidden_size": 896}
    lm_wide, _ = vision_bytes(sizes, ImageLoad(cached=1000, tower=False), 2.0)
    stored, _ = vision_bytes(sizes, ImageLoad(cached=1000, tower=False, cached_width=3072), 2.0)
    assert lm_wide == 1000 * 896 * 2 and stored == 1000 * 3072 * 2
