"""The CoreML vision encoder (fastvithd.mlpackage) for Apple's FastVLM app.

A small FastViT tower (mlx-vlm's own VisionModel with smaller lists) is built with random but
image-dependent weights, exported, and checked three ways: the numpy evaluation of the graph
definition against the MLX tower, the saved package's spec, and the saved program read back from
the package (weights included) interpreted with numpy. CoreML prediction needs macOS.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
ct = pytest.importorskip("coremltools")

from mlx.utils import tree_flatten
from mlx_vlm.models.fastvlm.config import VisionConfig
from mlx_vlm.models.fastvlm.vision import VisionModel

from finetune_app.core.errors import FinetuneError, ModelError
from finetune_app.core.export import coreml_encoder as ce
from finetune_app.core.export import fastvit_graph as fg

SIZE = 1024
RTOL = 1e-4


def small_config() -> VisionConfig:
    """FastViTHD's structure at toy widths: 5 stages, attention in the last two (head size 32),
    real pos_embs_shapes and token_mixers. Widths must double (grouped downsampling convs)."""
    cfg = VisionConfig()
    cfg.layers = [1, 2, 1, 2, 1]
    cfg.embed_dims = [4, 8, 16, 32, 64]
    cfg.mlp_ratios = [4, 4, 4, 4, 4]
    cfg.downsamples = [True] * 5
    cfg.pos_embs_shapes = [None, None, None, (7, 7), (7, 7)]
    cfg.token_mixers = ("repmixer", "repmixer", "repmixer", "attention", "attention")
    return cfg


def randomize(tower, seed: int) -> None:
    """Weights that keep the features image-dependent.

    mlx-vlm's tower is the reparameterised (inference) FastViT: the token mixers and positional
    convs have the identity skip folded into their depthwise kernel, so random kernels without
    it (and MLX's uniform init, variance 1/(3 fan_in)) shrink the signal layer after layer until
    the output no longer depends on the image. Give those kernels their identity tap back and
    use fan-in scaled normal weights elsewhere; BatchNorm stats, biases and layer scales are
    non-trivial so that no coremltools pass can drop them as no-ops."""
    mx.random.seed(seed)
    params = []
    for key, value in tree_flatten(tower.parameters()):
        if "running_var" in key or "layer_scale" in key or key.endswith("bn.weight"):
            value = mx.random.uniform(0.5, 1.5, value.shape)
        elif key.endswith("bias") or "running_mean" in key:
            value = mx.random.normal(value.shape) * 0.02
        elif value.ndim == 4:
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            value = mx.random.normal(value.shape) * math.sqrt(2.0 / fan_in)
            mixer = ".token_mixer.reparam_conv." in key or (
                key.startswith("vision_model.network.") and key.count(".") == 4)
            if mixer:
                eye = np.zeros(value.shape, np.float32)
                eye[:, value.shape[1] // 2, value.shape[2] // 2, 0] = 1.0
                value = value * 0.3 + mx.array(eye)
        else:
            value = mx.random.normal(value.shape) * math.sqrt(1.0 / value.shape[-1])
        params.append((key, value))
    tower.load_weights(params)
    tower.eval()
    mx.eval(tower.parameters())


def mlx_features(tower, images: np.ndarray) -> np.ndarray:
    """Exactly what mlx-vlm's get_input_embeddings feeds the projector."""
    _, feats, _ = tower(mx.array(images).transpose(0, 2, 3, 1))
    b, h, w, c = feats.shape
    return np.array(feats.reshape(b, h * w, c))


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) / scale < RTOL
    # elementwise: relative, with a floor far below the features' scale for near-zero entries
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=1e-6 * scale)


@pytest.fixture(scope="module")
def cfg():
    return small_config()


@pytest.fixture(scope="module")
def tower(cfg):
    t = VisionModel(cfg)
    randomize(t, seed=0)
    return t


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(tower, images):
    return mlx_features(tower, images)


@pytest.fixture(scope="module")
def package(tower, cfg, tmp_path_factory):
    dest = tmp_path_factory.mktemp("enc") / "fastvithd.mlpackage"
    seen = []
    out = ce.build_fastvithd_mlpackage(tower, cfg, dest, progress=lambda f, m: seen.append(f))
    assert out == dest
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    return dest


