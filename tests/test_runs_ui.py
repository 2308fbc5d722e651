"""The run history view over two real runs (tiny Llama, trained here) and one interrupted record:
list, filter, sort, overlaid curves, settings and samples, duplicate, reveal, delete, resume offer.

With FINETUNE_SCREENSHOT_DIR set, the view is saved there as run-history.png (docs/screenshots;
run under Xvfb with QT_QPA_PLATFORM=xcb for the real look)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtWidgets import QMessageBox  # noqa: E402

from finetune_app.core import runs  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def history_data(tmp_path_factory, tiny_model, instruction_data):
    """Two finished runs (different learning rates) and an interrupted one, in their own data folder."""
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    root = tmp_path_factory.mktemp("history")
    old = os.environ.get("FINETUNE_DATA_DIR")
    os.environ["FINETUNE_DATA_DIR"] = str(root / "appdata")
    try:
        ids = []
        for name, lr in (("lr-1e-3", 1e-3), ("lr-5e-3", 5e-3)):
            cfg = TrainConfig(model=str(tiny_model("llama")), data=str(instruction_data), output=str(root / name),
                              iters=24, batch_size=2, learning_rate=lr, lora_rank=4, lr_schedule="cosine",
                              steps_per_report=1, steps_per_eval=4, save_every=8, keep_checkpoints=2,
                              sample_count=2, sample_max_tokens=6, seed=1)
            recorder = runs.RunRecorder(cfg)
            Trainer(cfg, listeners=[recorder]).run()
            recorder.close()
            ids.append(recorder.run_id)
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        p.wait()
        with runs.open_store() as store:  # a run whose process died after its first checkpoint
            crashed = root / "crashed"
            import shutil

            shutil.copytree(root / "lr-1e-3", crashed)
            shutil.rmtree(crashed / "checkpoints" / "step-0000024")
            rid = store.create_run(name="crashed", run_dir=str(crashed), config={**store.get(ids[0]).config,
                                                                                   "output": str(crashed)},
                                   model=str(tiny_model("llama")), data=str(instruction_data), pid=p.pid,
                                   host=runs._host(), total_steps=24)
            for m in store.metrics(ids[0], "train")[:11]:
                store.add_train(rid, {"step": m["step"], "loss": m["loss"], "total_steps": 24})
            ids.append(rid)
    finally:
        if old is None:
            os.environ.pop("FINETUNE_DATA_DIR", None)
        else:
            os.environ["FINETUNE_DATA_DIR"] = old
    return root / "appdata" / "runs.sqlite3", ids


@pytest.fixture
def view(history_data, qtbot, qapp, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_SETTINGS_DIR", str(tmp_path / "settings"))
    from finetune_app.ui.app import create_app

    create_app()
    from finetune_app.ui.run_history import RunHistoryView

    db, _ = history_data
    v = RunHistoryView(db)
    qtbot.addWidget(v)
    v.resize(1280, 860)
    v.show()
    v.refresh()
    return v


def visible_ids(v):
    from finetune_app.ui.run_history import RunTableModel

    return [v.proxy.index(r, 0).data(RunTableModel.RunIdRole) for r in range(v.proxy.rowCount())]


def test_lists_marks_interrupted_and_offers_resume(view, history_data):
    _, (a, b, crashed) = history_data
    assert sorted(visible_ids(view)) == [a, b, crashed]
    assert view.banner.isVisible() and "1 run was interrupted" in view.banner.title.text()
    status = {view.model.record(r).id: view.model.record(r).status for r in range(view.model.rowCount())}
    assert status == {a: "finished", b: "finished", crashed: "interrupted"}
    got = []
    view.resume_requested.connect(got.append)
    view.banner_resume.click()
    view.select_runs([crashed])
    assert view.resume_button.isEnabled()
    view.resume_button.click()
    assert got == [crashed, crashed]
    view.select_runs([a])
    assert not view.resume_button.isEnabled(), "a finished run does not resume"


def test_filter_and_sort(view, history_data):
    _, (a, b, crashed) = history_data
    view.filter_edit.setText("lr-5e")
    assert visible_ids(view) == [b]
    view.filter_edit.setText("")
    view.status_box.setCurrentIndex(view.status_box.findData("interrupted"))
    assert visible_ids(view) == [crashed]
    view.status_box.setCurrentIndex(0)
    loss_col = view.model.COLUMNS.index("Loss")
    from PySide6.QtCore import Qt

    view.table.sortByColumn(loss_col, Qt.SortOrder.AscendingOrder)
    losses = [view.model.record(view.proxy.mapToSource(view.proxy.index(r, 0)).row()).last_loss
              for r in range(view.proxy.rowCount())]
    assert losses == sorted(losses)
    assert "3 runs" in view.summary_label.text() and "KB" in view.summary_label.text()


def assert_view_covers(plot, items):
    """The plot's visible range holds every point (issue 18: it stayed at 0-1 while data was at 4-24)."""
    (x0, x1), (y0, y1) = plot.plotItem.vb.viewRange()
    for item in items:
        xs, ys = item.getData()
        assert len(xs) and x0 <= xs.min() and xs.max() <= x1, (item.name(), (x0, x1), (xs.min(), xs.max()))
        assert y0 <= ys.min() and ys.max() <= y1, (item.name(), (y0, y1), (ys.min(), ys.max()))
    assert x1 - x0 < 4 * max(float(i.getData()[0].max()) for i in items), "not zoomed far out either"


