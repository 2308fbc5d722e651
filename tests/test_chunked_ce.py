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

