"""The frozen Qwen-VL tower is compiled per group signature (#16, families/qwen_vl.py): a signature
met by two planned groups or more takes a compiled tower whose grid is a constant of the trace, and
gives the features of the library's own, uncompiled tower, in the tower's dtype: mlx-vlm's
`get_input_embeddings` casts the pixels to it (#16 towerspeed: float32 pixels ran a bf16 tower in
float32)."""

import mlx.core as mx
import numpy as np
import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.models import load_base
from finetune_app.core.training.trainer import Trainer


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_a_repeated_signature_takes_the_compiled_tower_with_the_library_features(family, tiny_model, shapes_data,
                                                                                  tmp_path):
    cfg = TrainConfig(model=str(tiny_model(family)), data=str(shapes_data), output=str(tmp_path / "run"),
                      epochs=1, batch_size=4, sample_count=0)
    base = load_base(str(tiny_model(family)))
    base.model.set_dtype(mx.bfloat16)  # (the GPU runs' dtype)
    trainer = Trainer(cfg, base=base)
    data = trainer.setup()
    fam = trainer.family
    assert len(fam.compiled_signatures) >= 1, "the 64-px pictures of every planned group share one signature"
    tower = fam.base.model.vision_tower
    for b in trainer.batches_of_epoch(0)[:2]:  # two groups of one signature: one trace, two calls
        examples = [trainer._materialise(data.train[i]) for i in b]  # (pictures read: #16 vlmwarm)
        images = [img for ex in examples for img in fam._images(ex, ex.feature_keys)]
        fam.plan(examples)
        pixels = mx.array(np.concatenate([rows for _, (rows, _) in images])).astype(mx.bfloat16)  # (as the library)
        grid = mx.array(np.stack([g for _, (_, g) in images]))
        out = tower(pixels, grid) if fam.deepstack else tower(pixels, grid, output_hidden_states=False)
        feats, deep = out if fam.deepstack else (out, None)
        got = mx.concatenate([fam.features[k] for k, _ in images])
        assert got.dtype == feats.dtype == mx.bfloat16
        assert mx.allclose(got, feats, rtol=0, atol=1e-5).item()
        if deep is not None:
            got = mx.concatenate([fam.deep[k] for k, _ in images], axis=1)
            assert mx.allclose(got, mx.stack(list(deep)), rtol=0, atol=1e-5).item()
    assert fam.compiled_calls == 2 and len(fam.compiled_towers) == 1
    trainer._release_run_dir(failed=False)
