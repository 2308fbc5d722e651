"""The chunked LM head + cross-entropy equals the plain one: loss and gradients (fp32), for an
lm_head and for tied embeddings."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from finetune_app.core.training.chunked_ce import chunked_ce_sum


class Owner(nn.Module):
    def __init__(self, tied: bool, V=300, D=16):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(V, D)
        if not tied:
            self.lm_head = nn.Linear(D, V, bias=False)


def plain(owner, h, t, w):
    logits = owner.lm_head(h) if "lm_head" in owner else owner.model.embed_tokens.as_linear(h)
    return (nn.losses.cross_entropy(logits, t, reduction="none") * w).sum()


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_equals_plain(tied):
    mx.random.seed(0)
    owner = Owner(tied)
    K, D = 37, 16
    h = mx.random.normal((K, D))
    t = mx.random.randint(0, 300, (K,))
    w = mx.array((np.arange(K) % 5 != 0).astype(np.float32))  # some padding entries

    def grads(fn):
        def f(params, hidden):
            owner.update(params)
            return fn(owner, hidden, t, w)
        params = owner.trainable_parameters()
        (loss, (gp, gh)) = (lambda v: (v[0], v[1]))(mx.value_and_grad(f, argnums=(0, 1))(params, h))
        mx.eval(loss, gp, gh)
        owner.update(params)
        return loss.item(), dict(tree_flatten(gp)), gh

    lp, gpp, ghp = grads(plain)
    lc, gpc, ghc = grads(lambda o, x, tt, ww: chunked_ce_sum(o, x, tt, ww, chunk=8))
    assert lc == pytest.approx(lp, rel=1e-5)
    np.testing.assert_allclose(np.array(ghc), np.array(ghp), rtol=1e-5, atol=1e-6)
    assert gpc.keys() == gpp.keys() and gpp
    for k in gpp:
        np.testing.assert_allclose(np.array(gpc[k]), np.array(gpp[k]), rtol=1e-5, atol=1e-6, err_msg=k)



@pytest.mark.parametrize("tied", [False, True])
def test_fused_equals_plain(tied):
    """The fused head (frozen weights): the plain head's loss and gradient for the hidden states,
    over several chunks, padding entries included."""
    from finetune_app.core.training.chunked_ce import fused_ce_sum, head_weight

    mx.random.seed(1)
    owner = Owner(tied)
    owner.freeze()
    K, D = 37, 16
    h = mx.random.normal((K, D))
    t = mx.random.randint(0, 300, (K,))
    w = mx.array((np.arange(K) % 5 != 0).astype(np.float32))
    W = head_weight(owner)
    assert W is not None
    lp, gp = mx.value_and_grad(lambda x: plain(owner, x, t, w))(h)
    lf, gf = mx.value_and_grad(lambda x: fused_ce_sum(W, x, t, w, chunk=8))(h)
    assert lf.item() == pytest.approx(lp.item(), rel=1e-5)
    np.testing.assert_allclose(np.array(gf), np.array(gp), rtol=1e-5, atol=1e-6)
    owner.unfreeze()
    assert head_weight(owner) is None, "a trained head keeps the recomputing path (its weights need gradients)"


def test_fused_head_peak_is_bounded_by_one_chunk():
    """Memory, not time: a value-and-grad pass of the fused head over K positions holds a few
    chunks' logits, never the [K, V] logits (the plain head holds them about three times)."""
    from finetune_app.core.training.chunked_ce import fused_ce_sum

    K, D, V, chunk = 512, 16, 8192, 16
    mx.random.seed(2)
    W, h = mx.random.normal((V, D)) * 0.1, mx.random.normal((K, D))
    t, w = mx.random.randint(0, V, (K,)), mx.ones((K,))
    mx.eval(W, h, t, w)
    step = lambda x: fused_ce_sum(W, x, t, w, chunk=chunk)  # noqa: E731
    mx.eval(mx.value_and_grad(step)(h))  # kernels and first-use allocations out of the way
    mx.eval(mx.value_and_grad(lambda x: plain_fn(W, x, t, w))(h))
    peaks = {}
    for name, fn in (("fused", step), ("plain", lambda x: plain_fn(W, x, t, w))):
        before = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(mx.value_and_grad(fn)(h))
        peaks[name] = mx.get_peak_memory() - before
    # MLX allocates an op's output when it queues it, ~10 ops ahead of the device: about eleven float32
    # copies of one chunk were live on the CPU; the per-position rows are small
    bound = 16 * chunk * V * 4 + 4 * K * (D + 1) * 4
    assert peaks["fused"] <= bound < K * V * 4, peaks
    assert peaks["plain"] > 2 * K * V * 4, peaks  # (what the bound guards against: the whole logits)


