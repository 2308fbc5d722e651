"""Tiny offline models: each family builds, loads through the libraries' own loaders, runs a forward
pass and greedy generation; seeds are reproducible; FastVLM's tiny tower sees the image; the
compatibility patch leaves real FastVLM configs alone."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

mx = pytest.importorskip("mlx.core")

from finetune_app.core import patches  # noqa: E402
from finetune_app.testing import tiny_models  # noqa: E402
from finetune_app.testing.tiny_models import FAMILIES, TEXT_FAMILIES, VLM_FAMILIES  # noqa: E402

VLMS = [f for f in FAMILIES if f in VLM_FAMILIES]
TEXTS = [f for f in FAMILIES if f in TEXT_FAMILIES]


def _shape_image(colour: str, shape: str, size: int = 64, box=(0.25, 0.25, 0.75, 0.75)):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    xy = [int(v * size) for v in box]
    if shape == "circle":
        draw.ellipse(xy, fill=colour)
    elif shape == "triangle":
        draw.polygon([(xy[0], xy[3]), (xy[2], xy[3]), ((xy[0] + xy[2]) // 2, xy[1])], fill=colour)
    else:
        draw.rectangle(xy, fill=colour)
    return im


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red_circle.png"
    _shape_image("red", "circle").save(path)
    return path


def _built(root, family):
    return tiny_models.cached_tiny_model(family, root=root)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

def test_bpe_training_is_deterministic():
    train = tiny_models._base_bpe_json.__wrapped__
    first = train()
    assert train() == first


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_has_family_tokens_and_template(family, tmp_path):
    from transformers import AutoTokenizer

    tiny_models.build_tokenizer(family, tmp_path)
    assert (tmp_path / "chat_template.jinja").is_file()
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == tiny_models.model_vocab_size(family)
    assert len(tok) % tiny_models.VOCAB_MULTIPLE == 0
    specials, plain, bos, eos, pad = tiny_models._TOKENS[family]
    for t in specials + plain:
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id and len(tok.tokenize(t)) == 1
    assert tok.eos_token == eos and tok.pad_token == pad
    # The demo vocabulary is compact: each word of "a red circle" is one token.
    assert len(tok("a red circle", add_special_tokens=False)["input_ids"]) == 3
    text = tok.apply_chat_template([{"role": "user", "content": "Describe the image."}],
                                   tokenize=False, add_generation_prompt=True)
    if family == "llama":
        assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    else:
        assert "<|im_start|>user\nDescribe the image.<|im_end|>\n" in text
        assert text.endswith("<|im_start|>assistant\n")


def test_vl_templates_place_the_image():
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    for family, marker in [("qwen2_vl", "<|vision_start|><|image_pad|><|vision_end|>What?"),
                           ("qwen3_vl", "<|vision_start|><|image_pad|><|vision_end|>What?"),
                           ("fastvlm", "<image>\nWhat?")]:
        tok = tiny_models.make_tokenizer(family)
        assert marker in tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------
# Building, determinism, cache
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family, tmp_path):
    a = tiny_models.build_tiny_model(family, tmp_path / "a", seed=0)
    mx.random.seed(1234)  # the build must not depend on MLX's global random state
    b = tiny_models.build_tiny_model(family, tmp_path / "b", seed=0)
    c = tiny_models.build_tiny_model(family, tmp_path / "c", seed=1)
    wa, wb, wc = (mx.load(str(p / "model.safetensors")) for p in (a, b, c))
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(wa[k].dtype == mx.float32 for k in wa)
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)
    assert any(not mx.array_equal(wa[k], wc[k]).item() for k in wa)
    index = json.loads((a / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(wa)


def test_overrides_merge_into_config(tmp_path):
    path = tiny_models.build_tiny_model("qwen2_vl", tmp_path / "m", num_hidden_layers=3,
                                        vision_config={"depth": 1})
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    assert cfg["vision_config"]["depth"] == 1 and cfg["vision_config"]["embed_dim"] == 32


def test_build_is_atomic_and_cache_rebuilds_incomplete(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    path = tiny_models.cached_tiny_model("qwen2", root=root)
    assert tiny_models.is_complete(path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_models.cached_tiny_model("qwen2", root=root) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    (path / "tokenizer.json").unlink()
    assert not tiny_models.is_complete(path)
    assert tiny_models.is_complete(tiny_models.cached_tiny_model("qwen2", root=root))

    # A build that fails leaves no folder behind.
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_models, "_save_weights", boom)
    with pytest.raises(RuntimeError):
        tiny_models.build_tiny_model("qwen2", tmp_path / "broken")
    assert not (tmp_path / "broken").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".broken")]

    monkeypatch.setenv("FINETUNE_TINY_CACHE", str(tmp_path / "env-root"))
    assert tiny_models.default_cache_root() == tmp_path / "env-root"


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny-model family"):
        tiny_models.build_tiny_model("gpt2", tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# Loading through the libraries and running
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", VLMS)
def test_vlm_loads_runs_and_generates(family, model_root, image_path):
    import mlx_vlm
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import prepare_inputs

    path = _built(model_root, family)
    model, processor = mlx_vlm.load(str(path))
    cfg = json.loads((path / "config.json").read_text())
    vocab = tiny_models.model_vocab_size(family)
    prompt = apply_chat_template(processor, model.config, "Describe the image.", num_images=1)
    inputs = prepare_inputs(processor, images=[str(image_path)], prompts=prompt,
                            image_token_index=getattr(model.config, "image_token_index", None))
    ids = np.array(inputs["input_ids"])
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    out = model(inputs["input_ids"], inputs["pixel_values"], mask=inputs["attention_mask"], **extra)
    logits = out.logits
    mx.eval(logits)

    if family == "fastvlm":
        assert (ids == -200).sum() == 1
        assert tuple(inputs["pixel_values"].shape) == (1, 3, 1024, 1024)
        # One placeholder expands into 16x16 = 256 image features.
        assert logits.shape == (1, ids.shape[1] - 1 + 256, vocab)
    else:
        n_image = int((ids == cfg["image_token_id"]).sum())
        t, h, w = np.array(inputs["image_grid_thw"])[0].tolist()
        assert n_image == t * h * w // 4 == 4  # 64 px -> 4x4 patches, merged 2x2
        assert logits.shape == (1, ids.shape[1], vocab)
    assert bool(mx.isfinite(logits).all())
    assert float(logits[0, -1].std()) > 0.1  # not degenerate

    result = mlx_vlm.generate(model, processor, prompt, image=[str(image_path)], max_tokens=3,
                              temperature=0.0, verbose=False)
    assert 1 <= result.generation_tokens <= 3
    assert all(0 <= t < vocab for t in result.token_ids)


@pytest.mark.parametrize("family", TEXTS)
def test_text_model_loads_runs_and_generates(family, model_root):
    import mlx_lm

    path = _built(model_root, family)
    model, tokenizer = mlx_lm.load(str(path))
    vocab = tiny_models.model_vocab_size(family)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is it?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), vocab)
    assert float(logits[0, -1].std()) > 0.1
    tokens = []
    for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=3):
        tokens.append(response.token)
    assert 1 <= len(tokens) <= 3 and all(0 <= t < vocab for t in tokens)


# ---------------------------------------------------------------------------------------------
# FastVLM tower and the compatibility patch
# ---------------------------------------------------------------------------------------------

def _fastvlm_features(model, processor, images, size=1024):
    """Tower output and projected features (what the LM sees) for PIL images, in eval mode."""
    resize = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    pixel_values = processor.image_processor(images=images, return_tensors="np",
                                             **resize)["pixel_values"]
    assert pixel_values.shape[1:] == (3, size, size)
    _, feats, _ = model.vision_tower(mx.array(pixel_values).transpose(0, 2, 3, 1))
    b, h, w, c = feats.shape
    assert (h, w) == (size // 64, size // 64)
    projected = model.mm_projector(feats.reshape(b, h * w, c))
    mx.eval(feats, projected)
    return np.array(feats.reshape(b, h * w, c)), np.array(projected)


def _ridge_leave_one_out(x, labels, n_classes, lam=1.0):
    """Leave-one-out accuracy of a ridge-regression linear probe on standardised features."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    targets = np.eye(n_classes)[labels]
    correct = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        a = x[keep]
        w = a.T @ np.linalg.solve(a @ a.T + lam * np.eye(len(a)), targets[keep])
        correct += int(np.argmax(x[i] @ w) == labels[i])
    return correct / len(x)


