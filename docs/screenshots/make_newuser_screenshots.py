"""Screenshots for issue 18: the export wizard in dark mode (greyed targets say why), the Training tab
naming the settings to fix, and the form scrolled to them. Run from the repository root:
    PYTHONPATH=$PWD QT_QPA_PLATFORM=xcb xvfb-run -a python3 docs/screenshots/make_newuser_screenshots.py docs/screenshots"""
import os, sys, tempfile
from pathlib import Path
work = Path(tempfile.mkdtemp())
os.environ["FINETUNE_SETTINGS_DIR"] = str(work / "s"); os.environ["FINETUNE_DATA_DIR"] = str(work / "d")
os.environ["FINETUNE_NO_WELCOME"] = "1"
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
from PySide6.QtCore import QEventLoop, QTimer
from finetune_app.ui.app import create_app
def spin(ms):
    loop = QEventLoop(); QTimer.singleShot(ms, loop.quit); loop.exec()
os.environ["FINETUNE_COLOR_SCHEME"] = "dark"
app = create_app([])
sys.path.insert(0, "tests")
from test_export_support import make_adapter
from finetune_app.ui import export_wizard as ew
run = make_adapter("qwen2", work / "run")
w = ew.ExportWizard(adapter=str(run)); w.show(); spin(400)
w.grab().save(str(out / "export-wizard-dark.png"))
from finetune_app.ui.main_window import MainWindow
m = MainWindow(); m.resize(1100, 700); m.show()
m.form.fields["batch_size"].editor.setText("0"); m.form.fields["keep_checkpoints"].editor.setText("lots")
m.tabs.setCurrentWidget(m.training); spin(400)
m.grab().save(str(out / "training-not-ready-dark.png"))
m.show_settings_problems(); spin(400)
m.grab().save(str(out / "settings-problems-dark.png"))
