"""Helpers for the export tests (imported by the other test_export_* modules), and the tests of
absolute-path scrubbing (core/export/paths.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")

from finetune_app.core.export import paths

PROMPT = "Describe this image."
TEXT = "The capital of France is"


# ---- helpers ----------------------------------------------------------------------------------------

def make_adapter(family: str, dest: Path, *, fine_tune_type: str = "lora", bits: int | None = None,
                 seed: int = 1, **cfg_kw) -> Path:
    """Attach an adapter to the tiny `family` model and give it random non-zero weights
    (lora_b is zero after attach, which would make any export look right), then save it in the
    libraries' layout, with train_config.toml as a run folder has."""
    from mlx.utils import tree_flatten

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.models import load_base
    from finetune_app.testing.tiny_models import cached_tiny_model

    path = cached_tiny_model(family) if family in ("qwen2_vl", "fastvlm", "qwen2", "llama") else Path(family)
    base = load_base(path)
    cfg = TrainConfig(model=str(path), data=str(dest.parent / "data"), output=str(dest), fine_tune_type=fine_tune_type,
                      quantize_bits=bits, lora_rank=4, lora_alpha=8.0, **cfg_kw)
    acfg = adapters.attach(base, cfg)
    mx.random.seed(seed)
    new = []
    for k, v in tree_flatten(base.model.trainable_parameters()):
        noise = mx.random.normal(v.shape) * (0.02 if fine_tune_type == "full" else 0.05)
        new.append((k, (v + noise).astype(v.dtype) if k.endswith(".m") or fine_tune_type == "full" else noise.astype(v.dtype)))
    base.model.load_weights(new, strict=False)
    adapters.save(base.model, acfg, dest, train_config=cfg)
    return dest


def sample_image():
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (96, 96), (238, 238, 240))
    ImageDraw.Draw(im).rectangle([28, 28, 68, 68], fill=(40, 90, 220))
    return im


def vlm_logits(model, processor, config: dict, image=None) -> mx.array:
    """Logits of mlx-vlm's model on a chat prompt with one image, built with mlx-vlm's own
    prompt and input helpers (independent of the exporter's verification code)."""
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import prepare_inputs

    image = image or sample_image()
    text = apply_chat_template(processor, config, PROMPT, num_images=1)
    idx = config.get("image_token_index", config.get("image_token_id"))
    inputs = prepare_inputs(processor, images=[image], prompts=[text], image_token_index=idx)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    model.eval()
    out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], **extra)
    out = (out.logits if hasattr(out, "logits") else out).astype(mx.float32)
    mx.eval(out)
    return out


def text_logits(model, tokenizer) -> mx.array:
    ids = tokenizer.encode(TEXT)
    out = model(mx.array([ids])).astype(mx.float32)
    mx.eval(out)
    return out


def vlm_load(path, adapter_path=None):
    from mlx_vlm import load

    from finetune_app.core import patches

    patches.apply()  # config-driven FastViTHD sizes for the tiny FastVLM
    model, processor = load(str(path), adapter_path=str(adapter_path) if adapter_path else None)
    return model, processor, json.loads((Path(path) / "config.json").read_text())


def max_abs(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(mx.abs(a - b).max())


# ---- path scrubbing -----------------------------------------------------------------------------------

def test_portable_names():
    assert paths.portable_name("/Users/ann/.cache/huggingface/hub/models--apple--FastVLM-0.5B/snapshots/abc123") == "apple/FastVLM-0.5B"
    assert paths.portable_name("/home/bob/models/my-tiny-vlm") == "my-tiny-vlm"
    assert paths.portable_name("C:\\Users\\ann\\models\\m1") == "m1"


def test_scrub_json_replaces_machine_paths_but_not_tokens_or_urls(tmp_path):
    home = str(Path.home())
    obj = {"finetune_app": {"base_model": f"{home}/models/tiny-fastvlm", "model_type": "llava_qwen2"},
           "_name_or_path": "/Users/ann/models/Qwen2-VL", "hub": "mlx-community/FastVLM-0.5B-bf16",
           "url": "https://huggingface.co/apple/FastVLM-0.5B", "chat": "{{ '</think>' }} a/b",
           "model": {"vocab": {"/home/user": 5, "/usr/lib": 6}}}
    out = paths.scrub_json(obj, [tmp_path])
    assert out["finetune_app"]["base_model"] == "tiny-fastvlm"
    assert out["_name_or_path"] == "Qwen2-VL"
    assert out["hub"] == obj["hub"] and out["url"] == obj["url"] and out["chat"] == obj["chat"]
    assert out["model"]["vocab"] == obj["model"]["vocab"]  # tokenizer vocabulary is data


def test_scrub_folder_and_find(tmp_path):
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"finetune_app": {"base_model": str(tmp_path / "base-model")}}))
    (d / "train_config.toml").write_text(f'model = "{tmp_path}/base-model"\ndata = "/home/ann/data/shapes"\n')
    (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"/home/x": 1}}, "added_tokens": []}))
    assert {f for f, _ in paths.find_machine_paths(d, [tmp_path])} == {"adapter_config.json", "train_config.toml"}
    changed = paths.scrub_folder(d, [tmp_path])
    assert sorted(changed) == ["adapter_config.json", "train_config.toml"]
    assert paths.find_machine_paths(d, [tmp_path]) == []
    assert json.loads((d / "adapter_config.json").read_text())["finetune_app"]["base_model"] == "base-model"
    assert 'data = "shapes"' in (d / "train_config.toml").read_text()