# ---------------------------------------------------------------------------------------------
# shapes and the app contract
# ---------------------------------------------------------------------------------------------

def test_feature_shapes_follow_the_config(cfg):
    assert ce.expected_features_shape(cfg, 1024) == (1, 256, 128)
    assert ce.expected_features_shape(VisionConfig(), 1024) == (1, 256, 3072)
    assert fg.FastViTArch.from_config(VisionConfig()).total_stride == 64


def test_app_contract_real_config_passes_small_fails(cfg):
    assert ce.verify_app_contract(VisionConfig(), mm_hidden_size=3072) == (1, 256, 3072)
    with pytest.raises(ModelError) as err:
        ce.verify_app_contract(cfg)
    assert "[1, 256, 3072]" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="mm_hidden_size"):
        ce.verify_app_contract(VisionConfig(), mm_hidden_size=2048)


def test_gelu_is_exact_to_float32_precision():
    z = np.linspace(-9, 9, 4001)
    ref = np.array([math.erfc(v) for v in z])
    assert (np.abs(fg.erfc(z) - ref) / ref).max() < 1.2e-7
    x = np.linspace(-12, 12, 4001).astype(np.float32)
    g = np.array([0.5 * float(v) * math.erfc(-float(v) / math.sqrt(2)) for v in x])
    nz = g != 0
    rel = np.abs(fg.gelu_exact(x).astype(np.float64) - g)[nz] / np.abs(g[nz])
    assert rel.max() < 3e-7


# ---------------------------------------------------------------------------------------------
# numpy evaluation of the definition vs the MLX tower
# ---------------------------------------------------------------------------------------------

def test_test_tower_is_image_dependent(tower):
    x = np.random.default_rng(1).random((2, 3, 256, 256), dtype=np.float32)
    f = mlx_features(tower, x)
    assert np.abs(f[0] - f[1]).max() > 0.05 * np.abs(f).max()


def test_numpy_graph_matches_mlx_at_1024(tower, cfg, images, reference):
    got = ce.evaluate_graph_numpy(tower, cfg, images)
    assert got.shape == (1, 256, 128) and got.dtype == np.float32
    assert_close(got, reference)


def test_fine_tuned_weights_flow_through(cfg):
    x = np.random.default_rng(2).random((2, 3, 256, 256), dtype=np.float32)
    t = VisionModel(cfg)
    randomize(t, seed=1)
    before = ce.evaluate_graph_numpy(t, cfg, x)
    # simulate fine-tuning: nudge every tower weight
    mx.random.seed(3)
    t.load_weights([(k, v * (1 + 0.05 * mx.random.normal(v.shape)))
                    for k, v in tree_flatten(t.parameters())])
    t.eval()
    after = ce.evaluate_graph_numpy(t, cfg, x)
    ref = mlx_features(t, x)
    assert_close(after, ref)
    assert np.abs(after - before).max() > 100 * RTOL * np.abs(ref).max()


def test_batchnorm_uses_running_stats_even_in_train_mode(cfg):
    x = np.random.default_rng(4).random((1, 3, 128, 128), dtype=np.float32)
    t = VisionModel(cfg)
    randomize(t, seed=5)
    ref = mlx_features(t, x)
    t.train()
    try:
        assert_close(ce.evaluate_graph_numpy(t, cfg, x), ref)
    finally:
        t.eval()


def test_quantized_linears_are_dequantized(cfg):
    from mlx import nn
    x = np.random.default_rng(6).random((1, 3, 256, 256), dtype=np.float32)
    t = VisionModel(cfg)
    randomize(t, seed=7)
    nn.quantize(t, group_size=32, bits=8,
                class_predicate=lambda p, m: isinstance(m, nn.Linear) and "token_mixer" in p)
    assert any(k.endswith("qkv.scales") for k, _ in tree_flatten(t.parameters()))
    assert_close(ce.evaluate_graph_numpy(t, cfg, x), mlx_features(t, x))


