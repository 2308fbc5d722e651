"""Caption tests driven offscreen: pictures dropped on the window and on the panel, captions from
the base model and from a real short-trained adapter, checked against the engine's own output
(core.generate.generate on base + adapter, computed independently here); drops of non-images,
huge pictures, too many files, broken links; links and raw image data dropped while a real run
trains, which goes on undisturbed.

With FINETUNE_SCREENSHOT_DIR set, the panel after a drop is saved there as caption-drop.png (run
under Xvfb with QT_QPA_PLATFORM=xcb for the real look; the adapter is then trained longer so the
captions read like captions).
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import os
import re
import struct
import threading
import zlib
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication, QImage  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

pytestmark = pytest.mark.gui

PROMPT = "Describe this image."
MAX_TOKENS = 10
SHOT_DIR = os.environ.get("FINETUNE_SCREENSHOT_DIR")


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_model, shapes_data, tmp_path_factory):
    """A real adapter: a few steps of the engine's Trainer (checkpoints at steps 2 and 4)."""
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    model = tiny_model("qwen2_vl")
    data = shapes_data
    run_dir = tmp_path_factory.mktemp("caption-run") / "run"
    cfg = TrainConfig(model=str(model), data=str(data), output=str(run_dir), iters=4, batch_size=2,
                      learning_rate=2e-3, lora_rank=4, steps_per_report=1, steps_per_eval=100, save_every=2,
                      sample_count=0, keep_checkpoints=10, seed=0)
    if SHOT_DIR:  # screenshots: a demo-sized run, so the captions are worth reading
        from finetune_app.core.data.demo import make_shapes_dataset

        data = make_shapes_dataset(tmp_path_factory.mktemp("shot") / "shapes", n_train=300, n_valid=24, size=64, seed=0)
        cfg = cfg.replace(data=str(data), iters=500, batch_size=4, learning_rate=1e-3, lora_rank=16, lora_alpha=16.0,
                          save_every=250)
    result = Trainer(cfg).run()
    assert result.status == "finished"
    return model, data, run_dir, cfg


@functools.lru_cache(maxsize=None)
def engine_captions(model: str, adapter: str | None, paths: tuple[str, ...]) -> tuple[str, ...]:
    """What the engine itself says, computed here, independently of the GUI and its worker."""
    from finetune_app.core import adapters
    from finetune_app.core.data.images import load_image
    from finetune_app.core.data.sample import ImageRef
    from finetune_app.core.generate import GenerationSettings, generate
    from finetune_app.core.models import load_base

    base = load_base(model)
    if adapter:
        adapters.load_into(base, adapter)
    settings = GenerationSettings(max_tokens=MAX_TOKENS)
    return tuple(generate(base, PROMPT, [load_image(ImageRef(path=Path(p)))], settings=settings) for p in paths)


@pytest.fixture
def window(app_env, qtbot):
    from finetune_app.ui.extras import attach_extras
    from finetune_app.ui.main_window import MainWindow

    w = MainWindow()  # closed below, once no run is left (qtbot's own close would ask about a live run)
    extras = attach_extras(w)
    extras.caption_panel.max_tokens.setValue(MAX_TOKENS)
    w.resize(1200, 800)
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


def drop(widget, mime: QMimeData) -> bool:
    """What a drag ending on `widget` delivers: DragEnter (must be accepted), then Drop."""
    app = QApplication.instance()
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    app.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    app.sendEvent(widget, event)
    return event.isAccepted()


def file_mime(*paths) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def images_of(data: Path, n: int, start: int = 0) -> list[Path]:
    return sorted((Path(data) / "images").glob("*.png"))[start:start + n]


# ---- tests --------------------------------------------------------------------------------------

