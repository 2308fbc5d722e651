"""Model picker, hyperparameter form, settings that persist, the welcome's demo, dark mode, `gui`.

The model picker resolves real folders through the engine (and the engine's offline error); the
download test replaces only the network call itself (huggingface_hub.snapshot_download), driving the
engine's real progress plumbing byte by byte, so progress and cancel are the app's own behaviour.
"""

from __future__ import annotations

import threading
import time
import tomllib

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox
from gui_helpers import click_in_dialog  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def picker(app_env, qtbot):
    from finetune_app.ui.model_picker import ModelPicker

    p = ModelPicker()
    qtbot.addWidget(p)
    p.show()
    return p


@pytest.fixture
def form(app_env, qtbot):
    from finetune_app.ui.hyperparams import HyperparamForm

    f = HyperparamForm()
    qtbot.addWidget(f)
    f.show()
    return f


def type_into(form, name, text, qtbot):
    editor = form.fields[name].editor
    editor.clear()
    qtbot.keyClicks(editor, text)




# ---- model picker ---------------------------------------------------------------------------------

def test_local_model_is_described_and_remembered(picker, qwen_model, qtbot):
    from finetune_app.ui.model_picker import ModelPicker, recent_models

    with qtbot.waitSignal(picker.modelChosen, timeout=60000) as sig:
        picker.source.setEditText(str(qwen_model))
        qtbot.mouseClick(picker.load_button, Qt.MouseButton.LeftButton)
    choice = sig.args[0]
    assert choice.info.kind == "vlm" and choice.info.family == "Qwen2-VL"
    assert picker.summary.text() == f"<b>{choice.info.summary()}</b>"
    assert "vision-language" in picker._detail_labels["kind"].text()
    assert picker._detail_labels["quant"].text() == "none"
    assert choice.tokenizer_base is not None and choice.tokenizer_base.model is None  # no weights kept
    assert choice.arch["hidden_size"] > 0 and choice.arch["num_layers"] > 0
    assert recent_models()[0] == str(qwen_model)
    fresh = ModelPicker()  # a new window lists it first
    qtbot.addWidget(fresh)
    assert fresh.source.itemText(0) == str(qwen_model)


def test_offline_hub_id_shows_the_engine_message(picker, qtbot):
    with qtbot.waitSignal(picker.failed, timeout=60000) as sig:
        picker.load("finetune-test/not-a-real-model")
    assert picker.error.isVisible()
    assert "offline" in sig.args[0] and "local Hugging Face cache" in picker.error.text.text()
    assert picker.load_button.isEnabled() and not picker.progress_box.isVisible()


def test_folder_that_is_not_a_model_is_refused(picker, tmp_path, qtbot):
    with qtbot.waitSignal(picker.failed, timeout=30000):
        picker.load(str(tmp_path))
    assert "no config.json" in picker.error.text.text()


def test_download_shows_progress_and_cancel_abandons_it(picker, monkeypatch, qtbot):
    import huggingface_hub

    updates, finished = [], threading.Event()

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, tqdm_class=None, **kw):
        try:  # the engine's own tqdm class turns bytes into progress callbacks
            bar = tqdm_class(total=4_000_000, unit="B", desc="model.safetensors")
            for _ in range(400):
                time.sleep(0.01)
                bar.update(10_000)
                updates.append(bar.n)
            raise AssertionError("the cancelled download kept going")
        finally:
            finished.set()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    chosen = []
    picker.modelChosen.connect(chosen.append)
    picker.load("mlx-community/some-model")
    qtbot.waitUntil(lambda: picker.progress.maximum() == 1000 and picker.progress.value() > 0, timeout=30000)
    assert picker.progress_box.isVisible() and picker.cancel_button.isVisible()
    assert picker.progress_label.text().startswith("Downloading mlx-community/some-model: ")
    assert " of 4.0 MB" in picker.progress_label.text()
    first = picker.progress.value()
    qtbot.waitUntil(lambda: picker.progress.value() > first, timeout=10000)

    qtbot.mouseClick(picker.cancel_button, Qt.MouseButton.LeftButton)
    assert not picker.progress_box.isVisible()  # told at once, not after the thread notices
    assert picker.error.isVisible() and picker.error.title.text() == "Download cancelled"
    assert finished.wait(10), "the download thread stopped at its next progress report"
    assert len(updates) < 400
    qtbot.wait(100)
    assert chosen == [] and picker.load_button.isEnabled()


# ---- hyperparameter form --------------------------------------------------------------------------

def test_presets_fill_the_form(form):
    from finetune_app.core.config import PRESETS

    for name, values in PRESETS.items():
        form.apply_preset(name)
        cfg = form.config()
        assert all(getattr(cfg, k) == v for k, v in values.items()), name
        assert form.preset.currentData() == name