@pytest.fixture(scope="module")
def fastvlm(model_root):
    import mlx_vlm

    return mlx_vlm.load(str(_built(model_root, "fastvlm")))


def test_fastvlm_tower_is_small_and_features_differ_at_1024(fastvlm):
    from mlx.utils import tree_flatten

    model, processor = fastvlm
    assert not model.vision_tower.training  # BatchNorm uses its running stats
    n_tower = sum(v.size for _, v in tree_flatten(model.vision_tower.parameters()))
    assert n_tower < 200_000  # the hard-coded FastViTHD tower would be 125M

    images = [_shape_image("red", "circle", size=128), _shape_image("blue", "square", size=128)]
    feats, projected = _fastvlm_features(model, processor, images, size=1024)
    for f in (feats, projected):  # tower output, and what the LM sees
        diff = np.linalg.norm(f[0] - f[1])
        scale = 0.5 * (np.linalg.norm(f[0]) + np.linalg.norm(f[1]))
        assert diff / scale > 1e-2  # a random FastViTHD tower gives ~1e-8
        assert np.isfinite(f).all()
    # Features also vary across positions within one image (not a constant map).
    assert feats[0].std(axis=0).mean() > 1e-2 * np.abs(feats[0]).mean()


def test_fastvlm_colour_is_linearly_decodable(fastvlm):
    model, processor = fastvlm
    colours = ["red", "green", "blue", "yellow"]
    layouts = [("circle", (0.2, 0.2, 0.7, 0.7)), ("square", (0.35, 0.3, 0.8, 0.75)),
               ("triangle", (0.25, 0.3, 0.75, 0.8))]
    images, labels = [], []
    for ci, colour in enumerate(colours):
        for shape, box in layouts:
            images.append(_shape_image(colour, shape, size=128, box=box))
            labels.append(ci)
    # 256 px keeps this fast; the tower is convolutional (1024 px: 256 features instead of 16).
    feats, _ = _fastvlm_features(model, processor, images, size=256)
    # Each held-out image's colour is predicted from images of the other two shapes.
    assert _ridge_leave_one_out(feats.mean(axis=1), np.array(labels), len(colours)) == 1.0