def test_overlays_two_runs_and_shows_one(view, history_data, qtbot):
    db, (a, b, crashed) = history_data
    view.select_runs([a, b])
    items = view.plot.plotItem.listDataItems()
    assert len(items) == 4, "training and validation curves of both runs"
    with runs.open_store(db) as store:
        expect = {store.get(i).name: store.losses(i) for i in (a, b)}
    for item in items:
        name = item.name()
        if "(training)" in name:
            run = name.split(" ")[1]
            xs, ys = item.getData()
            assert dict(zip(xs.astype(int).tolist(), ys.tolist())) == pytest.approx(expect[run])
    assert "2 runs compared" in view.plot._title
    assert_view_covers(view.plot, items)
    shot = os.environ.get("FINETUNE_SCREENSHOT_DIR")
    if shot:
        view.tabs.setCurrentWidget(view.curves)
        qtbot.wait(200)
        Path(shot).mkdir(parents=True, exist_ok=True)
        assert view.grab().save(str(Path(shot) / "run-history.png"))

    view.select_runs([b])
    assert len(view.plot.plotItem.listDataItems()) == 2
    assert_view_covers(view.plot, view.plot.plotItem.listDataItems())
    assert "learning_rate = 0.005" in view.config_text.toPlainText()
    assert view.samples_table.rowCount() == 12  # 2 samples at each of 6 evaluations
    details = view.details_text.toPlainText()
    assert "fingerprint dir:" in details and "Checkpoints:" in details and "step 24" in details


def test_duplicate_reveal_delete(view, history_data, monkeypatch):
    _, (a, b, crashed) = history_data
    from PySide6.QtGui import QDesktopServices

    view.select_runs([a])
    got = []
    view.duplicate_config.connect(got.append)
    view.duplicate_button.click()
    assert got and got[0].learning_rate == 1e-3 and got[0].iters == 24 and got[0].output == ""

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()))
    view.reveal_button.click()
    with runs.open_store(view.db_path) as store:
        assert opened == [store.get(a).run_dir]

    view.select_runs([crashed])
    folder = Path(view.selected_records()[0].run_dir)
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: (asked.append(a[2]), QMessageBox.StandardButton.Cancel)[1])
    view.delete_button.click()
    assert asked and "crashed" in asked[0] and "KB" in asked[0]
    assert folder.exists() and crashed in visible_ids(view), "cancelled: nothing deleted"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    deleted = []
    view.runs_deleted.connect(deleted.append)
    view.delete_button.click()
    assert deleted == [[crashed]] and not folder.exists()
    assert crashed not in visible_ids(view) and not view.banner.isVisible()
