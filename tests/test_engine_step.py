"""One step function for every path: accumulating micro-batches gives the step one batch gives
(loss, clipped gradient, updated weights), compiled (fast path) and on the library path."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.trainer import Trainer


@pytest.mark.parametrize("fast", [True, False])
def test_accumulated_micro_batches_equal_one_batch(fast, tiny_model, instruction_data, tmp_path):
    model = tiny_model("llama")

    def one_step(micro: int, out):
        cfg = TrainConfig(model=str(model), data=str(instruction_data), output=str(out), iters=1, batch_size=4,
                          sample_count=0, grad_clip=0.05, compile=fast, seed=0)
        t = Trainer(cfg)
        t.setup()
        assert t.family.fast == fast
        t.optimizer.learning_rate = mx.array(1e-2)
        ex = t.data.train[:4]
        batches = [t.make_batch(ex)] if micro == 1 else [t.make_batch(ex[:2]), t.make_batch(ex[2:])]
        loss, grad_norm = t.step(batches)
        params = dict(tree_flatten(t.base.model.trainable_parameters()))
        mx.eval(loss, grad_norm, params)
        return loss.item(), grad_norm.item(), params

    l1, g1, p1 = one_step(1, tmp_path / "one")
    l2, g2, p2 = one_step(2, tmp_path / "two")
    assert l2 == pytest.approx(l1, rel=1e-5)
    assert g2 == pytest.approx(g1, rel=1e-4) and g1 > 0.05  # the clip was active
    for k in p1:
        assert mx.allclose(p1[k], p2[k], rtol=1e-4, atol=1e-6).item(), k
    assert any(mx.abs(v).max().item() > 0 for k, v in p1.items() if "lora_b" in k), "the step updated LoRA B"


def test_a_rank_without_examples_joins_the_step_with_nothing_supervised(tiny_model, shapes_data, tmp_path):
    """Data parallel: a global micro-batch smaller than the world leaves a rank without examples; it
    still plans a batch (on the Qwen-VL fast path too, with its mRoPE ids) that adds zero loss."""
    from finetune_app.core.distributed import World

    cfg = TrainConfig(model=str(tiny_model("qwen2_vl")), data=str(shapes_data), output=str(tmp_path / "run"),
                      iters=1, batch_size=1, sample_count=0)
    t = Trainer(cfg)
    t.setup()
    assert t.family.fast
    t.world = World(group=None, rank=1, size=2)  # rank 1 of 2, planning only (no collective runs)
    batch = t.make_batch(t.shard([0]))
    assert batch.n_targets == 0 and batch.positions is not None
    total, count = t.step.loss_sum(batch)
    assert total.item() == 0.0 and count.item() == 0