def test_fastvlm_shape_and_projected_colour_are_decodable(fastvlm):
    # A trained tower's features tell shapes apart and keep colour through the projector; the
    # tiny tower's oblique line filters (circle vs square) and calibrated projector give both.
    model, processor = fastvlm
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    boxes = [(0.25, 0.25, 0.75, 0.75), (0.3, 0.3, 0.7, 0.7), (0.2, 0.2, 0.8, 0.8)]
    images, colour, shape = [], [], []
    for ci, c in enumerate(colours):
        for si, s in enumerate(shapes):
            for box in boxes:
                images.append(_shape_image(c, s, size=128, box=box))
                colour.append(ci)
                shape.append(si)
    colour, shape = np.array(colour), np.array(shape)
    feats, projected = _fastvlm_features(model, processor, images, size=256)
    pooled = feats.mean(axis=1)
    assert _ridge_leave_one_out(pooled, colour, 4) == 1.0
    assert _ridge_leave_one_out(pooled, shape, 3) >= 0.9
    # What the language model sees (previous init: colour 0.5, shape 0.5, circle/square 0.54).
    pooled = projected.mean(axis=1)
    assert _ridge_leave_one_out(pooled, colour, 4) >= 0.9
    assert _ridge_leave_one_out(pooled, shape, 3) >= 0.85
    round_or_square = shape < 2
    assert _ridge_leave_one_out(pooled[round_or_square], shape[round_or_square], 2) >= 0.85
    # Image tokens come out near the text embeddings' scale (previous init: ~10x at 256 px).
    text_norm = float(np.linalg.norm(np.array(model.language_model.model.embed_tokens.weight),
                                     axis=1).mean())
    assert np.linalg.norm(projected, axis=-1).mean() < 6 * text_norm


