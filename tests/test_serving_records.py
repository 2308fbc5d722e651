"""The adapter and the exported bundle record the prompt layout (serve target) trained with; the
runtimes still load such adapters; export and the export wizard warn when the chosen target's
layout differs from the training one (a warning, never a refusal)."""

from __future__ import annotations

import json

import pytest
from test_export_support import make_adapter

from finetune_app.core.export.export import ExportOptions, export, layout_warning
from finetune_app.testing.tiny_models import cached_tiny_model


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    return make_adapter("qwen2_vl", tmp_path_factory.mktemp("rec") / "run")


def test_adapter_records_the_layout_and_mlx_vlm_loads_it(vlm_run):
    from mlx_vlm import load

    acfg = json.loads((vlm_run / "adapter_config.json").read_text())
    assert acfg["finetune_app"]["serve_target"] == "mlx-vlm"  # "auto" resolved for a VLM
    model, _ = load(str(cached_tiny_model("qwen2_vl")), adapter_path=str(vlm_run))
    assert model is not None


def test_text_adapter_records_mlx_lm_and_mlx_lm_loads_it(tmp_path):
    from mlx_lm import load

    run = make_adapter("qwen2", tmp_path / "run")
    assert json.loads((run / "adapter_config.json").read_text())["finetune_app"]["serve_target"] == "mlx-lm"
    model, _ = load(str(cached_tiny_model("qwen2")), adapter_path=str(run))
    assert model is not None


def test_a_layout_the_model_cannot_run_is_refused_before_training(tmp_path):
    from finetune_app.core.errors import ConfigError

    with pytest.raises(ConfigError, match="FastVLM app"):
        make_adapter("qwen2_vl", tmp_path / "run", serve_target="mlx-swift")


def test_layout_warning_wording():
    trained_vlm = {"finetune_app": {"serve_target": "mlx-vlm"}}
    note = layout_warning(trained_vlm, "mlx-swift", "vlm")
    assert "mlx-vlm prompt layout" in note and "--serve-target mlx-swift" in note
    assert layout_warning(trained_vlm, "mlx-vlm", "vlm") is None
    assert layout_warning(trained_vlm, "adapter", "vlm") is None
    assert layout_warning({"finetune_app": {"serve_target": "mlx-swift"}}, "mlx-vlm", "vlm").startswith(
        "this model was trained with the mlx-swift prompt layout")
    # mlx-swift-lm: modelled for the Qwen-VL family and text models (MLXLLM = mlx-lm's template)
    assert "--serve-target mlx-swift-lm" in layout_warning(trained_vlm, "mlx-swift-lm", "vlm", "qwen2_vl")
    assert layout_warning({"finetune_app": {"serve_target": "mlx-swift-lm"}}, "mlx-swift-lm", "vlm", "qwen2_vl") is None
    assert layout_warning({"finetune_app": {"serve_target": "mlx-lm"}}, "mlx-swift-lm", "text", "qwen2") is None
    assert "gemma3 processor is not modelled" in layout_warning(trained_vlm, "mlx-swift-lm", "vlm", "gemma3")
    assert "does not record" in layout_warning({"finetune_app": {}}, "mlx-swift", "vlm")


def test_fused_bundle_records_the_layout_and_warns_on_mismatch(vlm_run, tmp_path):
    out = tmp_path / "bundle"
    res = export(ExportOptions(output=str(out), target="mlx-vlm", adapter=str(vlm_run), verify=False))
    assert json.loads((out / "finetune_app.json").read_text()) == {"serve_target": "mlx-vlm",
                                                                  "export_target": "mlx-vlm"}
    assert not any("prompt layout" in w for w in res.warnings)
    res = export(ExportOptions(output=str(tmp_path / "swiftlm"), target="mlx-swift-lm", adapter=str(vlm_run),
                               verify=False))
    assert any("prompt layout" in w for w in res.warnings)  # exported anyway


