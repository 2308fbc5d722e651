"""The Swift bundles of a tiny FastVLM.

Done-when (2): the FastVLM-app ("mlx-swift") bundle's weight names, shapes, config keys and
processor files are exactly what shared/reference/bundles.md section 2 lists. The expected sets are
written here from the reference and the model config, independently of the exporter (for each
layer i the exact names); a missing or unexpected key fails.
Done-when (3): the bundle carries fastvithd.mlpackage built from the (fine-tuned) tower, or the
user's package after its check. Also: quantized app bundle (per-layer scales/biases +
`quantization`), untied lm_head, and the mlx-swift-lm (MLXVLM) layout.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("coremltools")

from test_export_support import make_adapter

from finetune_app.core.errors import FinetuneError
from finetune_app.core.export.export import ExportOptions, export
from finetune_app.testing.tiny_models import build_tiny_model, cached_tiny_model

# bundles.md section 2, written out.
APP_CONFIG_KEYS = {"model_type", "mm_hidden_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                   "num_attention_heads", "rms_norm_eps", "vocab_size", "num_key_value_heads",
                   "max_position_embeddings", "rope_theta", "rope_traditional", "rope_scaling",
                   "tie_word_embeddings", "image_token_index"}
PREPROCESSOR = {"image_mean": [0, 0, 0], "image_std": [1, 1, 1], "size": {"shortest_edge": 1024},
                "crop_size": {"height": 1024, "width": 1024}, "processor_class": "LlavaProcessor",
                "image_processor_type": "CLIPImageProcessor"}
PROCESSOR = {"image_token": "<image>", "num_additional_image_tokens": 0, "processor_class": "LlavaProcessor",
             "patch_size": 64}
MLXVLM_VISION_KEYS = {"cls_ratio", "down_patch_size", "down_stride", "downsamples", "embed_dims", "hidden_size",
                      "image_size", "intermediate_size", "layers", "layer_scale_init_value", "mlp_ratios",
                      "num_classes", "patch_size", "pos_embs_shapes", "projection_dim", "repmixer_kernel_size",
                      "token_mixers"}


def expected_weights(base_cfg: dict, vocab: int) -> dict[str, tuple]:
    """Name -> float shape of every weight the app declares, from the *base* model's config."""
    h, n_layers = base_cfg["hidden_size"], base_cfg["num_hidden_layers"]
    heads, kv, inter, mm = (base_cfg["num_attention_heads"], base_cfg["num_key_value_heads"],
                            base_cfg["intermediate_size"], base_cfg["mm_hidden_size"])
    d = h // heads
    w = {"language_model.model.embed_tokens.weight": (vocab, h), "language_model.model.norm.weight": (h,),
         "multi_modal_projector.linear_0.weight": (h, mm), "multi_modal_projector.linear_0.bias": (h,),
         "multi_modal_projector.linear_2.weight": (h, h), "multi_modal_projector.linear_2.bias": (h,)}
    for i in range(n_layers):
        a = f"language_model.model.layers.{i}.self_attn"
        m = f"language_model.model.layers.{i}.mlp"
        w[f"{a}.q_proj.weight"], w[f"{a}.q_proj.bias"] = (heads * d, h), (heads * d,)
        w[f"{a}.k_proj.weight"], w[f"{a}.k_proj.bias"] = (kv * d, h), (kv * d,)
        w[f"{a}.v_proj.weight"], w[f"{a}.v_proj.bias"] = (kv * d, h), (kv * d,)
        w[f"{a}.o_proj.weight"] = (h, heads * d)
        w[f"{m}.gate_proj.weight"], w[f"{m}.up_proj.weight"], w[f"{m}.down_proj.weight"] = (inter, h), (inter, h), (h, inter)
        w[f"language_model.model.layers.{i}.input_layernorm.weight"] = (h,)
        w[f"language_model.model.layers.{i}.post_attention_layernorm.weight"] = (h,)
    if not base_cfg.get("tie_word_embeddings", True):
        w["language_model.lm_head.weight"] = (vocab, h)
    return w


def stored_shapes(folder) -> dict[str, tuple]:
    out = {}
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        out.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return out