def test_invalid_values_are_flagged_as_typed(form, qtbot):
    type_into(form, "learning_rate", "abc", qtbot)
    field = form.fields["learning_rate"]
    assert field.message.isVisible() and "'abc' is not a number" in field.message.text()
    assert "border: 2px solid" in field.editor.styleSheet()
    assert not form.is_valid()
    type_into(form, "learning_rate", "2", qtbot)  # a number, but the engine refuses it
    assert "no larger than 1" in field.message.text()
    type_into(form, "learning_rate", "3e-4", qtbot)
    assert field.message.text() == "" and field.editor.styleSheet() == ""
    assert form.config().learning_rate == pytest.approx(3e-4)

    type_into(form, "batch_size", "2.5", qtbot)
    assert "whole number" in form.fields["batch_size"].message.text()
    type_into(form, "batch_size", "4", qtbot)
    # a reason that involves two settings lands on the one the engine names
    form.fields["fine_tune_type"].set_value("full")
    form.fields["quantize_bits"].set_value(4)
    assert "full fine-tune" in form.fields["quantize_bits"].message.text()
    form.fields["quantize_bits"].set_value(None)
    type_into(form, "iters", "", qtbot)
    type_into(form, "epochs", "", qtbot)
    assert "needed when the steps are empty" in form.fields["epochs"].message.text()
    type_into(form, "epochs", "2", qtbot)
    assert form.is_valid(), form.problems()
    assert form.preset.currentData() is None  # edited away from every preset: "Custom"


def test_settings_save_and_load_as_toml(form, tmp_path, qtbot):
    from finetune_app.core.config import TrainConfig

    form.apply_preset("quality")
    type_into(form, "lora_rank", "24", qtbot)
    type_into(form, "lora_targets", "q_proj, v_proj", qtbot)
    path = form.save(tmp_path / "run.toml", model="some/model", data="/data")
    saved = TrainConfig.load(path)
    assert saved.lora_rank == 24 and saved.lora_targets == ["q_proj", "v_proj"] and saved.epochs == 5.0
    assert saved.model == "some/model"
    assert tomllib.loads(path.read_text())["lora_rank"] == 24

    form.apply_preset("quick test")
    type_into(form, "lora_rank", "4", qtbot)
    form.load(path)
    assert form.fields["lora_rank"].editor.text() == "24"
    assert form.config().lora_targets == ["q_proj", "v_proj"]

    broken = tmp_path / "broken.toml"
    broken.write_text("lora_rank = = 3\n")
    assert form.load(broken) is None
    assert form.summary.isVisible() and "not valid TOML" in form.summary.text.text()


def test_memory_estimate_and_the_warning_before_a_run_that_would_swap(app_env, qtbot, qwen_model, tmp_path):
    from finetune_app.ui.main_window import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    assert "Choose a model" in w.form.memory.text.text()
    w.open_paths([str(qwen_model)])
    qtbot.waitUntil(lambda: w.model_choice is not None, timeout=60000)
    assert w.form.memory.title.text() == "Memory: fits"
    gb, seq, ram = w.form.memory_estimate()
    assert 0 < gb < ram / 1e9 and seq == w.form.config().max_length
    bigger_batch = w.form.memory_estimate(w.form.config().replace(batch_size=64))[0]
    assert bigger_batch > gb
    assert w.form.memory_warning() is None

    w.form.memory_ram = int(0.4e9)  # pretend this machine is tiny
    w.form.update_estimates()
    assert w.form.memory.title.text() == "Memory: this would swap"
    assert "would swap" in w.form.memory_warning()
    fit = w.form.memory_fit()  # will it fit (#16): the same estimate, and what would fit instead
    assert not fit.fits and fit.need_gb == w.form.memory_estimate()[0]
    assert f"Largest batch at {seq:,} tokens: {fit.largest_batch};" in w.form.memory.text.text()

    from finetune_app.core.data.demo import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", n_train=8, n_valid=2, size=32)
    w.open_paths([str(data)])
    qtbot.waitUntil(lambda: w.dataset_check is not None and not w.browser.is_busy(), timeout=60000)
    assert w.why_not_ready() == ""
    clicked = click_in_dialog("memoryWarningDialog", "Cancel")
    assert w.start_training() is False  # asked first, and the person said no
    assert clicked == ["Cancel"] and w.run is None


def test_start_explains_what_is_missing(app_env, qtbot, qwen_model):
    from finetune_app.ui.main_window import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    assert not w.act_start.isEnabled()
    assert "choose a base model" in w.training.start_hint.text()
    assert "open a dataset" in w.training.start_hint.text()
    type_into(w.form, "batch_size", "0", qtbot)
    assert "fix the settings marked in red" in w.why_not_ready()
    assert w.start_training() is False and w.notice.isVisible()


# ---- state, welcome, look, command line -----------------------------------------------------------

