"""Screenshots for issues 18 and 19: the crash-recovery offer at launch and the resumed run with its
whole curve; caption cards (a long unbroken base output wraps, control tokens hidden); the Compare
tab's full evaluation; the row editor on a flagged row. Everything is real: tiny random-weight models train, a run's process is
'killed' (recorded as running under a dead pid), captions and metrics come from the engine.
Run from the repository root:
    PYTHONPATH=$PWD QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1400x1000x24" \
        python3 docs/screenshots/make_recovery_caption_screenshots.py docs/screenshots"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

work = Path(tempfile.mkdtemp(prefix="finetune-shots-"))
os.environ["FINETUNE_SETTINGS_DIR"] = str(work / "settings")
os.environ["FINETUNE_DATA_DIR"] = str(work / "appdata")
os.environ["HF_HUB_OFFLINE"] = "1"
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from finetune_app.core import runs  # noqa: E402
from finetune_app.core.config import TrainConfig  # noqa: E402
from finetune_app.core.data.demo import make_instruction_dataset, make_shapes_dataset  # noqa: E402
from finetune_app.core.training.trainer import Trainer  # noqa: E402
from finetune_app.testing.tiny_models import build_tiny_model  # noqa: E402
from finetune_app.ui.app import create_app  # noqa: E402


def spin(ms):
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_for(cond, timeout_ms=300000):
    waited = 0
    while not cond() and waited < timeout_ms:
        spin(50)
        waited += 50
    if not cond():
        raise SystemExit("timed out")


app = create_app([])

# ---- 1. recovery first: a run killed at step 27, after its step-20 checkpoint -------------------------------
llama = build_tiny_model("llama", work / "models" / "llama", seed=0)
instructions = make_instruction_dataset(work / "instructions", n=48, seed=0)
run_dir = work / "runs" / "killed-run"
cfg = TrainConfig(model=str(llama), data=str(instructions), output=str(run_dir), iters=60, batch_size=2,
                  learning_rate=1e-3, lora_rank=4, steps_per_report=1, steps_per_eval=10, save_every=20,
                  keep_checkpoints=5, sample_count=0, seed=1)
runs.open_store().close()  # as the app does at its first launch, before any run
recorder = runs.RunRecorder(cfg)
Trainer(cfg, listeners=[recorder]).run()
recorder.close()
KILLED_AT = 27  # what a kill at step 27 leaves: checkpoint 20, metrics up to 27
for later in ("step-0000040", "step-0000060"):
    shutil.rmtree(run_dir / "checkpoints" / later, ignore_errors=True)
metrics = run_dir / "metrics.jsonl"
metrics.write_text("".join(line for line in metrics.read_text().splitlines(keepends=True)
                           if json.loads(line).get("step", 0) <= KILLED_AT))
dead = subprocess.Popen([sys.executable, "-c", "pass"])
dead.wait()
with runs.open_store() as store:
    store.update_run(recorder.run_id, status="running", step=KILLED_AT, pid=dead.pid, pid_started=None, ended_at=None)
    with store.transaction() as db:
        db.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (recorder.run_id, KILLED_AT))
runs.take_notices()

from finetune_app.ui.main_window import MainWindow  # noqa: E402

w = MainWindow()
w.resize(1200, 780)
w.move(0, 0)
w.show()
shot = {}


def grab_dialog():
    for widget in QApplication.topLevelWidgets():
        if isinstance(widget, QMessageBox) and widget.objectName() == "recoveryDialog" and widget.isVisible():
            spin(400)
            screen = QGuiApplication.primaryScreen().grabWindow(0)
            g = w.frameGeometry()
            screen.copy(g.x(), g.y(), g.width(), g.height()).save(str(out / "recovery-offer.png"))
            shot["dialog"] = True
            next(b for b in widget.buttons() if b.text() == "Resume").click()
            return
    QTimer.singleShot(50, grab_dialog)


QTimer.singleShot(0, grab_dialog)
w.maybe_show_welcome()
wait_for(lambda: shot.get("dialog") and w.training.state == "finished")
spin(500)
w.grab().save(str(out / "recovery-resumed.png"))
w.close()

# ---- 2. caption cards and the full evaluation: a tiny VLM, briefly fine-tuned on the shapes ------
qwen = build_tiny_model("qwen2_vl", work / "models" / "qwen2_vl", seed=0)
shapes = make_shapes_dataset(work / "shapes", n_train=300, n_valid=24, size=64, seed=0)
vlm_run = work / "runs" / "shapes-run"
Trainer(TrainConfig(model=str(qwen), data=str(shapes), output=str(vlm_run), iters=400, batch_size=4,
                    learning_rate=1e-3, lora_rank=16, lora_alpha=16.0, steps_per_report=10, steps_per_eval=100,
                    save_every=200, sample_count=0, seed=0)).run()

from finetune_app.ui.extras import attach_extras  # noqa: E402

w = MainWindow()
w.resize(1180, 760)
w.show()
extras = attach_extras(w)
panel = extras.caption_panel
panel.max_tokens.setValue(40)
panel.picker.add_folder(vlm_run)
valid = sorted((shapes / "images").glob("*.png"))[-3:]
w.tabs.setCurrentWidget(panel)
panel.add_paths(valid)
wait_for(lambda: not panel.is_busy())
spin(400)
w.grab().save(str(out / "caption-cards.png"))

view = extras.compare_view
w.tabs.setCurrentWidget(view)
view.picker.add_folder(vlm_run)
view.set_data(shapes)
view.limit.setValue(24)
view.max_tokens.setValue(8)
view.start_eval()
wait_for(lambda: view.eval_progress.value() > 4)
spin(200)
w.grab().save(str(out / "compare-eval-running.png"))
wait_for(lambda: not view.is_evaluating())
spin(300)
w.grab().save(str(out / "compare-eval.png"))
view.start()
wait_for(lambda: not view.is_running())
spin(400)
w.grab().save(str(out / "compare-eval-rows.png"))
extras.shutdown()
w.close()

# ---- 3. the row editor on a row whose picture is missing --------------------------------------
broken = work / "broken"
shutil.copytree(shapes, broken)
(broken / "images" / "00003.png").unlink()
w = MainWindow()
w.resize(1180, 760)
w.show()
w.open_dataset(str(broken))
wait_for(lambda: w.browser.check is not None and not w.browser.is_busy())
w.browser.select_row(3)
editor = w.browser.edit_row(modal=False)
editor.caption.setPlainText(editor.caption.toPlainText())
spin(400)
editor.grab().save(str(out / "row-editor.png"))
editor.reject()
w.close()
print("screenshots in", out)