def test_config_that_does_not_match_the_tower_is_refused(tower):
    wrong = small_config()
    wrong.embed_dims = [8, 16, 32, 64, 128]
    with pytest.raises(ModelError, match="shape"):
        ce.evaluate_graph_numpy(tower, wrong, np.zeros((1, 3, 64, 64), np.float32))
    fewer = small_config()
    fewer.layers = [1, 1, 1, 2, 1]
    with pytest.raises(ModelError, match="does not account for"):
        ce.evaluate_graph_numpy(tower, fewer, np.zeros((1, 3, 64, 64), np.float32))


# ---------------------------------------------------------------------------------------------
# the saved package
# ---------------------------------------------------------------------------------------------

def test_package_layout_and_spec(package):
    assert (package / "Manifest.json").is_file()
    assert (package / "Data/com.apple.CoreML/model.mlmodel").is_file()
    assert (package / "Data/com.apple.CoreML/weights/weight.bin").is_file()
    assert not list(package.parent.glob(".*partial*"))
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 7  # iOS 16
    (inp,) = spec.description.input
    (out,) = spec.description.output
    f32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert inp.name == "images" and inp.type.multiArrayType.dataType == f32
    assert list(inp.type.multiArrayType.shape) == [1, 3, SIZE, SIZE]
    assert out.name == "image_features" and out.type.multiArrayType.dataType == f32
    assert list(out.type.multiArrayType.shape) == [1, 256, 128]
    info = ce.check_mlpackage(package, expected_width=128)
    assert info["output"]["shape"] == [1, 256, 128]
    assert info["metadata"]["com.finetune.features_shape"] == "1,256,128"


def test_package_program_is_float32_without_casts(package):
    prog = ce.read_mlpackage_program(package)
    ops = prog.functions["main"].operations
    assert not [op for op in ops if op.op_type == "cast"]
    for op in ops:
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) \
                and op.outputs[0].val.dtype.kind == "f":
            assert op.outputs[0].val.dtype == np.float32, op.name


def test_package_weights_equal_the_towers(package, tower):
    """Every tower weight is in the package: verbatim under its own name, or folded by
    coremltools' passes (BatchNorm into the depthwise conv before it, a layer scale into the
    1x1 conv before it), found by value among the package's constants."""
    stored = ce.read_mlpackage_weights(package)
    tw = fg.tower_weights(tower)
    named = {ce.tower_key_for_const(k): v for k, v in stored.items()
             if k.startswith("vision_model__")}
    others = [v for k, v in stored.items() if not k.startswith("vision_model__")]

    def nchw(key):
        v = tw[key]
        if "layer_scale" in key:
            return v.reshape(1, -1, 1, 1)
        return v.transpose(0, 3, 1, 2) if v.ndim == 4 else v

    for key, value in named.items():
        assert np.array_equal(value, nchw(key)), key

    def stored_somewhere(arr):
        return any(o.shape == arr.shape and np.allclose(o, arr, rtol=1e-6, atol=1e-7)
                   for o in others)

    missing = sorted(set(tw) - set(named) - {"vision_model.head.proj"})
    covered = set()
    for key in missing:
        if key.endswith(".convffn.conv.conv.weight"):
            blk = key[: -len(".conv.conv.weight")]
            bn = blk + ".conv.bn."
            k = tw[bn + "weight"] / np.sqrt(tw[bn + "running_var"] + fg.BN_EPS)
            assert stored_somewhere(nchw(key) * k.reshape(-1, 1, 1, 1)), key
            assert stored_somewhere(tw[bn + "bias"] - tw[bn + "running_mean"] * k), key
            covered |= {key} | {bn + s for s in ("weight", "bias", "running_mean",
                                                 "running_var")}
        elif key.endswith(".convffn.fc2.weight"):
            blk = key[: -len(".convffn.fc2.weight")]
            ls = tw.get(blk + ".layer_scale", tw.get(blk + ".layer_scale_2")).reshape(-1)
            assert stored_somewhere(nchw(key) * ls.reshape(-1, 1, 1, 1)), key
            assert stored_somewhere(tw[blk + ".convffn.fc2.bias"] * ls), key
            covered |= {key, blk + ".convffn.fc2.bias", blk + ".layer_scale",
                        blk + ".layer_scale_2"}
    assert set(missing) <= covered, sorted(set(missing) - covered)
    # the unfolded majority (all other convs, attention, norms) is stored verbatim
    assert len(named) >= len(tw) // 2