def test_window_and_settings_persist(app_env, qtbot, tmp_path):
    from finetune_app.ui.main_window import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    w.resize(701, 555)  # smaller than the offscreen screen, so restoring cannot clamp it
    size = (w.width(), w.height())  # what the window accepted (no smaller than its minimum)
    type_into(w.form, "lora_rank", "12", qtbot)
    w.close()
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.form.config().lora_rank == 12
    assert again.height() == size[1]
    assert abs(again.width() - size[0]) <= 16  # the offscreen screen (800 px) may clamp the width


def test_welcome_demo_builds_and_loads_the_demo(app_env, qtbot, monkeypatch, tmp_path):
    import finetune_app.ui.welcome as welcome
    from finetune_app.ui.main_window import MainWindow

    monkeypatch.setattr(welcome, "run_welcome", lambda parent=None, settings=None, **kw: "demo")
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    w.maybe_show_welcome()
    qtbot.waitUntil(lambda: w.model_choice is not None and w.dataset_check is not None
                    and not w.browser.is_busy(), timeout=120000)
    demo = tmp_path / "appdata" / "demo"
    assert (demo / "shapes" / "captions.csv").is_file()
    assert w.model_choice.path.parent == demo / "models"
    assert w.dataset_check.report.rows_usable == 348
    assert w.form.config().iters == 600 and w.form.config().sample_count == 4
    assert w.why_not_ready() == ""
    assert w.notice.title.text() == "The demo is ready"


def test_dark_mode_follows_the_requested_scheme(app_env, qtbot, monkeypatch):
    from PySide6.QtGui import QPalette

    from finetune_app.ui.app import apply_theme, is_dark
    from finetune_app.ui.plots import ThemedPlot

    app = QApplication.instance()
    plot = ThemedPlot("t")
    qtbot.addWidget(plot)
    try:
        monkeypatch.setenv("FINETUNE_COLOR_SCHEME", "dark")
        apply_theme(app)
        assert is_dark()
        QApplication.processEvents()
        assert plot.backgroundBrush().color().lightness() < 80
        assert plot.backgroundBrush().color() == app.palette().color(QPalette.ColorRole.Base)
    finally:
        monkeypatch.setenv("FINETUNE_COLOR_SCHEME", "light")
        apply_theme(app)
    QApplication.processEvents()
    assert not is_dark()
    assert plot.backgroundBrush().color().lightness() > 200


def test_gui_command_opens_the_paths_given(monkeypatch):
    import finetune_app.ui.app as app_module
    from finetune_app.cli import build_parser

    got = []
    monkeypatch.setattr(app_module, "run_app", lambda paths, show_welcome=True: got.append((paths, show_welcome)) or 0)
    args = build_parser().parse_args(["gui", "/data/set", "/models/m", "--no-welcome"])
    assert args.func(args) == 0
    assert got == [(["/data/set", "/models/m"], False)]
    args = build_parser().parse_args(["gui"])
    assert args.paths == []


def test_pyside_emit_keeps_references():
    """PySide6 6.12.0 on CPython 3.11 lost a reference to `True`/`None` on every emit (the
    interpreter aborts after a few thousand): pyproject excludes it, and the installed binding
    must not do it."""
    import sys
    import tomllib
    from pathlib import Path

    from PySide6.QtCore import QObject, Signal

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.lower().startswith("pyside6") and "!=6.12.0" in d for d in deps)

    class Pinger(QObject):
        ping = Signal(object)

    p = Pinger()
    before = sys.getrefcount(True) + sys.getrefcount(None)
    for _ in range(5000):
        p.ping.emit(None)
    assert sys.getrefcount(True) + sys.getrefcount(None) > before - 100


def test_smoothed_loss_after_a_resume_continues_the_uninterrupted_curve(qtbot):
    """A resumed run repeats the steps after its checkpoint; the smoothed curve rewinds to the
    checkpoint's state instead of carrying the dropped points (no kink at the resume step)."""
    from finetune_app.ui.training_view import TrainingView

    losses = [3.0 - 0.05 * i + (0.3 if i % 3 == 0 else 0.0) for i in range(40)]
    straight = TrainingView()
    qtbot.addWidget(straight)
    for step, loss in enumerate(losses, start=1):
        straight._add_train_point(step, loss, 1e-3)
    resumed = TrainingView()
    qtbot.addWidget(resumed)
    for step, loss in enumerate(losses[:30], start=1):  # killed at step 30, checkpoint at 20
        resumed._add_train_point(step, loss + 5.0 if step > 20 else loss, 1e-3)
    for step in range(21, 41):
        resumed._add_train_point(step, losses[step - 1], 1e-3)
    assert resumed.loss_steps == straight.loss_steps
    assert resumed.ema == pytest.approx(straight.ema, rel=1e-12)