def test_drop_files_on_window_gives_base_and_adapter_captions(window, qtbot, trained, tmp_path):
    model, data, run_dir, _ = trained
    extras = window.extras
    panel = extras.caption_panel
    statuses: list[tuple[str, str]] = []
    extras.service.status.connect(lambda jid, side, text: statuses.append((side, text)))
    assert panel.picker.add_folder(run_dir), panel.message.text.text()
    assert str(model) in panel.base_label.text() or Path(model).name in panel.base_label.text()

    pictures = images_of(data, 3)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    assert drop(window, file_mime(*pictures, notes))

    # the window switched to the caption panel; the non-image got a message, not a card
    assert window.tabs.currentWidget() is panel
    assert len(panel.cards) == 3
    assert panel.message.isVisible() and "notes.txt is not an image" in panel.message.text.text()
    assert panel.cards[2].sides["base"].state.text() == "queued (2 ahead)"

    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=90000)
    from finetune_app.core.training import checkpoint as ckpt

    latest = ckpt.latest_valid(run_dir)[0]
    label = f"checkpoint step {int(latest.name.split('-')[1])}"  # step 4 (longer in screenshot mode)
    from finetune_app.ui.widgets import breakable, clean_output  # control tokens are not shown

    base_expected = [clean_output(c) for c in engine_captions(str(model), None, tuple(map(str, pictures)))]
    tuned_expected = [clean_output(c) for c in engine_captions(str(model), str(latest), tuple(map(str, pictures)))]
    for card, base, tuned in zip(panel.cards, base_expected, tuned_expected, strict=True):
        b, t = card.sides["base"], card.sides["tuned"]
        assert not b.error and not t.error, (b.error, t.error)
        assert b.text == base, "the base caption is the engine's own"
        assert t.text == tuned, "the fine-tuned caption is the engine's own output for base + adapter"
        assert t.label == label
        assert b.body.text() == (breakable(base) or "(no text)") and t.body.text() == (breakable(tuned) or "(no text)")
    assert base_expected != tuned_expected, "the adapter changes what the model says"
    assert ("base", "loading base model…") in statuses
    assert ("tuned", f"loading {label}…") in statuses
    assert sum(1 for s in statuses if s[1] == "loading base model…") == 1, "models are loaded once, then reused"

    # copy and save
    text = panel.copy_results()
    assert QGuiApplication.clipboard().text() == text and tuned_expected[0] in text
    panel.save(tmp_path / "captions.csv")
    rows = list(csv.DictReader((tmp_path / "captions.csv").open(encoding="utf-8")))
    assert [r["tuned"] for r in rows] == list(tuned_expected)
    assert [r["base"] for r in rows] == list(base_expected)
    panel.save(tmp_path / "captions.json")
    saved = json.loads((tmp_path / "captions.json").read_text(encoding="utf-8"))
    assert [r["tuned_model"] for r in saved] == [label] * 3
    assert saved[0]["image"] == str(pictures[0].resolve())

    if SHOT_DIR:
        panel.clear()
        more = images_of(data, 3, start=len(images_of(data, 10_000)) - 3)  # validation pictures
        assert drop(panel, file_mime(*more, notes))
        qtbot.waitUntil(lambda: not panel.is_busy(), timeout=90000)
        window.resize(1180, 760)
        qtbot.wait(200)
        assert window.grab().save(str(Path(SHOT_DIR) / "caption-drop.png"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (what a huge photo's header says), no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def test_bad_drops_get_messages_not_crashes(window, qtbot, trained, tmp_path):
    model, data, run_dir, _ = trained
    panel = window.extras.caption_panel
    panel.picker.add_folder(run_dir)
    window.extras.show_captions()

    many = []
    for i in range(51):
        p = tmp_path / f"many-{i}.png"
        p.write_bytes(b"x")
        many.append(p)
    assert drop(panel, file_mime(*many))
    assert not panel.cards and "51 files were dropped" in panel.message.text.text()

    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(20000, 20000))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert drop(panel, file_mime(huge, folder))
    message = panel.message.text.text()
    assert not panel.cards
    assert "huge.png is 20,000 × 20,000 pixels" in message and "megapixel limit" in message
    assert "a-folder is a folder" in message

    text = QMimeData()
    text.setText("just words")
    assert drop(panel, text)
    assert "Only pictures can be captioned" in panel.message.text.text()

    # a picture that is not one, and a link nobody answers: a message in the card
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    assert drop(panel, file_mime(broken))
    link = QMimeData()
    link.setUrls([QUrl("http://127.0.0.1:9/shape.png")])
    assert drop(window, link), "http links are accepted by the window"
    assert len(panel.cards) == 2
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60000)
    broken_card, link_card = panel.cards
    assert "not an image PIL can read" in broken_card.problem.text()
    assert "Cannot download http://127.0.0.1:9/shape.png" in link_card.problem.text()
    assert "drop the file instead" in link_card.problem.text()

    # the window's own drops (a dataset folder) are left to the window
    from finetune_app.ui.caption_panel import wants_drop

    assert not wants_drop(file_mime(data))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_link_and_image_data_during_training(window, qtbot, trained, tmp_path):
    """While a real run trains: a picture from a link and one dragged as raw image data, captioned
    by the base model and by the run's newest checkpoint; the run goes on to the end."""
    from finetune_app.ui.workers import TrainingRun

    model, data, _, base_cfg = trained
    w = window
    panel = w.extras.caption_panel
    assert panel.picker.uses_current_run()
    cfg = base_cfg.replace(output=str(tmp_path / "live-run"), iters=2000, save_every=2, keep_checkpoints=100,
                           steps_per_eval=1000, data=str(base_cfg.data), batch_size=2)
    run = TrainingRun(cfg, parent=w)  # what MainWindow.start_training does once its checks pass
    w.run = run
    w.training.attach(run)
    run.start()
    qtbot.waitUntil(lambda: (Path(cfg.output) / "checkpoints").is_dir()
                    and any((Path(cfg.output) / "checkpoints").glob("step-*")), timeout=60000)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(data)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        first, second = images_of(data, 2, start=5)
        link = QMimeData()
        link.setUrls([QUrl(f"http://127.0.0.1:{server.server_address[1]}/images/{first.name}")])
        raw = QMimeData()
        raw.setImageData(QImage(str(second)))
        states_when_done = []
        w.extras.service.done.connect(lambda jid, side, text, label: states_when_done.append((side, w.training.state)))
        assert drop(w, link)
        assert drop(w, raw)
        assert len(panel.cards) == 2
        qtbot.waitUntil(lambda: not panel.is_busy(), timeout=90000)
    finally:
        server.shutdown()
        server.server_close()

    assert ("tuned", "started") in states_when_done or ("tuned", "resumed") in states_when_done, \
        f"captions arrived while the run trained: {states_when_done}"
    for card, picture in zip(panel.cards, (first, second), strict=True):
        t = card.sides["tuned"]
        assert not card.problem.text() and not t.error, (card.problem.text(), t.error)
        step = int(re.fullmatch(r"checkpoint step (\d+)", t.label).group(1))
        ckpt = Path(cfg.output) / "checkpoints" / f"step-{step:07d}"
        from finetune_app.ui.widgets import clean_output

        assert card.sides["base"].text == clean_output(engine_captions(str(model), None, (str(picture),))[0])
        assert t.text == clean_output(engine_captions(str(model), str(ckpt), (str(picture),))[0])
    assert panel.cards[1].image.data is not None and panel.cards[0].image.url.startswith("http://127.0.0.1")

    step = w.training.step
    qtbot.waitUntil(lambda: w.training.step >= step + 3, timeout=60000)
    assert w.training.state in ("started", "resumed"), "the run goes on, undisturbed"
    w.training.stop(save=False)
    qtbot.waitUntil(lambda: not w.training.is_running(), timeout=60000)
