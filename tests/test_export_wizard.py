"""The export wizard, driven offscreen: target -> precision -> destination -> summary -> progress
(export on a QThread) -> verification and files -> "Show in Finder"."""

from __future__ import annotations

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QWizard
from test_export_support import make_adapter

from finetune_app.testing.tiny_models import cached_tiny_model
from finetune_app.ui import export_wizard as ew

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return make_adapter("qwen2", tmp_path_factory.mktemp("wiz") / "run")


def test_wizard_exports_and_shows_verification(qtbot, text_run, tmp_path, monkeypatch):
    out = tmp_path / "exported"
    w = ew.ExportWizard(adapter=str(text_run), output=str(out))
    qtbot.addWidget(w)
    w.show()
    # the base model comes from the adapter's record; text models cannot go to mlx-vlm / the FastVLM app
    assert w.source.model_edit.text() == str(cached_tiny_model("qwen2"))
    assert not w.source.buttons["mlx-vlm"].isEnabled() and not w.source.buttons["mlx-swift"].isEnabled()
    assert w.source.target() == "mlx-lm", "a text model's usual target is chosen"
    w.source.buttons["mlx-lm"].setChecked(True)
    w.next()
    assert w.currentId() == ew.PAGE_QUANT
    w.quant.bits.setCurrentIndex(w.quant.bits.findData(8))
    w.quant.group_size.setCurrentIndex(w.quant.group_size.findData(32))
    w.next()
    assert w.currentId() == ew.PAGE_DEST and w.button(QWizard.NextButton).isEnabled()
    w.next()
    assert w.currentId() == ew.PAGE_SUMMARY
    summary = w.summary.text.text()
    assert "8-bit, group size 32" in summary and "Estimated size" in summary and "Free disk space" in summary
    assert w.summary.estimate > 0
    w.next()  # "Export": runs on the worker thread
    qtbot.waitUntil(lambda: w.currentId() == ew.PAGE_RESULT or bool(w.progress_page.error), timeout=120_000)
    assert not w.progress_page.error
    assert (out / "model.safetensors").is_file()
    text = w.result_page.verification.toPlainText()
    # 8-bit: logits are not held to a tolerance, so the wizard says approximate, not passed
    assert "Verification (mlx_lm.load): approximate (quantized or half precision): max diff" in text and "output:" in text
    files = [w.result_page.table.item(i, 0).text() for i in range(w.result_page.table.rowCount())]
    assert "model.safetensors" in files and files[-1] == "total"
    opened = []
    monkeypatch.setattr(ew.QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()))
    monkeypatch.setattr(ew.sys, "platform", "linux")
    w.result_page.show_button.click()
    assert opened == [str(out)]
    w.accept()


def test_wizard_refuses_existing_folder_and_reports_failure(qtbot, text_run, tmp_path, monkeypatch):
    out = tmp_path / "exists"
    out.mkdir()
    w = ew.ExportWizard(adapter=str(text_run), output=str(out))
    qtbot.addWidget(w)
    w.show()
    w.source.buttons["adapter"].setChecked(True)
    w.next()
    assert w.currentId() == ew.PAGE_DEST  # adapters skip the precision page
    assert not w.dest.isComplete() and "exists" in w.dest.note.text()
    w.dest.overwrite.setChecked(True)
    assert w.dest.isComplete()
    w.dest.overwrite.setChecked(False)
    w.dest.output_edit.setText(str(tmp_path / "new"))
    w.next()
    import shutil
    from collections import namedtuple

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 10))
    w.next()
    qtbot.waitUntil(lambda: bool(w.progress_page.error), timeout=60_000)
    assert "Not enough free disk space" in w.progress_page.message.text()
    assert w.progress_page.retry.isVisibleTo(w) and not (tmp_path / "new").exists()
    w.reject()


def test_wizard_cancel_writes_nothing(qtbot, text_run, tmp_path):
    out = tmp_path / "cancelled"
    w = ew.ExportWizard(adapter=str(text_run), output=str(out))
    qtbot.addWidget(w)
    w.show()
    w.source.buttons["mlx-lm"].setChecked(True)
    w.next()
    w.next()
    w.next()
    w.next()  # starts the export ...
    w.progress_page.cancel.click()  # ... and cancels it before its next step
    qtbot.waitUntil(lambda: bool(w.progress_page.error), timeout=60_000)
    assert "cancelled" in w.progress_page.error
    qtbot.waitUntil(lambda: not w.is_running(), timeout=10_000)
    assert not out.exists() and not list(tmp_path.glob(".cancelled.staging-*"))
