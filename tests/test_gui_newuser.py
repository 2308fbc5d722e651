"""Issue 18: the app as a new user meets it (recovery first, the demo, stale dataset state, open
dialogs, exports, caption cards, the training screen, menus and shortcuts), driven offscreen.

Real behaviour only: tiny models really train and the assertions read the window's own widgets
and the files on disk."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402
from gui_helpers import click_in_dialog  # noqa: E402

pytestmark = pytest.mark.gui




@pytest.fixture
def windows(app_env, qtbot):
    """new() -> a shown MainWindow; each is stopped (no run, no dialog left) and closed after the test."""
    from finetune_app.ui.main_window import MainWindow

    made = []

    def new():
        w = MainWindow()
        w.resize(1300, 850)
        w.show()
        made.append(w)
        return w

    yield new
    for w in made:
        finish(w, qtbot)
        w.close()
        w.deleteLater()


def finish(w, qtbot):
    for widget in QApplication.topLevelWidgets():  # a dialog a failed test left open
        if isinstance(widget, QMessageBox) and widget.isVisible():
            widget.reject()
    if w.run is not None and w.run.is_running():
        w.run.stop(save=False)
        w.run.wait(60000)
    qtbot.waitUntil(lambda: not w.training.is_running(), timeout=20000)


def interrupted_run(tiny_model, instruction_data, root: Path) -> tuple[int, Path]:
    """A 12-step run whose process 'died' after its step-4 checkpoint: recorded as running under a
    dead pid, later checkpoints gone, its metrics.jsonl intact up to the kill."""
    from finetune_app.core import runs
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    out = root / "killed-run"
    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(instruction_data), output=str(out), iters=12,
                      batch_size=2, learning_rate=1e-3, lora_rank=4, steps_per_report=1, steps_per_eval=4,
                      save_every=4, keep_checkpoints=5, sample_count=0, seed=1)
    recorder = runs.RunRecorder(cfg)
    Trainer(cfg, listeners=[recorder]).run()
    recorder.close()
    for later in ("step-0000008", "step-0000012"):
        shutil.rmtree(out / "checkpoints" / later, ignore_errors=True)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with runs.open_store() as store:
        store.update_run(recorder.run_id, status="running", pid=p.pid, pid_started=None, ended_at=None)
    return recorder.run_id, out


# ---- 2. crash recovery first --------------------------------------------------------------------

def test_interrupted_run_is_offered_before_the_welcome_and_resumes_with_its_history(
        windows, qtbot, tiny_model, instruction_data, tmp_path, monkeypatch):
    import finetune_app.ui.welcome as welcome

    rid, out = interrupted_run(tiny_model, instruction_data, tmp_path)
    shown = []
    monkeypatch.setattr(welcome, "run_welcome", lambda *a, **k: shown.append("welcome") or "skip")
    clicked = click_in_dialog("recoveryDialog", "Resume")
    w = windows()
    attached = []
    real_attach = w.training.attach

    def spy(run, **kw):  # what the screen shows the moment the resumed run is attached
        real_attach(run, **kw)
        t = w.training
        attached.append((list(t.loss_steps), t.progress.maximum(), w.status_model.text(), w.status_data.text()))

    monkeypatch.setattr(w.training, "attach", spy)
    w.maybe_show_welcome()
    qtbot.waitUntil(lambda: bool(attached), timeout=20000)
    assert clicked == ["Resume"] and shown == [], "recovery is offered instead of the welcome"
    steps, maximum, model_text, data_text = attached[0]
    assert steps[:4] == [1, 2, 3, 4], "the curve before the kill is on screen"
    assert maximum == 12, "the progress bar knows the run's total from the start"
    assert "llama" in model_text and instruction_data.name in data_text
    qtbot.waitUntil(lambda: w.training.state == "finished", timeout=120000)
    assert w.training.loss_steps == list(range(1, 13)), "one continuous curve, no step twice"
    assert w.training.progress.maximum() == 12 and w.training.progress.value() == 12


def test_discard_and_inspect_leave_the_run_on_the_history_tab(windows, qtbot, tiny_model, instruction_data,
                                                              tmp_path):
    from finetune_app.core import runs

    rid, _ = interrupted_run(tiny_model, instruction_data, tmp_path)
    clicked = click_in_dialog("recoveryDialog", "Inspect")
    w = windows()
    assert w.offer_recovery() is True and clicked == ["Inspect"]
    assert w.tabs.currentWidget() is w.history and w.history.selected_ids() == [rid]
    clicked = click_in_dialog("recoveryDialog", "Discard")
    assert w.offer_recovery() is True and clicked == ["Discard"]
    with runs.open_store() as store:
        assert store.get(rid).status == "stopped"
    assert w.offer_recovery() is False, "a discarded run is not offered again"


def test_the_run_database_is_read_off_the_windows_thread_at_launch(windows, qtbot, monkeypatch):
    """#18: opening the run database at launch (create, migrate, repair: 20-55 ms) runs on a worker;
    the welcome follows its answer."""
    import threading

    import finetune_app.ui.welcome as welcome
    from finetune_app.core import runs

    opened_on, shown = [], []
    real_open = runs.open_store
    monkeypatch.setattr(runs, "open_store", lambda *a, **k: opened_on.append(threading.current_thread())
                        or real_open(*a, **k))
    monkeypatch.setattr(welcome, "run_welcome", lambda *a, **k: shown.append(threading.current_thread()) or "skip")
    w = windows()
    w.maybe_show_welcome()
    qtbot.waitUntil(lambda: bool(shown), timeout=20000)
    assert opened_on and threading.main_thread() not in opened_on
    assert shown == [threading.main_thread()]


def test_a_damaged_run_history_is_repaired_and_the_window_says_so(windows, qtbot):
    """#14: a garbage runs database is moved aside and rebuilt; the app shows what happened (a
    banner on the History tab and a status-bar line), not only a line on stderr."""
    from finetune_app.core import runs

    runs.take_notices()
    db = runs.db_path()
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    w = windows()
    w._at_launch()
    qtbot.waitUntil(lambda: w._launch_task is None, timeout=20000)
    assert list(db.parent.glob("runs.sqlite3.damaged-*")), "the damaged file is kept aside"
    assert w.history.db_banner.isVisibleTo(w.history)
    assert "moved to" in w.history.db_banner.text.text() and "runs.sqlite3" in w.history.db_banner.text.text()
    assert "run history needed repair" in w.statusBar().currentMessage()


# ---- 3. the demo resets the form; the Training tab names and shows the settings to fix -----------

def type_into(w, name: str, text: str, qtbot) -> None:
    editor = w.form.fields[name].editor
    editor.clear()
    qtbot.keyClicks(editor, text)


def test_demo_resets_invalid_settings_and_problems_are_named_and_shown(windows, qtbot, qwen_model, shapes_data):
    from finetune_app.core.config import TrainConfig
    from finetune_app.ui.main_window import DEMO_SETTINGS, TAB_SETTINGS

    w = windows()
    w.resize(1000, 560)  # small enough that the form scrolls
    qtbot.wait(50)
    form = w.form
    below = form.fields["grad_accumulation"].editor
    y_before = below.mapTo(form.scroll.widget(), below.rect().topLeft()).y()
    type_into(w, "batch_size", "0", qtbot)  # the field just above it
    assert form.fields["batch_size"].message.text()
    qtbot.wait(50)
    assert below.mapTo(form.scroll.widget(), below.rect().topLeft()).y() == y_before, "the form did not jump"
    type_into(w, "keep_checkpoints", "lots", qtbot)
    why = w.why_not_ready()
    assert "Batch size" in why and "Checkpoints kept" in why
    assert "Show the settings to fix" in w.training.start_hint.text()
    assert w.training.status.text() != "Ready"
    w.tabs.setCurrentWidget(w.training)
    w.training.start_hint.linkActivated.emit("#settings")
    qtbot.waitUntil(lambda: w.tabs.currentIndex() == TAB_SETTINGS)
    qtbot.wait(50)
    first = form.fields["batch_size"]
    top = first.mapTo(form.scroll.widget(), first.rect().topLeft()).y()
    bar = form.scroll.verticalScrollBar()
    assert bar.value() <= top <= bar.value() + form.scroll.viewport().height(), "scrolled to the first one"

    # "Try the demo" after that: the demo's own (valid) settings, not the broken ones
    w._on_demo_ready((qwen_model, shapes_data))
    assert form.is_valid()
    assert form.config() == TrainConfig().replace(**DEMO_SETTINGS, output="")
    qtbot.waitUntil(lambda: w.model_choice is not None and w.dataset_check is not None
                    and not w.browser.is_busy(), timeout=60000)
    assert w.why_not_ready() == ""
    assert w.training.status.text() == "Ready"


# ---- 5. switching datasets after a failed open; 6. Ctrl+O opens files too -------------------------

def test_failed_open_leaves_nothing_of_the_old_dataset(windows, qtbot, shapes_data, tmp_path, monkeypatch):
    from PySide6.QtGui import QKeySequence
    from PySide6.QtWidgets import QFileDialog

    w = windows()
    b = w.browser
    w.open_dataset(str(shapes_data))
    qtbot.waitUntil(lambda: w.dataset_check is not None and not b.is_busy(), timeout=60000)
    b.select_row(0)
    assert b.details.text() and b.model.rowCount() and b.problems.count() >= 0
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    w.open_dataset(str(broken))
    assert b.model.rowCount() == 0 and b.details.text() == "" and b.counts.text() == "–", "cleared at once"
    qtbot.waitUntil(lambda: not b.is_busy(), timeout=60000)
    assert b.error.isVisible() and b.title.text() == "broken.jsonl"
    assert b.model.rowCount() == 0 and b.stack.currentIndex() == 0 and b.details.text() == ""
    assert b.problems.count() == 0 and b.splits.text() == "" and b.check is None
    assert "opening" not in w.status_data.text() and "broken.jsonl" in w.status_data.text()
    assert w.dataset_check is None and "open a dataset" in w.why_not_ready()

    # File > Open Dataset File… (Ctrl+O) offers files; the folder has its own item
    assert w.act_open.shortcut() == QKeySequence(QKeySequence.StandardKey.Open)
    assert "File" in w.act_open.text() and "Folder" in w.act_open_folder.text()
    file_menu = next(a.menu() for a in w.menuBar().actions() if a.text().replace("&", "") == "File")
    assert {w.act_open, w.act_open_folder} <= set(file_menu.actions())
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join('{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", '
                            '"content": "a%d"}]}\n' % (i, i) for i in range(12)))
    asked = []

    def fake_dialog(parent, caption, folder, filters):
        asked.append(filters)
        return str(rows), ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(fake_dialog))
    w.act_open.trigger()
    assert asked and "*.jsonl" in asked[0] and "*.csv" in asked[0] and "*.json" in asked[0]
    qtbot.waitUntil(lambda: w.dataset_check is not None and not b.is_busy(), timeout=60000)
    assert w.dataset_check.report.rows_usable == 12 and not b.error.isVisible()
    assert "rows.jsonl" in w.status_data.text()


# ---- 7. exports: recorded, honest about quantization, default target and folder, normal modes -----

def test_export_wizard_defaults_records_and_is_honest_about_4_bit(qtbot, tmp_path, monkeypatch):
    import os
    import stat

    from PySide6.QtWidgets import QWizard
    from test_export_support import make_adapter

    from finetune_app.core import runs
    from finetune_app.ui import export_wizard as ew

    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "appdata"))
    run = make_adapter("qwen2", tmp_path / "run")
    rec = runs.import_run(run)  # a recorded run (the app records every run it trains)
    old_mask = os.umask(0o022)
    try:
        w = ew.ExportWizard(adapter=str(run))
        qtbot.addWidget(w)
        w.show()
        src = w.source
        assert src.target() == "mlx-lm", "default target for a text model"
        for t in ("mlx-vlm", "mlx-swift"):
            assert not src.buttons[t].isEnabled()
            assert "Not available" in src.buttons[t].toolTip() and "Not available" in src.notes[t].text()
        w.next()
        assert w.currentId() == ew.PAGE_QUANT
        label = w.quant.form.labelForField(w.quant.encoder_box)
        assert not label.isVisible() and not w.quant.encoder_box.isVisible(), "no CoreML row for mlx-lm"
        w.quant.bits.setCurrentIndex(w.quant.bits.findData(4))
        w.next()
        out = Path(w.dest.output_edit.text())
        assert out == run.with_name("run-mlx-lm"), "default folder: beside the run folder"
        assert w.button(QWizard.NextButton).isEnabled()
        w.next()
        w.next()
        qtbot.waitUntil(lambda: w.currentId() == ew.PAGE_RESULT or bool(w.progress_page.error), timeout=120_000)
        assert not w.progress_page.error
        text = w.result_page.verification.toPlainText()
        assert "approximate (quantized or half precision): max diff" in text and "): passed" not in text
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        for f in out.rglob("*"):
            if f.is_file():
                assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
        with runs.open_store() as store:
            exports = store.exports(rec.id)
        assert [(e["target"], Path(e["path"])) for e in exports] == [("mlx-lm", out.resolve())]
        w.accept()
    finally:
        os.umask(old_mask)


# ---- 8. caption cards: long unbroken output wraps; control tokens are not shown -------------------

def test_caption_card_wraps_long_words_and_hides_special_tokens(app_env, qtbot, shapes_data):
    from PySide6.QtWidgets import QScrollArea

    from finetune_app.core.compare import ImageInput
    from finetune_app.ui.caption_panel import CaptionRequest, ResultCard
    from finetune_app.ui.widgets import ZWSP

    picture = next((shapes_data / "images").glob("*.png"))
    image = ImageInput(path=picture)
    card = ResultCard(image, CaptionRequest(image=image), None)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(card)
    scroll.resize(640, 400)
    qtbot.addWidget(scroll)
    scroll.show()
    base, tuned = card.sides["base"], card.sides["tuned"]
    for piece in ("a" * 150, "b" * 150, "<|im_", "end|>"):
        base.append(piece)  # streamed, the token split across pieces
    tuned.finish("a red circle<|endoftext|></s>", "checkpoint step 40")
    qtbot.wait(50)
    assert "<|" not in base.body.text() and "<|" not in tuned.body.text() and "</s>" not in tuned.body.text()
    assert tuned.body.text() == "a red circle" and base.text == "a" * 150 + "b" * 150
    assert base.body.text().replace(ZWSP, "") == base.text
    assert card.width() <= scroll.viewport().width(), "the card is no wider than the window's column"
    right = tuned.mapTo(card, tuned.rect().topRight()).x()
    assert right <= card.width() and tuned.width() > 100, "the fine-tuned caption stays on screen"
    assert base.body.height() > 2 * base.body.fontMetrics().height(), "the long word wraps"


# ---- 9. the training screen: log follows, ETA pauses, real peak memory, estimate follows batch ----

def test_training_screen_log_eta_memory(windows, qtbot, tiny_model, instruction_data):
    from finetune_app.core.config import TrainConfig

    w = windows()
    t = w.training
    bar = t.log.verticalScrollBar()
    for i in range(200):
        t._log(f"line {i}")
    assert bar.maximum() > 0 and bar.value() == bar.maximum(), "the log follows new lines"
    bar.setValue(0)  # the person scrolls up to read
    t._log("one more")
    assert bar.value() == 0, "reading is not interrupted"
    bar.setValue(bar.maximum())
    t._log("and another")
    assert bar.value() == bar.maximum()

    w.load_model(str(tiny_model("llama")))
    w.open_dataset(str(instruction_data))
    qtbot.waitUntil(lambda: w.model_choice is not None and w.dataset_check is not None
                    and not w.browser.is_busy(), timeout=60000)
    w.form.set_config(TrainConfig(iters=400, batch_size=1, learning_rate=1e-3, lora_rank=4, steps_per_report=1,
                                  steps_per_eval=1000, save_every=1000, sample_count=0, seed=1))
    one = w.form.memory.text.text()
    w.form.set_config(w.form.config().replace(batch_size=8))
    eight = w.form.memory.text.text()
    assert one != eight and "batch 8" in eight and "activations add" in eight, (one, eight)
    w.form.set_config(w.form.config().replace(batch_size=1))
    assert w.start_training()
    qtbot.waitUntil(lambda: t.step >= 5, timeout=120000)
    assert float(t.stats["mem"].value.text().split()[0]) > 0.05, "the process's real peak on CPU"
    t.toggle_pause()
    qtbot.waitUntil(lambda: t.state == "paused", timeout=60000)
    assert t.stats["eta"].value.text() == "paused"
    t._tick_clock()
    elapsed = t.stats["elapsed"].value.text()
    qtbot.wait(1300)  # clock ticks while paused
    assert t.stats["eta"].value.text() == "paused" and t.stats["elapsed"].value.text() == elapsed
    t.toggle_pause()
    qtbot.waitUntil(lambda: t.stats["eta"].value.text() not in ("paused", "–"), timeout=60000)
    t.stop(save=False)
    qtbot.waitUntil(lambda: t.state in ("stopped", "finished"), timeout=60000)


# ---- 10. conventions: menus, shortcuts, welcome until the first run, last session, text models ---

def test_standard_menus_and_shortcuts(windows, qtbot, monkeypatch):
    from PySide6.QtGui import QKeySequence

    w = windows()
    names = [a.text().replace("&", "") for a in w.menuBar().actions()]
    assert names == ["Finetune", "File", "Edit", "View", "Training", "Window", "Help"]
    assert w.act_minimise.shortcut() == QKeySequence("Ctrl+M") and w.act_model.shortcut() != QKeySequence("Ctrl+M")
    assert w.act_pause.shortcut() == QKeySequence("Ctrl+P") and w.act_settings.shortcut() == QKeySequence("Ctrl+,")
    shortcuts = [a.shortcut().toString() for a in w.findChildren(type(w.act_open)) if not a.shortcut().isEmpty()]
    assert len(shortcuts) == len(set(shortcuts)), f"no shortcut used twice: {sorted(shortcuts)}"
    paused = []
    monkeypatch.setattr(w.training, "toggle_pause", lambda: paused.append(1))
    w.pause_space.activated.emit()  # Space on the Training screen
    assert w.pause_space.key() == QKeySequence("Space") and w.pause_space.parent() is w.training and paused
    opened = []
    from PySide6.QtGui import QDesktopServices

    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    w.act_help.trigger()
    assert opened and Path(opened[0]).is_file() and "Finetune" in Path(opened[0]).read_text(encoding="utf-8")


def test_welcome_until_first_run_then_last_session_reopens(windows, qtbot, monkeypatch, tiny_model,
                                                           instruction_data):
    import finetune_app.ui.welcome as welcome
    from finetune_app.core import runs
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    shown = []
    monkeypatch.setattr(welcome, "run_welcome", lambda *a, **k: shown.append(1) or "skip")
    first = windows()
    first.maybe_show_welcome()
    qtbot.waitUntil(lambda: bool(shown))
    model = tiny_model("llama")
    first.load_model(str(model))
    first.open_dataset(str(instruction_data))
    qtbot.waitUntil(lambda: first.model_choice is not None and first.dataset_check is not None
                    and not first.browser.is_busy(), timeout=60000)
    # vision settings are off for a text-only model
    assert not first.form.fields["train_vision"].isEnabled() and not first.form.fields["image_size"].isEnabled()
    assert first.form.fields["lora_rank"].isEnabled()
    cfg = TrainConfig(model=str(model), data=str(instruction_data), output=str(first.new_run_folder()), iters=2,
                      batch_size=2, lora_rank=4, sample_count=0, steps_per_eval=100, save_every=100)
    recorder = runs.RunRecorder(cfg)
    Trainer(cfg, listeners=[recorder]).run()  # the first run
    recorder.close()
    first.close()

    again = windows()
    again.maybe_show_welcome()
    qtbot.waitUntil(lambda: again.model_choice is not None and again.dataset_check is not None
                    and not again.browser.is_busy(), timeout=60000)
    assert shown == [1], "no welcome once a run exists"
    assert again.model_choice.path == model and Path(str(again.dataset_check.dataset.path)) == instruction_data


# ---- the labelling loop -------------------------------------------------------------------------

def test_label_twenty_pictures_edit_three_save_and_train(windows, qtbot, qwen_model, tmp_path):
    import csv

    from finetune_app.core.data.demo import make_shapes_dataset
    from finetune_app.ui.main_window import DEMO_SETTINGS

    src = make_shapes_dataset(tmp_path / "src", n_train=20, n_valid=0, size=64, seed=3)
    folder = tmp_path / "unlabelled"
    shutil.copytree(Path(src) / "images", folder / "images")  # pictures only, no captions
    w = windows()
    w.load_model(str(qwen_model))
    qtbot.waitUntil(lambda: w.model_choice is not None, timeout=60000)
    panel = w.label_folder(str(folder))
    assert w.tabs.currentWidget() is panel and panel.table.rowCount() == 20
    assert panel.captions() == [""] * 20
    panel.caption_all()
    assert panel.is_busy() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=180000)
    assert panel.banner.title.text() == "Captions ready", panel.banner.text.text()
    base = panel.captions()
    assert len(base) == 20 and all("<|" not in c for c in base)
    # one Undo takes back all the model's captions, Redo brings them back
    panel.undo_stack.undo()
    assert panel.captions() == [""] * 20
    panel.undo_stack.redo()
    assert panel.captions() == base
    # correct three: typed in the table (Enter moves on), one through the API, one undone and redone
    panel.table.setFocus()
    panel.table.setCurrentCell(0, 1)
    qtbot.keyClick(panel.table, "a")  # any key starts editing the caption
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QLineEdit

    editor = panel.table.findChild(QLineEdit)
    assert editor is not None and editor.text() == "a"
    qtbot.keyClicks(editor, " red circle")
    qtbot.keyClick(editor, Qt.Key.Key_Return)  # commits and moves to the next picture
    qtbot.waitUntil(lambda: panel.table.currentRow() == 1)
    assert panel.captions()[0] == "a red circle"
    panel.set_caption(5, "a blue square")
    panel.set_caption(9, "a green triangle")
    panel.undo_stack.undo()
    assert panel.captions()[9] == base[9]
    panel.undo_stack.redo()
    for i, c in enumerate(panel.captions()):  # a random tiny model may say nothing: fill those too
        if not c.strip():
            panel.set_caption(i, "a shape")
    assert panel.save() is not None
    with open(folder / "captions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and rows[0]["caption"] == "a red circle" and rows[5]["caption"] == "a blue square"
    assert rows[9]["caption"] == "a green triangle"
    assert not list(folder.glob(".captions.csv*")), "written atomically: no temporary left"
    qtbot.waitUntil(lambda: w.dataset_check is not None and not w.browser.is_busy(), timeout=60000)
    assert w.dataset_check.report.rows_usable == 20
    w.form.set_config(w.form.config().replace(**{**DEMO_SETTINGS, "iters": 20, "steps_per_eval": 10,
                                                 "save_every": 20, "sample_count": 1, "valid_fraction": 0.1}))
    assert w.start_training()
    qtbot.waitUntil(lambda: w.training.state in ("finished", "failed"), timeout=180000)
    assert w.training.state == "finished" and w.training.step == 20
    assert (Path(w.run.config.output) / "adapters.safetensors").is_file()


def test_labelling_cancel_keeps_what_is_done_and_undo_removes_it(windows, qtbot, qwen_model, tmp_path):
    from finetune_app.core.data.demo import make_shapes_dataset

    src = make_shapes_dataset(tmp_path / "src", n_train=24, n_valid=0, size=64, seed=4)
    w = windows()
    panel = w.label_folder(str(Path(src) / "images"))
    panel.set_model(str(qwen_model))
    panel.caption_all()
    qtbot.waitUntil(lambda: panel.progress.value() >= 4, timeout=120000)
    panel.cancel()
    assert not panel.is_busy() and panel.banner.title.text() == "Captioning cancelled"
    done = panel.captions()
    qtbot.wait(1500)  # a batch in flight when cancelled never lands
    assert panel.captions() == done and panel.save_button.isEnabled()
    panel.undo_stack.undo()
    assert panel.captions() == [""] * 24