def plain_fn(W, h, t, w):
    return (nn.losses.cross_entropy(h @ W.T, t, reduction="none") * w).sum()


@pytest.mark.parametrize("family, compiled", [("llama", True), ("qwen2_vl", True), ("qwen2_vl", False)])
def test_sft_objective_chunks_large_logits_with_the_same_loss_and_grads(family, compiled, tiny_model, tmp_path):
    """Through the SFT objective on the fast path, compiled and not (a text model's uncompiled path
    is the library's own forward, which applies the head itself): a logits budget below the batch's
    positions x vocabulary takes the chunked head, with the plain head's loss and gradients."""
    from functools import partial

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import chunked_ce
    from finetune_app.core.training.objectives import Objective, sft
    from finetune_app.core.training.step import Step
    from finetune_app.core.training.trainer import Trainer
    from test_engine_loss import write_rows

    data = write_rows(tmp_path / "data", with_images=family != "llama")
    cfg = TrainConfig(model=str(tiny_model(family)), data=str(data), output=str(tmp_path / "run"), iters=1,
                      batch_size=3, valid_fraction=0.0, sample_count=0, compile=compiled)
    trainer = Trainer(cfg)
    trainer.setup()
    fam, model = trainer.family, trainer.base.model
    assert fam.fast and fam.compiled == compiled
    batch = trainer.make_batch(trainer.data.train)
    x = trainer.step.inputs(batch)
    owner, hidden, _, _ = fam.hidden_predictions(model, x)
    values = hidden.shape[0] * chunked_ce.vocab_size(owner)
    assert chunked_ce.head_weight(owner) is not None, "LoRA leaves the head frozen: the fused head applies"
    calls = {"chunked": [], "fused": []}
    real = {"chunked": chunked_ce.chunked_ce_sum, "fused": chunked_ce.fused_ce_sum, "weight": chunked_ce.head_weight,
            "values": chunked_ce.FUSED_VALUES}
    results = {}
    # plain head (at the budget), chunked + recomputed (a fifth of it; as for a trained head), fused (chunks of a fifth)
    for name, budget in (("plain", values), ("chunked", values // 5), ("fused", values)):
        step = Step(model, trainer.optimizer, fam, Objective("sft", sft, {"logits_budget": budget}))
        fn = step._grads()
        if compiled:
            fn = mx.compile(fn, inputs=[model.state], outputs=[model.state])
        chunked_ce.chunked_ce_sum = lambda *a, **k: calls["chunked"].append(k["chunk"]) or real["chunked"](*a, **k)
        chunked_ce.fused_ce_sum = lambda *a, **k: calls["fused"].append(a[1].shape[0]) or real["fused"](*a, **k)
        if name == "fused":
            chunked_ce.FUSED_VALUES = values // 5
        else:
            chunked_ce.head_weight = lambda owner: None
        try:
            (loss, _), grads = fn(mx.array(float(batch.n_targets)), x)
            mx.eval(loss, grads)
        finally:
            chunked_ce.chunked_ce_sum, chunked_ce.fused_ce_sum = real["chunked"], real["fused"]
            chunked_ce.head_weight, chunked_ce.FUSED_VALUES = real["weight"], real["values"]
        results[name] = (loss.item(), dict(tree_flatten(grads)))
    assert calls["chunked"] and calls["chunked"][0] < hidden.shape[0], "the smaller budget took the chunked head"
    assert calls["fused"], "a frozen head takes the fused head"
    lp, gp = results["plain"]
    assert gp
    for name in ("chunked", "fused"):
        lc, gc = results[name]
        assert lc == pytest.approx(lp, rel=1e-5), name
        assert gc.keys() == gp.keys()
        for k in gp:
            np.testing.assert_allclose(np.array(gc[k]), np.array(gp[k]), rtol=1e-4, atol=1e-6, err_msg=f"{name} {k}")
