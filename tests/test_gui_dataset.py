"""The dataset browser: a 10,000-row grid that parses and decodes only what is on screen, problems
that jump to their row, the conversation view for text data, split sizes, and drops on the window.

Real files only: datasets are written to disk and opened through the engine's own reader and
validator; thumbnails are decoded from real PNGs on the loader's thread pool.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

pytestmark = pytest.mark.gui

N_ROWS = 10_000


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from finetune_app.core.data.demo import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("d") / "shapes", n_train=24, n_valid=6, size=64, seed=1)


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory, shapes):
    """10,000 caption rows over 30 real pictures (distinct captions, so no duplicates)."""
    root = tmp_path_factory.mktemp("big") / "big"
    shutil.copytree(shapes / "images", root / "images")
    names = sorted(p.name for p in (root / "images").iterdir())
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "caption"])
        for i in range(N_ROWS):
            w.writerow([names[i % len(names)], f"picture number {i}"])
    return root


@pytest.fixture
def broken(tmp_path, shapes):
    """The demo set with one picture missing (line 5) and one empty caption (the last line)."""
    root = tmp_path / "broken"
    shutil.copytree(shapes, root)
    (root / "images" / "00003.png").unlink()
    with open(root / "captions.csv", "a", encoding="utf-8") as fh:
        fh.write("00001.png,,train\n")
    return root



def open_and_wait(browser, path, qtbot, timeout=60000):
    browser.open_path(str(path))
    qtbot.waitUntil(lambda: browser.check is not None and not browser.is_busy(), timeout=timeout)
    QApplication.processEvents()


def visible_rows(view) -> tuple[int, int]:
    vp = view.viewport().rect()
    first = view.indexAt(vp.topLeft() + QPoint(8, 8)).row()
    last = view.indexAt(vp.bottomRight() - QPoint(8, 8)).row()
    if last < 0:  # the last cell of the last line may be empty space
        last = max(view.indexAt(QPoint(x, vp.bottom() - 8)).row() for x in range(8, vp.width(), 20))
    return first, last


def test_ten_thousand_rows_parse_and_decode_only_what_is_shown(browser, big_dataset, qtbot):
    open_and_wait(browser, big_dataset, qtbot)
    model, grid = browser.model, browser.grid
    assert model.rowCount() == N_ROWS
    assert browser.check.report.rows_usable == N_ROWS
    assert browser.stack.currentWidget() is grid

    # only the rows on screen were asked for, and their pictures arrive from the thread pool
    qtbot.waitUntil(lambda: visible_rows(grid)[1] > 0, timeout=10000)
    first, last = visible_rows(grid)
    on_screen = last - first + 1
    assert 10 <= on_screen < 200
    assert model.requested_rows, "the view asked for the rows it shows"
    assert max(model.requested_rows) <= last + on_screen, sorted(model.requested_rows)[-5:]
    assert len(model.requested_rows) < 3 * on_screen
    qtbot.waitUntil(lambda: all(model.thumbnail_cached(r) for r in range(first, last + 1)), timeout=20000)
    assert model.loader.decoded < 3 * on_screen, "pictures off screen were not decoded"
    assert model.loader.pool.maxThreadCount() >= 1

    # scroll through the whole grid: only rows that were on screen (give or take a page) are
    # decoded, and the last page is asked for once it is shown
    shown = [(first, last)]
    bar = grid.verticalScrollBar()
    for k in range(1, 21):
        bar.setValue(bar.maximum() * k // 20)
        qtbot.waitUntil(lambda: visible_rows(grid)[0] >= 0, timeout=10000)
        QApplication.processEvents()
        shown.append(visible_rows(grid))
    model.requested_rows.clear()
    grid.scrollToBottom()
    qtbot.waitUntil(lambda: N_ROWS - 1 in model.requested_rows, timeout=20000)
    first, last = visible_rows(grid)
    shown.append((first, last))
    assert last == N_ROWS - 1
    assert min(model.requested_rows) >= first - (last - first + 1)
    qtbot.waitUntil(lambda: model.thumbnail_cached(N_ROWS - 1), timeout=20000)
    assert len(model._samples) <= model.SAMPLE_CACHE
    page = max(b - a + 1 for a, b in shown)
    generation = f"{model._generation}:"
    decoded = sorted(int(k.partition(":")[2]) for k in model.loader.decoded_keys if k.startswith(generation))
    off_screen = [r for r in decoded if not any(a - page <= r <= b + page for a, b in shown)]
    assert decoded and not off_screen, f"decoded rows never near the screen: {off_screen[:10]} (shown {shown})"

    # the caption under a thumbnail is the row's caption
    idx = model.index(N_ROWS - 1)
    assert model.data(idx) == f"picture number {N_ROWS - 1}"


def test_problems_are_listed_and_jump_to_their_row(browser, broken, qtbot):
    open_and_wait(browser, broken, qtbot)
    report = browser.check.report
    assert report.rows_found == 31 and report.rows_usable == 29
    items = [browser.problems.item(i) for i in range(browser.problems.count())]
    texts = [i.text() for i in items]
    assert any("line 5" in t and "image not found" in t for t in texts), texts
    assert any("line 32" in t and "empty" in t for t in texts), texts
    assert "will be skipped" in browser.counts.text()

    missing = next(i for i in items if "line 5" in i.text())
    browser.problems.itemClicked.emit(missing)
    assert browser.grid.currentIndex().row() == 3  # line 5 of the CSV is the fourth row
    assert "line 5" in browser.details.text() and "image not found" in browser.details.text()
    assert browser.model.data(browser.model.index(3)).startswith("⚠")
    empty = next(i for i in items if "line 32" in i.text())
    browser.problems.itemClicked.emit(empty)
    assert browser.grid.currentIndex().row() == 30
    # the dataset's own split, counted over usable rows only
    assert "Training</b> 23" in browser.splits.text() and "Validation</b> 6" in browser.splits.text()
    assert "own split" in browser.splits.text()


def test_text_dataset_shows_conversations_histogram_and_split(browser, tmp_path, qtbot):
    import json

    rows = [{"instruction": f"Say the number {i} in words.", "input": "", "output": f"number {i}" * (1 + i % 5)}
            for i in range(60)]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    open_and_wait(browser, path, qtbot)
    assert browser.stack.currentIndex() == 2, "text rows get the conversation view"
    browser.select_row(7)
    html = browser.conversation.toHtml()
    assert "Say the number 7 in words." in html and "Assistant" in html
    # no model chosen: the histogram is a labelled estimate
    assert "rough estimate" in browser.histogram.plotItem.titleLabel.text
    assert "characters ÷ 4" in browser.histogram_note.text()
    assert browser._bars is not None
    # no own split: a held-out share that follows the settings
    assert "10% held out" in browser.splits.text()
    before = len(browser.valid_rows)
    browser.set_split_params(0.5, 0)
    assert "50% held out" in browser.splits.text()
    assert len(browser.valid_rows) > before and len(browser.train_rows) + len(browser.valid_rows) == 60


def test_the_token_histogram_paints_only_when_its_data_is_in_place(browser, shapes, qtbot, monkeypatch):
    """#18: the histogram paints nothing while empty (opening a dataset painted the empty axes) and
    only at its final size (before: the bars, then again after the note's relayout); a recount's
    progress bar does not resize it."""
    import pyqtgraph as pg

    painted = []  # (bars drawn, max-length line drawn, size) at each full paint
    real = pg.GraphicsView.paintEvent

    def record(view, event):
        if view is browser.histogram:
            painted.append((browser._bars is not None, browser._max_line is not None, view.size()))
        return real(view, event)

    monkeypatch.setattr(pg.GraphicsView, "paintEvent", record)
    open_and_wait(browser, shapes, qtbot)
    qtbot.wait(300)
    final = browser.histogram.size()
    assert painted and painted[0] == (True, False, final)
    assert all(p == (True, False, final) for p in painted)
    painted.clear()
    browser.set_max_length(20)  # the max-length line and a new note
    qtbot.wait(300)
    assert painted and all(p == (True, True, browser.histogram.size()) for p in painted)
    size = browser.histogram.size()
    browser.check_progress.show()  # as a recount with the model's tokenizer shows it
    QApplication.processEvents()
    assert browser.histogram.size() == size


def test_unreadable_dataset_shows_the_engine_message(browser, tmp_path, qtbot):
    bad = tmp_path / "nothing.jsonl"
    bad.write_text("this is not json\n", encoding="utf-8")
    failures = []
    browser.failed.connect(failures.append)
    browser.open_path(str(bad))
    qtbot.waitUntil(lambda: bool(failures), timeout=30000)
    assert browser.error.isVisible()
    assert "nothing.jsonl" in browser.error.text.text()
    assert "Traceback" not in browser.error.text.text()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # QDragEnterEvent's QPoint constructor
def test_dropping_a_folder_on_the_window_opens_it(app_env, qtbot, shapes):
    from finetune_app.ui.main_window import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(shapes))])
    pos = QPointF(w.width() / 2, w.height() / 2)
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(w, enter)
    assert enter.isAccepted()
    drop = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(w, drop)
    qtbot.waitUntil(lambda: w.dataset_check is not None, timeout=30000)
    assert Path(str(w.dataset_check.dataset.path)) == shapes
    assert w.tabs.currentIndex() == 0
    assert "30 usable rows" in w.status_data.text()
    from finetune_app.ui.main_window import recent_datasets

    assert recent_datasets()[0] == str(shapes)


def test_flagged_rows_are_fixed_in_the_row_editor_and_lose_their_flag(browser, broken, qtbot, monkeypatch):
    """A missing picture (re-picked with Choose…) and an empty caption (typed), each saved into
    captions.csv atomically with every other line kept byte for byte; the re-check clears the flags."""
    from PySide6.QtWidgets import QDialogButtonBox, QFileDialog

    open_and_wait(browser, broken, qtbot)
    before = (broken / "captions.csv").read_bytes().splitlines(keepends=True)
    items = [browser.problems.item(i) for i in range(browser.problems.count())]
    browser.problems.itemClicked.emit(next(i for i in items if "line 5" in i.text()))
    assert browser.current_row() == 3 and browser.edit_button.isEnabled()
    editor = browser.edit_row(modal=False)
    assert "image not found" in editor.problem.text() and editor.image.text() == "00003.png"
    assert editor.preview.text() == "no picture"
    # a picture outside the dataset folder is refused with the reason
    outside = broken.parent / "elsewhere.png"
    shutil.copy(broken / "images" / "00002.png", outside)
    assert not editor.set_picture(outside) and "outside the dataset folder" in editor.banner.text.text()
    # Choose… inside it: written as the other rows name theirs (relative to images/), previewed
    shutil.copy(broken / "images" / "00002.png", broken / "images" / "00003b.png")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(broken / "images" / "00003b.png"), ""))
    editor.findChild(type(browser.edit_button), "rowEditorChoose").click()
    assert editor.image.text() == "00003b.png" and editor.preview.pixmap() is not None
    assert editor.preview.text() == ""
    editor.caption.setPlainText(editor.caption.toPlainText() + " again")
    editor.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Save).click()
    qtbot.waitUntil(lambda: browser.check is not None and not browser.is_busy(), timeout=60000)
    after = (broken / "captions.csv").read_bytes().splitlines(keepends=True)
    assert after[:4] == before[:4] and after[5:] == before[5:]
    assert after[4].decode().startswith("00003b.png,") and " again," in after[4].decode()
    texts = [browser.problems.item(i).text() for i in range(browser.problems.count())]
    assert not any("line 5" in t for t in texts) and any("line 32" in t for t in texts), texts
    assert browser.current_row() == 3 and "⚠" not in browser.details.text()
    assert not browser.model.data(browser.model.index(3)).startswith("⚠")

    # the empty caption: refused until written, then the dataset has no problems left
    editor = browser.edit_row(30, modal=False)
    assert "empty" in editor.problem.text() and editor.caption.toPlainText() == ""
    assert editor.save() is None and "caption is empty" in editor.banner.title.text().lower()
    editor.caption.setPlainText("a red circle,\n  with a comma")
    assert editor.save() is not None
    qtbot.waitUntil(lambda: browser.check is not None and not browser.is_busy(), timeout=60000)
    assert browser.check.report.rows_usable == 31 and not browser.check.report.errors
    assert browser.problems.item(0).text().startswith("No problems")
    assert (broken / "captions.csv").read_bytes().splitlines()[-1] == b'00001.png,"a red circle, with a comma",train'
    assert not list(broken.glob("*.tmp*")) and not list(broken.glob(".*tmp*"))


def test_row_editor_rewrites_one_jsonl_line(tmp_path, shapes):
    from finetune_app.core.data import open_dataset
    from finetune_app.ui.row_editor import row_fields, save_row

    root = tmp_path / "j"
    shutil.copytree(shapes / "images", root / "images")
    lines = ['{"image": "images/00000.png", "caption": "one"}', '{"image": "images/00001.png", "caption": ""}',
             '{"image": "images/00002.png", "caption": "thrée", "id": 7}']
    (root / "data.jsonl").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    ds = open_dataset(root / "data.jsonl")
    fields = row_fields(ds, 1)
    assert (fields.kind, fields.line, fields.image_key, fields.text_key, fields.caption) == ("jsonl", 2, "image", "caption", "")
    save_row(fields, image="images/00001.png", caption="  two  ")
    out = (root / "data.jsonl").read_bytes().split(b"\r\n")
    assert out[0].decode() == lines[0] and out[2].decode() == lines[2] and out[3] == b""
    assert out[1].decode() == '{"image": "images/00001.png", "caption": "two"}'
    assert [s.answer for s in open_dataset(root / "data.jsonl").samples()] == ["one", "two", "thrée"]