@pytest.mark.gui
def test_export_wizard_says_when_the_layout_differs(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from finetune_app.ui import export_wizard as ew

    run = tmp_path / "run"
    run.mkdir()
    model = cached_tiny_model("fastvlm")
    (run / "adapter_config.json").write_text(json.dumps(
        {"finetune_app": {"base_model": str(model), "serve_target": "mlx-vlm"}}))
    w = ew.ExportWizard(adapter=str(run))
    qtbot.addWidget(w)
    w.show()
    w.source.buttons["mlx-vlm"].setChecked(True)
    assert not w.source.layout_label.isVisible()
    w.source.buttons["mlx-swift"].setChecked(True)
    assert w.source.layout_label.isVisible()
    assert "Prompt layout differs" in w.source.layout_label.text()
    assert "--serve-target mlx-swift" in w.source.layout_label.text()


# ---- our own generation uses the recorded layout (generate, compare, caption, evaluation) ---------

PROMPT = "What is this?"  # a prompt whose greedy answer differs between the two layouts of this adapter


@pytest.fixture(scope="module")
def swift_run(tmp_path_factory):
    return make_adapter("fastvlm", tmp_path_factory.mktemp("swift") / "run", serve_target="mlx-swift")


def _app_reference(base, image, prompt, max_tokens):
    """The answer mlx-vlm's generation gives on the Apple app's own ids and pixels, built by the
    test's transcription of the app's processor (tests/test_serving_layouts.py), not by core/serving."""
    import mlx.core as mx
    from mlx_vlm import stream_generate
    from test_serving_layouts import app_positions, app_prepare, app_preprocess

    from finetune_app.core.generate import vocab_guard

    ip = base.processor.image_processor
    crop = (ip.crop_size["height"], ip.crop_size["width"])
    ids = app_positions(base.tokenizer, app_prepare(prompt, 1, 1, patch=1), base.config["image_token_index"])
    pixels = app_preprocess(image, ip.size["shortest_edge"], crop, ip.image_mean, ip.image_std)
    pieces = [c.text for c in stream_generate(base.model, base.processor, "", input_ids=mx.array([ids]),
                                               pixel_values=mx.array(pixels[None]), max_tokens=max_tokens,
                                               temperature=0.0, logits_processors=[vocab_guard(base.tokenizer)])]
    return "".join(pieces).strip()


def test_generation_with_an_adapter_uses_the_layout_it_was_trained_with(swift_run):
    from test_export_support import sample_image

    from finetune_app.core import adapters
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.generate import GenerationSettings, generate
    from finetune_app.core.models import load_base

    base = load_base(cached_tiny_model("fastvlm"))
    assert Encoder(base).serve_target == "mlx-vlm"  # a plain base: auto
    adapters.load_into(base, swift_run)
    assert Encoder(base).serve_target == "mlx-swift"
    image, settings = sample_image(), GenerationSettings(max_tokens=12)
    ours = generate(base, PROMPT, [image], settings=settings)
    assert ours == _app_reference(base, image, PROMPT, 12)
    # the other layout answers differently here, so the comparison above can fail
    assert ours != generate(base, PROMPT, [image], settings=settings, encoder=Encoder(base, serve_target="mlx-vlm"))


def test_compare_renders_the_base_as_served_and_the_adapter_as_trained(swift_run, tmp_path):
    from test_export_support import sample_image

    from finetune_app.core.compare import CompareItem, ModelCache, TunedSource, compare_items
    from finetune_app.core.data.sample import ImageRef
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.generate import GenerationSettings, generate

    path = tmp_path / "im.png"
    sample_image().save(path)
    cache = ModelCache()
    settings = GenerationSettings(max_tokens=12)
    result = compare_items(cache, str(cached_tiny_model("fastvlm")), TunedSource.detect(swift_run),
                           [CompareItem(prompt=PROMPT, images=(ImageRef(path=path, label="im"),))], settings=settings)
    row = result.rows[0]
    tuned, _ = cache.tuned(str(cached_tiny_model("fastvlm")), TunedSource.detect(swift_run))
    from PIL import Image

    image = Image.open(path).convert("RGB")
    assert row.tuned == _app_reference(tuned, image, PROMPT, 12)
    with cache.base(str(cached_tiny_model("fastvlm"))) as base:
        assert Encoder(base).serve_target == "mlx-vlm"
        assert row.base == generate(base, PROMPT, [image], settings=settings,
                                    encoder=Encoder(base, serve_target="mlx-vlm"))
    assert Encoder(tuned).serve_target == "mlx-swift"  # restored after the base's turn


def test_a_fused_bundle_is_rendered_with_its_recorded_layout(tmp_path):
    import shutil

    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.errors import ModelError
    from finetune_app.core.models import load_base

    bundle = tmp_path / "bundle"
    shutil.copytree(cached_tiny_model("fastvlm"), bundle)
    (bundle / "finetune_app.json").write_text(json.dumps({"serve_target": "mlx-swift", "export_target": "mlx-vlm"}))
    assert Encoder(load_base(bundle)).serve_target == "mlx-swift"
    (bundle / "finetune_app.json").write_text(json.dumps({"serve_target": "swift-ui"}))
    with pytest.raises(ModelError, match="unknown prompt layout 'swift-ui'") as err:
        load_base(bundle)
    assert str(err.value.file) == str(bundle / "finetune_app.json")


def test_training_a_fused_bundle_with_auto_keeps_its_recorded_layout(tmp_path):
    """Our export records its layout in the bundle: training it again with serve_target auto goes
    on in that layout (and records it), not in the library's; verification keeps the library's."""
    import shutil

    from finetune_app.core import serving
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.models import load_base

    bundle = tmp_path / "bundle"
    shutil.copytree(cached_tiny_model("qwen2_vl"), bundle)
    (bundle / "finetune_app.json").write_text(json.dumps({"serve_target": "mlx-swift-lm", "export_target": "mlx-vlm"}))
    base = load_base(bundle, lazy=True)
    assert Encoder(base, serve_target="auto").serve_target == "mlx-swift-lm"  # what the trainer builds
    assert serving.for_model("auto", base) == "mlx-swift-lm"  # what its adapter records
    assert serving.for_model("mlx-vlm", base) == "mlx-vlm"  # a chosen target wins
    assert serving.resolve("auto", base) == "mlx-vlm"  # the library's own (export verification)
