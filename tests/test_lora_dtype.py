"""LoRA's branch in the model's dtype as one AddMM (#16 textmem2, lmstep, loracut): a float32 model
trains as with the libraries' LoRALinear / DoRALinear (within float32 rounding); a bf16 model's step
keeps no float32 copy of the LoRA layers' inputs (lower peak), its loss stays within bf16 rounding
of mlx-lm's layer, and the branch's second matmul, scale and add are one AddMM (fewer bytes
written than the previous form)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from finetune_app.core.training import lora_dtype


def _model(tmp_path, dtype, **cfg):
    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.models import load_base
    from finetune_app.testing.tiny_models import build_tiny_model

    folder = build_tiny_model("llama", tmp_path / "m", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, vocab_size=512)
    if dtype != mx.float32:
        for f in folder.glob("*.safetensors"):
            mx.save_safetensors(str(f), {k: v.astype(dtype) for k, v in mx.load(str(f)).items()})
    base = load_base(folder)
    adapters.attach(base, TrainConfig(lora_rank=8, **cfg))
    model = base.model
    mx.random.seed(1)  # B non-zero, so the branch and A's gradient are not trivially zero
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.05) for k, v in
                                 tree_flatten(model.trainable_parameters()) if k.endswith("lora_b")]))
    return model


def _value_and_grad(model, ids):
    def loss(x):
        logits = model(x[:, :-1]).astype(mx.float32)
        return nn.losses.cross_entropy(logits, x[:, 1:]).mean()

    return nn.value_and_grad(model, loss)(ids)


def _as_mlx_lm(model):
    for _, m in model.named_modules():
        if type(m) in (lora_dtype.ModelDtypeLoRALinear, lora_dtype.ModelDtypeDoRALinear):
            m.__class__ = type(m).__mro__[2]  # (the variant, its mixin, the library's class)


def _assert_close(got, ref, tol=1e-5):
    """Loss within 1e-6 and every gradient within `tol` of the reference, relative to the loss and
    to the gradient's largest value (float32 rounding: the GEMM adds the base output inside its
    accumulation; measured ~2e-7 and ~2e-6; a lost or doubled scale is off by O(1))."""
    (loss, grads), (ref_loss, ref_grads) = got, ref
    assert abs(loss.item() - ref_loss.item()) <= 1e-6 * abs(ref_loss.item()), (loss.item(), ref_loss.item())
    for (k, g), (_, r) in zip(tree_flatten(grads), tree_flatten(ref_grads), strict=True):
        assert g.dtype == r.dtype == mx.float32, k
        assert mx.abs(g - r).max().item() <= tol * mx.abs(r).max().item(), k


def _dropout_value_and_grad(model, ids):
    model.train()
    mx.random.seed(5)  # the same dropout masks for both layers
    return _value_and_grad(model, ids)


def test_float32_model_trains_as_mlx_lms_layer(tmp_path):
    """alpha 12 / rank 8: a scale that is no power of two (such a scale is exact); dropout on."""
    model = _model(tmp_path, mx.float32, lora_alpha=12.0, lora_dropout=0.1)
    switched = [m for _, m in model.named_modules() if type(m) is lora_dtype.ModelDtypeLoRALinear]
    assert len(switched) == 2 * 7  # attach switched every LoRA layer (q k v o gate up down, 2 layers)
    ids = mx.array(np.random.default_rng(0).integers(0, 512, (2, 48)).astype(np.int32))
    got = _dropout_value_and_grad(model, ids)
    _as_mlx_lm(model)
    _assert_close(got, _dropout_value_and_grad(model, ids))


def test_float32_dora_and_qlora_train_as_the_librarys_layers(tmp_path):
    """DoRA (mlx-lm's DoRALinear switched too) and LoRA on a 4-bit quantized base (QLoRA)."""
    ids = mx.array(np.random.default_rng(0).integers(0, 512, (2, 32)).astype(np.int32))
    for name, cfg, cls in (("dora", {"fine_tune_type": "dora"}, lora_dtype.ModelDtypeDoRALinear),
                           ("qlora", {"quantize_bits": 4}, lora_dtype.ModelDtypeLoRALinear)):
        model = _model(tmp_path / name, mx.float32, lora_alpha=12.0, **cfg)
        assert sum(type(m) is cls for _, m in model.named_modules()) == 2 * 7, name
        got = _value_and_grad(model, ids)
        _as_mlx_lm(model)
        _assert_close(got, _value_and_grad(model, ids))


def test_bf16_step_keeps_no_float32_copy_of_the_inputs(tmp_path):
    model = _model(tmp_path, mx.bfloat16)
    ids = mx.array(np.random.default_rng(0).integers(0, 512, (4, 257)).astype(np.int32))
    peaks, losses = [], []
    for switch in (False, True):  # mlx-lm's layer first, then ours
        if not switch:
            _as_mlx_lm(model)
        else:
            lora_dtype.in_model_dtype(model)
        mx.eval(_value_and_grad(model, ids))  # (kernels, lazy state: not in the measured call)
        mx.clear_cache()
        held = mx.get_active_memory()
        mx.reset_peak_memory()
        loss, grads = _value_and_grad(model, ids)
        mx.eval(loss, grads)
        peaks.append(mx.get_peak_memory() - held)
        losses.append(loss.item())
        assert all(g.dtype == mx.float32 for _, g in tree_flatten(grads))  # A and B stay float32
    # one float32 copy of x per distinct LoRA input and layer: 4 x 256 tokens x (3 x 64 + 256) x 4 bytes x 2 layers
    assert peaks[0] - peaks[1] > 0.5 * 4 * 256 * (3 * 64 + 256) * 4 * 2, peaks
    assert abs(losses[0] - losses[1]) < 0.02 * abs(losses[0]), losses


# ---- mlx-vlm's LoRALinear (the VLM path: #16 lmstep) --------------------------------------------

def _vlm(tiny_model, dtype):
    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.families import family_for
    from finetune_app.core.models import load_base

    base = load_base(tiny_model("qwen2_vl"))
    if dtype != mx.float32:
        base.model.set_dtype(dtype)
    adapters.attach(base, TrainConfig(lora_rank=8))
    mx.random.seed(1)
    base.model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.05) for k, v in
                                      tree_flatten(base.model.trainable_parameters()) if k.endswith("lora_b")]))
    family = family_for(base)
    family.start(TrainConfig(lora_rank=8))
    return base, family