def check_tokenizer(folder, base_dir, cfg):
    """<image> = largest added id + 1, one token, image_token_index = it, inside the vocabulary."""
    from tokenizers import Tokenizer

    src = json.loads((base_dir / "tokenizer.json").read_text())
    want = max(t["id"] for t in src["added_tokens"]) + 1
    assert cfg["image_token_index"] == want
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.token_to_id("<image>") == want
    ids = tok.encode("Describe." + "<image>" * 256, add_special_tokens=False).ids
    assert ids.count(want) == 256
    assert cfg["vocab_size"] >= want + 1
    decoder = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert decoder[str(want)]["content"] == "<image>"
    return want


@pytest.fixture(scope="module")
def fastvlm_run(tmp_path_factory):
    """A FastVLM adapter that also adapts the vision tower and trains the projector."""
    d = tmp_path_factory.mktemp("swift")
    return make_adapter("fastvlm", d / "run", train_vision=True, train_projector=True)


@pytest.fixture(scope="module")
def app_bundle(fastvlm_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "FastVLM-finetuned"
    result = export(ExportOptions(output=out, target="mlx-swift", adapter=fastvlm_run))
    return out, result


def test_app_bundle_matches_reference_exactly(app_bundle):
    out, result = app_bundle
    base_dir = cached_tiny_model("fastvlm")
    base_cfg = json.loads((base_dir / "config.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg) == APP_CONFIG_KEYS
    assert cfg["model_type"] == "llava_qwen2" and cfg["tie_word_embeddings"] is True
    for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "mm_hidden_size", "rms_norm_eps", "max_position_embeddings", "rope_theta"):
        assert cfg[k] == base_cfg[k], k
    image_id = check_tokenizer(out, base_dir, cfg)
    vocab = max(base_cfg["vocab_size"], image_id + 1)
    assert cfg["vocab_size"] == vocab
    want = expected_weights(base_cfg, vocab)
    got = stored_shapes(out)
    assert set(got) - set(want) == set(), f"unexpected keys: {sorted(set(got) - set(want))}"
    assert set(want) - set(got) == set(), f"missing keys: {sorted(set(want) - set(got))}"
    assert got == want
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert {k: pre[k] for k in PREPROCESSOR} == PREPROCESSOR
    assert json.loads((out / "processor_config.json").read_text()) == PROCESSOR
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
                     "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                     "fastvithd.mlpackage", "generation_config.json", "chat_template.jinja",
                     "finetune_app.json"}  # the prompt layout trained with (the app ignores it)
    assert json.loads((out / "finetune_app.json").read_text())["serve_target"] == "mlx-vlm"
    assert any("--serve-target mlx-swift" in w for w in result.warnings)  # trained for mlx-vlm: said plainly
    v = result.verification
    assert v.ok, v.problems
    print(f"app bundle: simulated app forward vs base+adapter: {v.max_logit_diff:.3g}")
    assert v.max_logit_diff < 1e-4  # the app's forward, simulated on the exported weights
    assert any("tokenizer has no spare" in w for w in result.warnings)  # the tiny vocab is full


def test_app_bundle_projector_and_encoder_come_from_the_finetune(app_bundle, fastvlm_run):
    from finetune_app.core.export import coreml_encoder as ce
    from finetune_app.core.export import fuse
    from finetune_app.core.models import load_base

    out, _ = app_bundle
    base = load_base(cached_tiny_model("fastvlm"))
    original_q = np.array(base.model.vision_tower.vision_model.network[10][0].token_mixer.qkv.weight)
    original_p = np.array(base.model.mm_projector[0].weight)
    fuse.fuse_adapter(base, fastvlm_run)
    fused_q = np.array(base.model.vision_tower.vision_model.network[10][0].token_mixer.qkv.weight)
    weights = mx.load(str(out / "model.safetensors"))
    stored_p = np.array(weights["multi_modal_projector.linear_0.weight"])
    assert np.abs(stored_p - original_p).max() > 1e-3  # the trained projector, not the base's
    np.testing.assert_allclose(stored_p, np.array(base.model.mm_projector[0].weight), atol=1e-6)
    assert np.abs(fused_q - original_q).max() > 1e-3  # the adapter moved the tower
    info = ce.check_mlpackage(out / "fastvithd.mlpackage", expected_width=128, image_size=1024)
    assert info["output"]["shape"] == [1, 256, 128]
    consts = ce.read_mlpackage_weights(out / "fastvithd.mlpackage")
    matches = [v for k, v in consts.items() if v.size == fused_q.size and
               np.allclose(v.reshape(-1), fused_q.reshape(-1), atol=1e-6) or
               v.size == fused_q.size and np.allclose(v.reshape(-1), fused_q.T.reshape(-1), atol=1e-6)]
    assert matches, "the package must hold the fine-tuned tower's attention weights"


def test_quantized_app_bundle_with_user_mlpackage(app_bundle, fastvlm_run, tmp_path):
    src_out, _ = app_bundle
    user_pkg = tmp_path / "my-encoder.mlpackage"
    import shutil

    shutil.copytree(src_out / "fastvithd.mlpackage", user_pkg)
    out = tmp_path / "q4"
    r = export(ExportOptions(output=out, target="mlx-swift", adapter=fastvlm_run, quantize_bits=4, group_size=64,
                             mlpackage=user_pkg))
    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg) == APP_CONFIG_KEYS | {"quantization"}
    assert cfg["quantization"] == {"group_size": 64, "bits": 4}
    base_cfg = json.loads((cached_tiny_model("fastvlm") / "config.json").read_text())
    want = expected_weights(base_cfg, cfg["vocab_size"])
    got = stored_shapes(out)
    expected = {}
    for name, shape in want.items():
        stem = name[: -len(".weight")]
        if name.endswith(".weight") and len(shape) == 2 and f"{stem}.scales" in got:
            expected[name] = shape[:-1] + (shape[-1] * 4 // 32,)
            expected[f"{stem}.scales"] = expected[f"{stem}.biases"] = shape[:-1] + (shape[-1] // 64,)
        else:
            expected[name] = shape
    assert got == expected
    quantized = {k[: -len(".scales")] for k in got if k.endswith(".scales")}
    assert "language_model.model.layers.0.self_attn.q_proj" in quantized
    assert "multi_modal_projector.linear_0" in quantized
    assert (out / "fastvithd.mlpackage" / "Manifest.json").is_file() and not (out / "my-encoder.mlpackage").exists()
    assert any("vision tower" in w for w in r.warnings)  # the user's package is not the fine-tuned tower
    print(f"4-bit app bundle: simulated app forward vs base+adapter: {r.verification.max_logit_diff:.3g}")
    assert r.verification.ok and r.verification.tolerance is None


def test_untied_lm_head_and_bad_mlpackage(app_bundle, tmp_path):
    base_dir = build_tiny_model("fastvlm", tmp_path / "untied", tie_word_embeddings=False)
    run = make_adapter(str(base_dir), tmp_path / "run")
    bad = tmp_path / "fastvithd.mlpackage"
    bad.mkdir()
    with pytest.raises(FinetuneError):
        export(ExportOptions(output=tmp_path / "x", target="mlx-swift", adapter=run, mlpackage=bad, verify=False))
    assert not (tmp_path / "x").exists()
    out = tmp_path / "app"
    # same seed, same tower: the package built for the tied model fits (and is checked again)
    r = export(ExportOptions(output=out, target="mlx-swift", adapter=run, mlpackage=app_bundle[0] / "fastvithd.mlpackage"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    base_cfg = json.loads((base_dir / "config.json").read_text())
    assert stored_shapes(out) == expected_weights(base_cfg, cfg["vocab_size"])
    assert "language_model.lm_head.weight" in stored_shapes(out)
    print(f"untied app bundle: simulated app forward vs base+adapter: {r.verification.max_logit_diff:.3g}")
    assert r.verification.ok and r.verification.max_logit_diff < 1e-4


def test_mlx_swift_lm_layout(fastvlm_run, tmp_path):
    out = tmp_path / "mlxvlm"
    r = export(ExportOptions(output=out, target="mlx-swift-lm", adapter=fastvlm_run))
    cfg = json.loads((out / "config.json").read_text())
    assert MLXVLM_VISION_KEYS <= set(cfg["vision_config"])
    for k in ("eos_token_id", "mm_projector_type", "mm_hidden_size", "tokenizer_model_max_length", "tokenizer_padding_side"):
        assert k in cfg, k
    assert isinstance(cfg["eos_token_id"], int) and cfg["model_type"] == "llava_qwen2"
    got = stored_shapes(out)
    assert any(k.startswith("vision_tower.vision_model.") for k in got)  # mlx-vlm names, tower included
    assert "mm_projector.0.weight" in got and not any(k.startswith("multi_modal_projector") for k in got)
    assert json.loads((out / "preprocessor_config.json").read_text())["processor_class"] == "FastVLMProcessor"
    print(f"mlx-swift-lm bundle via mlx_vlm.load vs base+adapter: {r.verification.max_logit_diff:.3g}")
    assert r.verification.ok and r.verification.max_logit_diff < 1e-4
