"""The `fastvlm` side-by-side setup at `--size real` is Apple's FastVLM-0.5B shape: mlx-vlm 0.7.10's
own FastViTHD tower (the one it builds for a config.json without tower lists), the mlp2x_gelu
projector from 3072, the Qwen2-0.5B LM; at 1024 px each picture is 256 features (#16).

Built lazily from the config (MLX evaluates nothing: shapes are known when the graph is built), so
the real 0.6B-parameter model costs a second here; tiny_models.py builds its weights for the GPU."""

import dataclasses
import importlib.util
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from finetune_app.core import patches
from finetune_app.core.families.fastvlm import FastVLM
from finetune_app.testing.tiny_models import _build_vlm, tiny_config

SPEC = importlib.util.spec_from_file_location("side_by_side", Path(__file__).parent.parent / "benchmarks" / "side_by_side.py")


def harness():
    mod = importlib.util.module_from_spec(SPEC)
    SPEC.loader.exec_module(mod)
    return mod


def test_real_fastvlm_is_mlx_vlms_fastvithd_with_256_features_at_1024px():
    from mlx_vlm.models.fastvlm.config import ModelConfig, TextConfig, VisionConfig

    sbs = harness()
    vis = sbs.FASTVITHD
    for key, value in vis.items():  # mlx-vlm keeps the architecture lists as class attributes
        ours = [list(x) if isinstance(x, tuple) else x for x in value] if isinstance(value, list) else value
        theirs = getattr(VisionConfig, key)
        theirs = [list(x) if isinstance(x, tuple) else x for x in theirs] if isinstance(theirs, (list, tuple)) else theirs
        assert ours == theirs, key
    text = {f.name: f.default for f in dataclasses.fields(TextConfig) if f.name in sbs.FASTVLM_05B}
    assert text and all(sbs.FASTVLM_05B[k] == v for k, v in text.items()), text
    assert sbs.FASTVLM_05B["mm_hidden_size"] == ModelConfig.__dataclass_fields__["mm_hidden_size"].default == 3072

    patches.apply()
    model = _build_vlm("fastvlm", tiny_config("fastvlm", image_size=1024, **sbs.FASTVLM_05B))
    tower = sum(v.size for _, v in tree_flatten(model.vision_tower.parameters()))
    assert 124e6 < tower < 126e6  # FastViTHD's 125M
    feats = FastVLM.tower_features(model, mx.zeros((1, 3, 1024, 1024)))  # lazy: nothing is computed
    assert feats.shape == (1, 256, 3072)
    assert model.mm_projector(feats).shape == (1, 256, 896)