def _fast_inputs(B=2, L=24, vocab=400):
    """The Qwen-VL fast path's step inputs for text-only rows (no cached pictures)."""
    ids = np.random.default_rng(0).integers(3, vocab, (B, L)).astype(np.int32)
    sel = np.arange(B * L, dtype=np.int32)[L // 2::2]
    return {"ids": mx.array(ids), "feats": mx.zeros((0, 1)), "src": mx.arange(B * L, dtype=mx.int32).reshape(B, L),
            "positions": mx.broadcast_to(mx.arange(L, dtype=mx.int32), (3, B, L)), "sel": mx.array(sel),
            "sel_targets": mx.array(ids.reshape(-1)[sel]), "sel_weights": mx.ones(len(sel))}


def _fast_value_and_grad(model, family, a):
    from finetune_app.core.training.objectives import sft

    return nn.value_and_grad(model, lambda x: sft.loss(model, family, x)[0])(a)


def test_vlm_lora_layers_switched_and_float32_close(tiny_model):
    import mlx_vlm.trainer.peft.lora_layers as vlm_layers

    base, family = _vlm(tiny_model, mx.float32)
    lm = base.model.language_model
    switched = [m for _, m in lm.named_modules() if isinstance(m, vlm_layers.LoRALinear)]
    assert switched and all(type(m) is lora_dtype.model_dtype_class(vlm_layers.LoRALinear) for m in switched)
    a = _fast_inputs()
    got = _fast_value_and_grad(base.model, family, a)
    for m in switched:
        m.__class__ = vlm_layers.LoRALinear
    _assert_close(got, _fast_value_and_grad(base.model, family, a))


def test_vlm_bf16_step_runs_every_matmul_in_bf16(tiny_model, monkeypatch):
    """The traced graph of the Qwen-VL fast step's forward and backward (the head's plain
    cross-entropy: the fused one is a custom function the exporter cannot walk): no matmul takes
    a float32 operand (mlx-vlm's LoRA layer promoted every LoRA input and result to float32)."""
    from finetune_app.core.training import chunked_ce

    base, family = _vlm(tiny_model, mx.bfloat16)
    monkeypatch.setattr(chunked_ce, "head_weight", lambda owner: None)
    a = _fast_inputs()
    prims = []
    mx.export_function(lambda rec: prims.append(rec) if rec.get("type") == "primitive" else None,
                       lambda **x: [v for _, v in tree_flatten(_fast_value_and_grad(base.model, family, x))], **a)
    matmuls = [p for p in prims if p["name"] in ("Matmul", "AddMM")]
    assert any(s[-1] == 8 for p in matmuls for _, s, _ in p["inputs"])  # LoRA's (rank 8) are among them
    f32 = [(p["name"], [(tuple(s), d) for _, s, d in p["inputs"]]) for p in matmuls
           if any(d == mx.float32 for _, _, d in p["inputs"])]
    assert not f32, f32[:5]


# ---- the branch as one AddMM (#16 loracut) -----------------------------------------------------

def _traced(model, ids):
    """Every primitive of one value-and-grad (uncompiled, unevaluated; loss and gradients), with
    dtypes and shapes."""
    prims = []
    mx.export_function(lambda rec: prims.append(rec) if rec.get("type") == "primitive" else None,
                       lambda x: [v for _, v in tree_flatten(_value_and_grad(model, x))], ids)
    return prims


def _token_sized_writes(prims, tokens):
    """Bytes written by non-view primitives whose output is [tokens, ...] (flat or [B, L, ...])."""
    views = {"Reshape", "Broadcast", "Transpose", "Slice", "Flatten", "Unflatten", "ExpandDims", "Squeeze", "AsStrided"}
    return sum(int(np.prod(s)) * d.size for p in prims if p["name"] not in views for _, s, d in p["outputs"]
               if tuple(s[:1]) == (tokens[0] * tokens[1],) or tuple(s[:2]) == tokens)


def test_bf16_branch_is_one_addmm_and_writes_less(tmp_path):
    """Per LoRA layer the forward's second matmul, scale and add are one AddMM with the base output
    as C, and the backward scales no [tokens, out] cotangent: three [tokens, out] bf16 writes fewer
    per layer than the previous form (lmstep's `y + scale * (x @ A) @ B`: the matmul's result, its
    scaled copy, and the scaled cotangent)."""
    from finetune_app.testing.lora_reference import previous_branch

    model = _model(tmp_path, mx.bfloat16, lora_alpha=12.0)
    B, L = 2, 33
    ids = mx.array(np.random.default_rng(0).integers(0, 512, (B, L)).astype(np.int32))
    prims = _traced(model, ids)
    with previous_branch():
        before = _traced(model, ids)
    addmm = [p for p in prims if p["name"] == "AddMM"]
    assert len(addmm) == 2 * 7 and not [p for p in before if p["name"] == "AddMM"]
    assert all(d == mx.bfloat16 for p in addmm for _, _, d in p["inputs"] + p["outputs"])
    assert all(p["inputs"][0][1][-1] == 8 for p in addmm)  # [tokens, rank] @ [rank, out] + [tokens, out]
    outs = 2 * (3 * 64 + 64 + 2 * 256 + 64)  # q k v o gate up down outputs, 2 layers
    saved = _token_sized_writes(before, (B, L - 1)) - _token_sized_writes(prims, (B, L - 1))
    assert saved == 3 * B * (L - 1) * outs * 2, saved


def test_bf16_dora_runs_no_token_sized_float32_matmul(tmp_path):
    """DoRA's branch in bf16 too (mlx-lm's DoRALinear promoted x to float32 as LoRALinear did); the
    adapted weight's norm stays float32 (weight-sized)."""
    model = _model(tmp_path, mx.bfloat16, fine_tune_type="dora")
    B, L = 2, 49
    ids = mx.array(np.random.default_rng(0).integers(0, 512, (B, L)).astype(np.int32))
    prims = _traced(model, ids)
    tokens = {B * (L - 1), L - 1}
    f32 = [[tuple(s) for _, s, _ in p["inputs"]] for p in prims if p["name"] in ("Matmul", "AddMM")
           and any(d == mx.float32 and tokens & set(s) for _, s, d in p["inputs"])]
    assert len([p for p in prims if p["name"] == "AddMM"]) == 2 * 7
    assert not f32, f32[:5]
    _as_mlx_lm(model)
    assert [p for p in _traced(model, ids) if p["name"] in ("Matmul", "AddMM")
            and any(d == mx.float32 and tokens & set(s) for _, s, d in p["inputs"])]  # (the library's did)
