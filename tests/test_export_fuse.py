"""Fused and quantized exports for mlx-vlm and mlx-lm, loaded back with the libraries' loaders.

Done-when (1): fused full-precision logits equal base+adapter within 1e-4 on the tiny models:
Qwen2-VL, FastVLM and text models, LoRA and DoRA, QLoRA bases (attached on a 4-bit quantized base,
fused by dequantize + merge), and a full fine-tune. base+adapter is what the libraries themselves
load (`mlx_vlm.load(base, adapter_path=...)`, mlx-lm's adapter loader on the quantized base);
the fused folder is loaded with `mlx_vlm.load` / `mlx_lm.load`. Quantized exports load and generate.
"""

from __future__ import annotations

import json

import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from test_export_support import make_adapter, max_abs, text_logits, vlm_load, vlm_logits

from finetune_app.core.export.export import ExportOptions, export
from finetune_app.testing.tiny_models import cached_tiny_model

TOL = 1e-4


def text_base_plus_adapter(base_path, adapter_dir):
    """mlx-lm's own loaders: the base, quantized as the QLoRA run had it, then the adapter."""
    import mlx_lm
    from mlx_lm.tuner.utils import load_adapters

    model, tok = mlx_lm.load(str(base_path))
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    bq = cfg.get("base_quantization") or {}
    if bq:
        nn.quantize(model, class_predicate=lambda p, m: bq.get(p, False))
    load_adapters(model, str(adapter_dir))
    model.eval()
    return model, tok


CASES = [
    # family, fine-tune type, QLoRA bits, verify inside the export
    ("qwen2_vl", "lora", None, True),
    ("qwen2_vl", "dora", 4, False),
    ("fastvlm", "lora", None, False),  # FastVLM verification: test_export_swift
    ("fastvlm", "lora", 4, False),
    ("qwen2", "lora", None, True),
    ("qwen2", "dora", None, False),
    ("llama", "lora", 4, True),
    ("qwen2", "full", None, False),
]


@pytest.mark.parametrize("family,ftt,bits,verify", CASES, ids=[f"{c[0]}-{c[1]}{'-q' + str(c[2]) if c[2] else ''}" for c in CASES])
def test_fused_matches_base_plus_adapter(tmp_path, family, ftt, bits, verify):
    adapter = make_adapter(family, tmp_path / "run", fine_tune_type=ftt, bits=bits)
    vlm = family in ("qwen2_vl", "fastvlm")
    target = "mlx-vlm" if vlm else "mlx-lm"
    out = tmp_path / "fused"
    result = export(ExportOptions(output=out, target=target, adapter=adapter, verify=verify))
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg
    base_path = cached_tiny_model(family)
    if vlm:
        ref_model, ref_proc, ref_cfg = vlm_load(base_path, adapter_path=adapter)
        if bits:  # mlx-vlm restored the QLoRA base quantization before applying the adapter
            assert any(isinstance(m, nn.QuantizedLinear) for _, m in ref_model.named_modules())
        ref = vlm_logits(ref_model, ref_proc, ref_cfg)
        fused_model, fused_proc, fused_cfg = vlm_load(out)
        got = vlm_logits(fused_model, fused_proc, fused_cfg)
    else:
        import mlx_lm

        ref_model, tok = text_base_plus_adapter(base_path, adapter)
        ref = text_logits(ref_model, tok)
        fused_model, fused_tok = mlx_lm.load(str(out))
        got = text_logits(fused_model, fused_tok)
    base_only = (vlm_logits(*vlm_load(base_path)) if vlm else text_logits(*mlx_lm.load(str(base_path))))
    assert max_abs(base_only, ref) > 1e-2, "the adapter must change the model for this test to mean anything"
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in fused_model.named_modules())
    diff = max_abs(got, ref)
    print(f"{family} {ftt} bits={bits}: max |fused - (base+adapter)| = {diff:.3g}")
    assert diff < TOL
    if verify:
        v = result.verification
        assert v.ok and v.max_logit_diff is not None and v.max_logit_diff < TOL
        assert v.output is not None and v.loader.startswith("mlx_vlm.load" if vlm else "mlx_lm.load")
    names = {n for n, _ in result.files}
    assert {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json"} <= names
    assert not any(n.endswith(".py") for n in names)


def test_quantized_vlm_loads_and_generates(tmp_path):
    adapter = make_adapter("qwen2_vl", tmp_path / "run")
    out = tmp_path / "q4"
    r = export(ExportOptions(output=out, target="mlx-vlm", adapter=adapter, quantize_bits=4, group_size=64))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 64, "bits": 4}
    weights = mx.load(str(out / "model.safetensors"))
    assert "language_model.model.layers.0.self_attn.q_proj.scales" in weights
    assert not any(k.startswith("vision_tower") and k.endswith(".scales") for k in weights)  # tower left in float
    assert r.verification.ok and r.verification.tolerance is None and r.verification.output is not None
    model, proc, mcfg = vlm_load(out)
    assert isinstance(model.language_model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    from mlx_vlm import generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from test_export_support import PROMPT, sample_image

    text = generate(model, proc, apply_chat_template(proc, mcfg, PROMPT, num_images=1), image=[sample_image()],
                    max_tokens=4, verbose=False)
    assert hasattr(text, "text") or isinstance(text, str)
    assert r.total_bytes < sum(f.stat().st_size for f in cached_tiny_model("qwen2_vl").glob("*.safetensors"))


def test_quantized_text_8bit_and_vision_quantization(tmp_path):
    import mlx_lm

    adapter = make_adapter("qwen2", tmp_path / "run")
    out = tmp_path / "q8"
    r = export(ExportOptions(output=out, target="mlx-lm", adapter=adapter, quantize_bits=8, group_size=32, verify=False))
    model, _ = mlx_lm.load(str(out))
    q = model.model.layers[1].mlp.down_proj
    assert isinstance(q, nn.QuantizedLinear) and q.bits == 8 and q.group_size == 32
    assert r.quantization == "8-bit, group size 32"
    # --quantize-vision: the Qwen2-VL tower's linear layers are quantized too (and still load)
    vadapter = make_adapter("qwen2_vl", tmp_path / "vrun")
    vout = tmp_path / "qv"
    export(ExportOptions(output=vout, target="mlx-vlm", adapter=vadapter, quantize_bits=8, group_size=32,
                         quantize_vision=True, verify=False))
    weights = mx.load(str(vout / "model.safetensors"))
    assert any(k.startswith("vision_tower") and k.endswith(".scales") for k in weights)
    vlm_load(vout)
