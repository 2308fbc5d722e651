"""The SFT loss on a bf16 model holds no more memory than mlx-lm's own loss on the same batch (#16):
the cross-entropy runs on the logits in the model's dtype (a float32 copy of [K, V] logits and its
softmax made our peak 1.7x mlx-lm's at a large vocabulary), while the loss itself stays within
bf16 rounding of mlx-lm's."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

B, L, PROMPT = 4, 192, 110


def test_sft_loss_peak_is_at_most_mlx_lms(tmp_path):
    from mlx_lm.tuner.trainer import default_loss

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.families import family_for
    from finetune_app.core.models import load_base
    from finetune_app.core.training.objectives import sft
    from finetune_app.testing.tiny_models import build_tiny_model

    folder = build_tiny_model("llama", tmp_path / "m", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, vocab_size=16384)
    for f in folder.glob("*.safetensors"):
        w = mx.load(str(f))
        mx.save_safetensors(str(f), {k: v.astype(mx.bfloat16) for k, v in w.items()})
    base = load_base(folder)
    cfg = TrainConfig()
    adapters.attach(base, cfg)
    model, family = base.model, family_for(base)
    family.start(cfg)
    ids = np.random.default_rng(0).integers(0, 500, (B, L)).astype(np.int32)
    flat = np.array([b * L + t - 1 for b in range(B) for t in range(PROMPT, L)], np.int32)  # predict the answers
    x = {"ids": mx.array(ids), "sel": mx.array(flat), "sel_targets": mx.array(ids.reshape(-1)[flat + 1]),
         "sel_weights": mx.ones((len(flat),), mx.float32)}
    lengths = mx.array([[PROMPT, L]] * B)

    def ours():
        total, count, _ = sft.loss(model, family, x, logits_budget=10**12)  # LoRA: the frozen head's fused path
        return total / count

    def theirs():
        return default_loss(model, mx.array(ids), lengths)[0]

    mx.eval(model.parameters())
    results = {}
    for name, f in (("ours", ours), ("mlx_lm", theirs)):
        loss, grads = nn.value_and_grad(model, lambda m, f=f: f())(model)
        mx.eval(loss, grads)  # traced once, so the measured pass allocates only the step's own buffers
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        loss, grads = nn.value_and_grad(model, lambda m, f=f: f())(model)
        mx.eval(loss, grads)
        results[name] = (loss.item(), mx.get_peak_memory() - before)
    (ours_loss, ours_peak), (lm_loss, lm_peak) = results["ours"], results["mlx_lm"]
    assert ours_loss == pytest.approx(lm_loss, rel=2e-3)
    assert ours_peak <= lm_peak, f"ours {ours_peak / 1e6:.0f} MB above the weights vs mlx_lm {lm_peak / 1e6:.0f} MB"