def test_saved_program_matches_mlx(package, images, reference):
    got = ce.evaluate_mlpackage_numpy(package, images)
    assert got.shape == (1, 256, 128)
    assert_close(got, reference)


def test_rebuild_replaces_the_package_atomically(tower, cfg, tmp_path):
    dest = tmp_path / "fastvithd.mlpackage"
    ce.build_fastvithd_mlpackage(tower, cfg, dest, image_size=128)
    assert ce.check_mlpackage(dest, expected_width=128, image_size=128)
    ce.build_fastvithd_mlpackage(tower, cfg, dest, image_size=256)
    info = ce.check_mlpackage(dest, expected_width=128, image_size=256)
    assert info["input"]["shape"] == [1, 3, 256, 256]
    wrong = small_config()
    wrong.embed_dims = [8, 16, 32, 64, 128]
    with pytest.raises(ModelError):
        ce.build_fastvithd_mlpackage(tower, wrong, dest, image_size=128)
    assert ce.check_mlpackage(dest, expected_width=128, image_size=256)  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fastvithd.mlpackage"]
    with pytest.raises(FinetuneError, match="mlpackage"):
        ce.build_fastvithd_mlpackage(tower, cfg, tmp_path / "fastvithd.mlmodel")


# ---------------------------------------------------------------------------------------------
# a package chosen by the user
# ---------------------------------------------------------------------------------------------

def tiny_package(dest: Path, *, in_name="images", out_name="image_features", size=SIZE,
                 out_shape=(1, 256, 128)) -> Path:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    def body(x):
        y = mb.reduce_mean(x=x, axes=[1, 2, 3], keep_dims=False)      # [1]
        y = mb.reshape(x=y, shape=[1, 1, 1])
        return mb.tile(x=y, reps=list(out_shape), name=out_name)

    spec = [mb.TensorSpec(shape=(1, 3, size, size), dtype=types.fp32)]
    fn = eval(f"lambda {in_name}: body({in_name})", {"body": body})   # the input's name
    prog = mb.program(input_specs=spec, opset_version=ct.target.iOS16)(fn)
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    model.save(str(dest))
    return dest


def test_check_accepts_a_matching_foreign_package(tmp_path):
    p = tiny_package(tmp_path / "fastvithd.mlpackage")
    assert ce.check_mlpackage(p, expected_width=128)["output"]["shape"] == [1, 256, 128]


@pytest.mark.parametrize("kwargs, expected_width, needle", [
    (dict(in_name="pixel_values"), 128, "'images'"),
    (dict(out_name="features"), 128, "'image_features'"),
    (dict(out_shape=(1, 256, 64)), 128, "[1, 256, 128]"),
    (dict(size=512, out_shape=(1, 64, 128)), 128, "[1, 3, 1024, 1024]"),
    (dict(), 3072, "[1, 256, 3072]"),
])
def test_check_rejects_wrong_names_and_shapes(tmp_path, kwargs, expected_width, needle):
    p = tiny_package(tmp_path / "fastvithd.mlpackage", **kwargs)
    with pytest.raises(FinetuneError) as err:
        ce.check_mlpackage(p, expected_width=expected_width)
    msg = str(err.value)
    assert needle in msg and "does not fit this model" in msg
    assert "\n" not in msg and err.value.fix  # one paragraph: problem + fix


def test_check_rejects_missing_and_non_packages(tmp_path):
    with pytest.raises(FinetuneError, match="does not exist"):
        ce.check_mlpackage(tmp_path / "nope.mlpackage", expected_width=3072)
    (tmp_path / "fake.mlpackage").mkdir()
    with pytest.raises(FinetuneError, match="not a CoreML"):
        ce.check_mlpackage(tmp_path / "fake.mlpackage", expected_width=3072)
