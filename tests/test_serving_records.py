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
    assert "own processors" in layout_warning(trained_vlm, "mlx-swift-lm", "vlm")
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
