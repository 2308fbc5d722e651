"""Take the desktop app's screenshots (docs/ui.md) from a real session: the welcome's demo, a real
tiny-model training run on the demo shapes, and the screens around it.

    xvfb-run -s "-screen 0 1400x900x24" python3 docs/screenshots/make_gui_screenshots.py

Everything shown is real: the demo model and pictures are built by the app, the run trains on
this machine (about a minute on a laptop CPU), and the plots and sample captions are its own.
Settings and app data go to a temporary folder, so the person's own are never touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE), help="folder for the PNGs")
    parser.add_argument("--iters", type=int, default=None, help="steps of the demo run (default: the demo's)")
    parser.add_argument("--size", default="1400x880", help="window size")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="finetune-shots-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["FINETUNE_SETTINGS_DIR"] = str(work / "settings")
    os.environ["FINETUNE_DATA_DIR"] = str(work / "Finetune")
    os.environ["FINETUNE_NO_WELCOME"] = "1"

    from PySide6.QtWidgets import QApplication

    from finetune_app.ui.app import apply_theme, create_app
    from finetune_app.ui.main_window import MainWindow

    app = create_app(["finetune-app"])
    width, height = (int(v) for v in args.size.split("x"))
    w = MainWindow()
    w.resize(width, height)
    w.move(0, 0)
    w.show()

    def pump(seconds: float = 0.3) -> None:
        end = time.time() + seconds
        while time.time() < end:
            app.processEvents()
            time.sleep(0.01)

    def wait(cond, timeout: float = 600.0, what: str = "") -> None:
        end = time.time() + timeout
        while not cond():
            if time.time() > end:
                raise SystemExit(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.02)

    def shot(widget, name: str) -> None:
        pump(0.4)
        path = out / name
        widget.grab().save(str(path))
        print(f"wrote {path}")

    pump(0.5)

    # 1. first launch: the welcome (its own dialog; shown here without waiting for a click)
    from finetune_app.ui.welcome import WelcomeDialog

    welcome = WelcomeDialog(w, network_check=None)
    welcome.show()
    pump(0.5)
    shot(welcome, "gui-welcome.png")
    welcome.done(0)
    pump(0.2)

    # 2. the demo, as "Try the demo" sets it up: tiny model + shapes pictures in the app-data folder
    w.start_demo()
    wait(lambda: w.model_choice is not None and w.dataset_check is not None and not w.browser.is_busy(),
         what="the demo model and dataset")
    if args.iters:
        w.form.fields["iters"].set_value(args.iters)
    w.tabs.setCurrentIndex(0)
    w.browser.select_row(4)
    shot(w, "gui-dataset.png")
    w.notice.hide()
    w.tabs.setCurrentIndex(1)
    shot(w, "gui-settings.png")

    # 3. the real run
    assert w.start_training(), w.why_not_ready()
    total = w.form.total_steps() or 600
    wait(lambda: w.training.step >= total // 3 and len(w.training.sample_reports) >= 1, what="a third of the run")
    shot(w, "gui-training-running.png")
    wait(lambda: not w.training.is_running(), what="the end of the run")
    wait(lambda: w.run is not None and not w.run.is_running(), what="the training thread")
    shot(w, "gui-training.png")
    per_eval = ", ".join(f"step {r.step}: {sum(i.output.strip() == i.reference.strip() for i in r.items)}/{len(r.items)}"
                         for r in w.training.sample_reports)
    print(f"run: {w.training.state} at step {w.training.step}, loss {w.training.losses[0]:.2f} -> "
          f"{w.training.losses[-1]:.3f}; samples right: {per_eval}")

    # 4. dark mode (as when the system switches to dark)
    os.environ["FINETUNE_COLOR_SCHEME"] = "dark"
    apply_theme(app)
    pump(0.5)
    shot(w, "gui-dark-training.png")
    w.tabs.setCurrentIndex(0)
    shot(w, "gui-dark-dataset.png")
    os.environ["FINETUNE_COLOR_SCHEME"] = "light"
    apply_theme(app)
    pump(0.3)

    # 5. settings typed wrong: flagged as typed, and Start says why it cannot start
    w.tabs.setCurrentIndex(1)
    good = w.form.config()
    w.form.fields["learning_rate"].editor.setText("0.0o1")
    w.form.fields["batch_size"].editor.setText("0")
    w.form.fields["lora_dropout"].editor.setText("1.5")
    pump(0.3)
    shot(w, "gui-settings-invalid.png")
    w.form.set_config(good)

    # 6. a dataset with problems: every problem listed, a click selects its row
    from finetune_app.core.data.demo import make_instruction_dataset

    damaged = work / "shapes-damaged"
    shutil.copytree(Path(str(w.dataset_check.dataset.path)), damaged)
    (damaged / "images" / "00007.png").unlink()
    (damaged / "images" / "00012.png").write_bytes(b"not a png")
    with open(damaged / "captions.csv", "a", encoding="utf-8") as fh:
        fh.write("00002.png,,train\n00404.png,a red circle,train\n")
    w.open_dataset(str(damaged))
    wait(lambda: w.dataset_check is not None and not w.browser.is_busy(), what="the damaged dataset")
    item = w.browser.problems.item(0)
    w.browser.problems.setCurrentItem(item)
    w.browser.problems.itemClicked.emit(item)
    shot(w, "gui-dataset-problems.png")

    # 7. a text dataset: the conversation view
    text = make_instruction_dataset(work / "instructions", n=200, seed=0)
    w.open_dataset(str(text))
    wait(lambda: w.dataset_check is not None and not w.browser.is_busy(), what="the text dataset")
    w.browser.select_row(3)
    shot(w, "gui-dataset-text.png")

    # 8. a run that cannot start its folder: the failure in the run's own words
    blocker = work / "not-a-folder"
    blocker.write_text("a file where the run folder should be\n")
    w.open_dataset(str(work / "Finetune" / "demo" / "shapes"))
    wait(lambda: w.dataset_check is not None and not w.browser.is_busy(), what="the demo dataset")
    w.form.fields["output"].set_value(str(blocker))
    assert w.start_training()
    wait(lambda: w.training.state == "failed", what="the failed run")
    wait(lambda: not w.run.is_running(), what="the failed run's thread")
    shot(w, "gui-training-failed.png")
    w.form.fields["output"].set_value("")

    # 9. a hub model on a machine without network: the engine's message, in a panel
    w.tabs.setCurrentIndex(1)
    w.picker.load("mlx-community/FastVLM-0.5B-bf16")
    wait(lambda: not w.picker.is_busy(), what="the offline check")
    w.picker.source.lineEdit().setCursorPosition(0)
    shot(w, "gui-model-offline.png")

    w.close()
    QApplication.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
