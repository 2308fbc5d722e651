"""The menu-bar item through real training runs (offscreen): its menu text and icon when started,
paused, finished and failed (a real run on a dataset that does not exist), the notifications, the
window hiding instead of closing while training, and quitting mid-run: it asks, saves a checkpoint,
then quits, and `Trainer(..., resume=True)` continues from that checkpoint.

Plain Xvfb/offscreen has no system tray, so the tray's availability is simulated where the
hide-on-close behaviour needs it; the menu and icon are the real objects the tray would show.
With FINETUNE_SCREENSHOT_DIR set, the menu (popped up while paused) is saved as tray-menu.png.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QPoint, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402
from gui_helpers import click_in_dialog  # noqa: E402

pytestmark = pytest.mark.gui

SHOT_DIR = os.environ.get("FINETUNE_SCREENSHOT_DIR")


@pytest.fixture
def window(app_env, qtbot):
    from finetune_app.ui.extras import attach_extras
    from finetune_app.ui.main_window import MainWindow

    w = MainWindow()  # closed below, once no run is left (qtbot's own close would ask about a live run)
    extras = attach_extras(w)
    extras.tray.quit_function = lambda: extras.tray.quit_calls.append(True)
    extras.tray.quit_calls = []
    w.show()
    yield w
    if w.run is not None and w.run.is_running():
        w.run.stop(save=False)
        qtbot.waitUntil(lambda: not w.training.is_running(), timeout=60000)
        w.run.wait(30000)
    extras.shutdown()
    w.close()
    w.deleteLater()
    QApplication.instance().setQuitOnLastWindowClosed(True)


def config(tiny_model, shapes_data, out: Path, **changes):
    from finetune_app.core.config import TrainConfig

    cfg = TrainConfig(model=str(tiny_model("qwen2_vl")), data=str(shapes_data), output=str(out), iters=24,
                      batch_size=2, learning_rate=1e-3, lora_rank=4, steps_per_report=1, steps_per_eval=6,
                      save_every=12, sample_count=0, seed=0)
    return cfg.replace(**changes)


def start(w, cfg):
    """What MainWindow.start_training does once its checks pass."""
    from finetune_app.ui.workers import TrainingRun

    run = TrainingRun(cfg, parent=w)
    w.run = run
    w.training.attach(run)
    run.start()
    return run




def test_menu_and_icon_follow_a_run(window, qtbot, tiny_model, shapes_data, tmp_path):
    w = window
    tray = w.extras.tray
    assert tray.state == "idle" and tray.icon_name == "trayIdleTemplate.png"
    assert tray.menu_lines()[0] == "No training run"
    assert "Pause (disabled)" in tray.menu_lines() and "Quit Finetune" in tray.menu_lines()
    assert not tray.tray.icon().isNull()

    cfg = config(tiny_model, shapes_data, tmp_path / "run")
    start(w, cfg)
    qtbot.waitUntil(lambda: tray.view_state == "started" and tray.step >= 2, timeout=60000)
    lines = tray.menu_lines()
    assert tray.state == "training"
    assert re.fullmatch(r"Training · step \d+ of 24 \(\d+%\)", lines[0]), lines
    assert re.fullmatch(r"[\d,]+ tokens/s · \d+:\d\d left", tray.speed_text())
    assert tray.icon_name == f"trayTraining{math.floor(tray.step / 24 * 10) * 10}Template.png", "progress ring"
    assert "Pause" in lines and "Stop and Save…" in lines

    # pause from the menu (after the first validation, so the menu has every number)
    qtbot.waitUntil(lambda: tray.val_loss is not None, timeout=60000)
    assert re.fullmatch(r"Validation loss \d+\.\d{3} · best \d+\.\d{3}", tray.validation_text())
    tray.act_pause.trigger()
    qtbot.waitUntil(lambda: tray.view_state == "paused", timeout=30000)
    step = tray.step
    lines = tray.menu_lines()
    assert tray.state == "paused" and tray.icon_name == "trayPausedTemplate.png"
    assert lines[0] == f"Paused · step {step} of 24" and "Resume" in lines
    assert tray.tray.toolTip() == f"Finetune · Paused · step {step} of 24"
    if SHOT_DIR:
        tray.menu.popup(QPoint(40, 40))
        qtbot.waitUntil(tray.menu.isVisible, timeout=5000)
        qtbot.wait(150)
        assert tray.menu.grab().save(str(Path(SHOT_DIR) / "tray-menu.png"))
        tray.menu.hide()
    qtbot.wait(300)
    assert tray.step == step, "paused means paused"

    # resume from the menu; the run finishes
    tray.act_pause.trigger()
    qtbot.waitUntil(lambda: tray.view_state in ("started", "resumed") and tray.step > step, timeout=30000)
    assert tray.state == "training" and re.fullmatch(r"trayTraining\d+Template\.png", tray.icon_name)
    qtbot.waitUntil(lambda: tray.state == "finished", timeout=60000)
    lines = tray.menu_lines()
    assert tray.icon_name == "trayFinishedTemplate.png"
    assert lines[0] == "Finished · 24 steps"
    best = min(w.training.val_losses)
    assert lines[1] == f"Validation loss {w.training.val_losses[-1]:.3f} · best {best:.3f}"
    assert "Pause (disabled)" in lines and "Stop and Save… (disabled)" in lines
    qtbot.waitUntil(lambda: bool(tray.notifications), timeout=30000)  # once the worker is done
    title, text, kind = tray.notifications[-1]
    assert (title, kind) == ("Training finished", "information") and text.startswith("24 steps · validation loss")

    # File ▸ Quit goes through the tray's quit; with no run going it quits at once
    (quit_action,) = w.extras.quit_actions
    quit_action.trigger()
    assert tray.quit_calls == [True] and not w.isVisible()


def test_failed_run_shows_failed_icon_and_notification(window, qtbot, tiny_model, shapes_data, tmp_path):
    w = window
    tray = w.extras.tray
    missing = tmp_path / "no-such-dataset"
    start(w, config(tiny_model, shapes_data, tmp_path / "run", data=str(missing)))
    qtbot.waitUntil(lambda: tray.state == "failed", timeout=60000)
    assert tray.icon_name == "trayFailedTemplate.png"
    line = tray.menu_lines()[0]
    assert line.startswith("Failed: ") and "no-such-dataset" in line
    qtbot.waitUntil(lambda: bool(tray.notifications), timeout=30000)
    title, text, kind = tray.notifications[-1]
    assert (title, kind) == ("Training failed", "critical") and "no-such-dataset" in text
    assert "Traceback" not in text


def test_close_hides_while_training_and_quit_saves_a_resumable_checkpoint(window, qtbot, tiny_model, shapes_data,
                                                                          tmp_path):
    from finetune_app.core.training import checkpoint as ckpt
    from finetune_app.core.training.trainer import Trainer

    w = window
    tray = w.extras.tray
    tray.tray_available = lambda: True  # plain Xvfb/offscreen has no tray; the behaviour is what is tested
    cfg = config(tiny_model, shapes_data, tmp_path / "run", iters=400, save_every=1000, steps_per_eval=1000)
    run = start(w, cfg)
    qtbot.waitUntil(lambda: tray.step >= 3, timeout=60000)

    w.close()  # the window's close button while training: hidden, not closed
    assert not w.isVisible() and run.is_running()
    assert tray.notifications[-1][0] == "Finetune keeps training"
    assert not QApplication.instance().quitOnLastWindowClosed()
    step_at_close = tray.step
    qtbot.waitUntil(lambda: tray.step > step_at_close, timeout=30000)  # still training

    clicked = click_in_dialog("quitWhileTrainingDialog", "Stop, Save and Quit")
    tray.act_quit.trigger()
    assert clicked == ["Stop, Save and Quit"]
    qtbot.waitUntil(lambda: bool(tray.quit_calls), timeout=60000)
    assert not run.is_running()
    assert w.training.state == "stopped"

    found, _ = ckpt.latest_valid(Path(cfg.output))
    assert found is not None, "quitting mid-run saved a checkpoint"
    state = json.loads((found / "state.json").read_text())
    step = state["step"]
    assert 3 <= step < 400

    events = []
    result = Trainer(cfg.replace(iters=step + 2), resume=True, listeners=[events.append]).run()
    assert result.status == "finished" and result.step == step + 2
    assert any(getattr(e, "message", "").startswith(f"Resuming from {found.name}") for e in events)
