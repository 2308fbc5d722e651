"""Sequence packing (#16): several examples in one row behind a block-diagonal causal mask give
the same summed loss and the same gradients as the unpacked batch (fp32, tiny models of the real
architectures), on the fast path of text models and of Qwen-VL (per-example mRoPE ids)."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.batch import pack_rows
from finetune_app.core.training.trainer import Trainer

# One long answer and short ones: the short rows fit together in the long row's length.
ANSWERS = ["a red circle on a white page, drawn with a thick brush and a steady hand, centred and large",
           "a blue square", "green", "a small grey dot"]


def write_rows(folder, with_images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, answer in enumerate(ANSWERS):
        if with_images:
            Image.new("RGB", (32 + 16 * (i % 2), 32), ("red", "blue", "green", "grey")[i]).save(folder / f"{i}.png")
            rows.append({"images": [f"{i}.png"], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                {"role": "assistant", "content": answer}]})
        else:
            rows.append({"messages": [{"role": "user", "content": f"Item {i}?"},
                                      {"role": "assistant", "content": answer}]})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "data.jsonl"


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([10, 3, 7, 2, 5], 10) == [[0], [2, 1], [4, 3]]
    assert pack_rows([4, 4, 4], 4) == [[0], [1], [2]]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen2_vl", "qwen3_vl"])
def test_packed_loss_and_gradients_equal_unpacked(family, tiny_model, tmp_path):
    data = write_rows(tmp_path / "data", with_images=family.endswith("_vl"))
    cfg = TrainConfig(model=str(tiny_model(family)), data=str(data), output=str(tmp_path / "run"), iters=1,
                      batch_size=4, valid_fraction=0.0, sample_count=0, grad_clip=None, pack=True)
    trainer = Trainer(cfg)
    trainer.setup()
    fam, model = trainer.family, trainer.base.model
    assert fam.fast and fam.pack
    examples = trainer.data.train
    packed = fam.plan(examples)
    fam.pack = False
    plain = fam.plan(examples)
    assert packed.src.shape[0] < plain.src.shape[0], "the short rows share a row"
    assert packed.n_targets == plain.n_targets

    def value_and_grads(batch):
        f = nn.value_and_grad(model, lambda x: trainer.objective.loss(model, fam, x)[0])
        loss, grads = f(fam.inputs(batch))
        mx.eval(loss, grads)
        return loss.item(), dict(tree_flatten(grads))

    lp, gp = value_and_grads(packed)
    lu, gu = value_and_grads(plain)
    assert lp == pytest.approx(lu, rel=1e-5, abs=1e-5)
    assert gp.keys() == gu.keys() and gp
    for k in gu:
        np.testing.assert_allclose(np.array(gp[k]), np.array(gu[k]), rtol=1e-5, atol=1e-5, err_msg=k)
