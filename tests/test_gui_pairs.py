"""The dataset browser shows preference rows as pairs: prompt (with the picture of a VLM row),
chosen and rejected side by side; rows whose answers are the same, or whose answers do not share
the prompt, are flagged with their file, line and field and how to fix them (issue 17)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("PySide6")

from PySide6.QtWidgets import QApplication  # noqa: E402

from finetune_app.testing.preference_tasks import SHAPES_PROMPT, make_shapes_preferences  # noqa: E402

pytestmark = pytest.mark.gui



def test_pairs_side_by_side_and_bad_pairs_located(browser, qtbot, tmp_path):
    folder = make_shapes_preferences(tmp_path / "pairs", n_train=4, n_valid=2, size=32)
    first = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    bad = [{"images": first["images"], "prompt": SHAPES_PROMPT, "chosen": "a red star", "rejected": "a red star"},
           {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
            "rejected": [{"role": "user", "content": "R"}, {"role": "assistant", "content": "B"}]}]
    with open(folder / "train.jsonl", "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in bad))  # lines 5 and 6
    browser.open_path(str(folder))
    qtbot.waitUntil(lambda: browser.check is not None and not browser.is_busy(), timeout=60000)
    QApplication.processEvents()
    assert browser.current_view() is browser.pair_list and browser.pair_view.isVisible()

    row = next(r for r in range(browser.model.rowCount())
               if browser.model.index(r).data(browser.model.SampleRole) is not None
               and browser.model.index(r).data(browser.model.SampleRole).rejected.text == first["rejected"])
    browser.select_row(row)
    shown = browser.pair_view.texts()
    assert SHAPES_PROMPT in shown["prompt"] and "[1 image]" in shown["prompt"]
    assert shown["chosen"] == first["chosen"] and shown["rejected"] == first["rejected"]
    assert browser.pair_view.image.isVisible() and not browser.pair_view.image.pixmap().isNull()
    assert browser.pair_view.image.pixmap().width() <= 160
    assert not browser.pair_view.problem.isVisible()
    assert "✓ " + first["chosen"] in browser.model.index(row).data() and "✗ " + first["rejected"] in browser.model.index(row).data()

    problems = [browser.problems.item(i) for i in range(browser.problems.count())]
    same = [p for p in problems if "same answer" in p.text()]
    apart = [p for p in problems if "do not share the prompt" in p.text()]
    assert len(same) == 1 and same[0].text().startswith("train.jsonl line 5 [rejected]: ")
    assert "Write a worse answer in 'rejected'" in same[0].text()
    assert len(apart) == 1 and apart[0].text().startswith("train.jsonl line 6 [rejected]: ")
    assert "Make the earlier messages of both the same" in apart[0].text()

    for item, raw in ((same[0], bad[0]), (apart[0], bad[1])):  # clicking a problem shows its pair
        browser.problems.itemClicked.emit(item)
        QApplication.processEvents()
        shown = browser.pair_view.texts()
        assert browser.pair_view.problem.isVisible()
        assert browser.pair_view.problem.text() == "⚠ " + item.text()
        assert json.loads(shown["chosen"]) == raw["chosen"] if isinstance(raw["chosen"], list) else shown["chosen"] == raw["chosen"]
        assert ("R" in shown["rejected"]) if isinstance(raw["rejected"], list) else shown["rejected"] == raw["rejected"]
    assert browser.check.report.rows_usable == 6


def test_a_text_pair_dataset_has_no_picture(browser, qtbot, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi", "chosen": "hi", "rejected": "go away", "system": "Be kind."}) + "\n")
    browser.open_path(str(path))
    qtbot.waitUntil(lambda: browser.check is not None and not browser.is_busy(), timeout=30000)
    QApplication.processEvents()
    browser.select_row(0)
    shown = browser.pair_view.texts()
    assert "System" in shown["prompt"] and "Be kind." in shown["prompt"] and "Say hi" in shown["prompt"]
    assert (shown["chosen"], shown["rejected"]) == ("hi", "go away")
    assert not browser.pair_view.image.isVisible()
    assert browser.problems.item(0).text() == "No problems: every row can be used."