def test_fastvlm_image_size_keyword(tmp_path):
    import mlx_vlm

    path = tiny_models.build_tiny_model("fastvlm", tmp_path / "m", image_size=256)
    cfg = json.loads((path / "config.json").read_text())
    pre = json.loads((path / "preprocessor_config.json").read_text())
    assert cfg["vision_config"]["image_size"] == 256
    assert pre["crop_size"] == {"height": 256, "width": 256}
    assert pre["size"] == {"shortest_edge": 256}
    manifest = json.loads((path / tiny_models.MANIFEST).read_text())
    assert manifest["overrides"]["image_size"] == 256
    assert tiny_models.tiny_config("fastvlm", image_size=256) == cfg

    model, processor = mlx_vlm.load(str(path))  # the processor's own defaults: 256 px
    pixel_values = processor.image_processor(images=[_shape_image("red", "circle")],
                                             return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (1, 3, 256, 256)
    _, feats, _ = model.vision_tower(mx.array(pixel_values).transpose(0, 2, 3, 1))
    assert feats.shape[1:3] == (4, 4)  # 16 image features

    # Agreeing explicit overrides are fine; conflicting ones, other families, bad sizes are not.
    tiny_models.tiny_config("fastvlm", image_size=512, vision_config={"image_size": 512})
    with pytest.raises(ValueError, match="conflicts"):
        tiny_models.tiny_config("fastvlm", image_size=256, vision_config={"image_size": 512})
    with pytest.raises(ValueError, match="conflicts"):
        tiny_models.build_tiny_model("fastvlm", tmp_path / "x", image_size=256,
                                     preprocessor_config={"size": {"shortest_edge": 1024}})
    with pytest.raises(ValueError, match="fastvlm family only"):
        tiny_models.build_tiny_model("qwen2_vl", tmp_path / "x", image_size=256)
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny_models.build_tiny_model("fastvlm", tmp_path / "x", image_size=200)
    assert not (tmp_path / "x").exists()


def test_fastvlm_patch_keeps_default_fastvlm_tower():
    patches.apply()
    patches.apply()  # idempotent
    assert "fastvlm_vision_config" in patches.applied()
    import mlx_vlm.models.fastvlm as fastvlm_pkg
    from mlx_vlm.models.fastvlm.config import ModelConfig, VisionConfig
    from mlx_vlm.utils import update_module_configs

    assert getattr(VisionConfig.from_dict, "_finetune_patched", False)
    defaults = {k: getattr(VisionConfig, k) for k in
                ("layers", "embed_dims", "mlp_ratios", "downsamples", "pos_embs_shapes",
                 "token_mixers", "cls_ratio", "repmixer_kernel_size")}
    assert defaults["layers"] == [2, 12, 24, 4, 2]
    assert defaults["embed_dims"] == [96, 192, 384, 768, 1536]

    # Apple's FastVLM config.json carries no vision architecture keys.
    real = {"model_type": "llava_qwen2", "hidden_size": 896, "num_hidden_layers": 24,
            "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2,
            "vocab_size": 151936, "mm_hidden_size": 3072, "mm_projector_type": "mlp2x_gelu",
            "image_token_index": -200, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0}
    for vision in (None, {}, {"model_type": "llava_qwen2", "image_size": 1024, "patch_size": 64}):
        cfg = dict(real) if vision is None else dict(real, vision_config=dict(vision))
        # As mlx_vlm.utils.load_model does it (from_dict fills text_config in place).
        cfg.setdefault("text_config", {})
        cfg.setdefault("vision_config", {})
        mc = ModelConfig.from_dict(cfg)
        mc = update_module_configs(mc, fastvlm_pkg, cfg, ["text", "vision"])
        for key, value in defaults.items():
            assert getattr(mc.vision_config, key) == value, key
        assert int(mc.vision_config.embed_dims[-1] * mc.vision_config.cls_ratio) == 3072

    # A tiny config's keys are honoured, on the instance only.
    tiny = VisionConfig.from_dict(dict(tiny_models.FASTVLM_VISION))
    assert tiny.layers == [1, 1, 1, 1, 1] and tiny.embed_dims == [4, 8, 16, 32, 64]
    assert tiny.pos_embs_shapes[3] == (7, 7) and tiny.token_mixers[3] == "attention"
    assert VisionConfig.layers == [2, 12, 24, 4, 2]
    assert VisionConfig.from_dict({}).embed_dims == [96, 192, 384, 768, 1536]
    assert patches.fastvlm_vision_config.fastvlm_vision_dict(tiny)["embed_dims"] == [4, 8, 16, 32, 64]
