"""Base vs fine-tuned over a set, headless and in the GUI: outputs are the engine's own (checked
against core.generate with the base and with base + adapter loaded independently), scores are
core.scoring's, the CLI prints a table or JSON and saves CSV/JSON, plain picture folders work
unscored, and wrong folders get a readable error.
"""

from __future__ import annotations

import csv
import html
import json

import pytest

from finetune_app.core import scoring

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def trained(tiny_model, shapes_data, tmp_path_factory):
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    model = tiny_model("qwen2_vl")
    run_dir = tmp_path_factory.mktemp("compare-run") / "run"
    cfg = TrainConfig(model=str(model), data=str(shapes_data), output=str(run_dir), iters=4, batch_size=2,
                      learning_rate=2e-3, lora_rank=4, steps_per_report=1, steps_per_eval=100, save_every=2,
                      sample_count=0, seed=0)
    assert Trainer(cfg).run().status == "finished"
    return model, shapes_data, run_dir


def independent(model, adapter, items):
    from finetune_app.core import adapters
    from finetune_app.core.data.images import load_image
    from finetune_app.core.generate import GenerationSettings, generate_for_sample
    from finetune_app.core.models import load_base

    base = load_base(model)
    if adapter is not None:
        adapters.load_into(base, adapter)
    s = GenerationSettings(max_tokens=MAX_TOKENS)
    return [generate_for_sample(base, it.sample, [load_image(r) for r in it.images], settings=s) for it in items]


def test_compare_over_validation_split_is_the_engine_output(trained, tmp_path):
    from finetune_app.core.compare import items_from_data, run_compare, save_result
    from finetune_app.core.data import open_dataset, split, validate
    from finetune_app.core.generate import GenerationSettings

    model, data, run_dir = trained
    statuses = []
    result = run_compare(str(model), run_dir, data, limit=None, settings=GenerationSettings(max_tokens=MAX_TOKENS),
                         status=statuses.append)
    # the validation split the trainer used (the dataset's own here)
    report = validate(open_dataset(data), check_images=False)
    _, valid = split(report, valid_fraction=0.1, seed=0)
    assert [r.index for r in result.rows] == valid and len(valid) == 8
    items = items_from_data(data)
    assert [r.base for r in result.rows] == independent(model, None, items)
    assert [r.tuned for r in result.rows] == independent(model, run_dir / "checkpoints" / "step-0000004", items)
    assert result.tuned == "checkpoint step 4"
    assert statuses == ["loading base model…", "loading checkpoint step 4…"], "each model loaded once"
    for r in result.rows:
        assert r.reference and r.base_scores["rouge_l"] == scoring.rouge_l(r.base, r.reference)
        assert r.tuned_scores["exact_match"] == scoring.exact_match(r.tuned, r.reference)
        assert r.tuned_scores["bleu"] == scoring.bleu(r.tuned, r.reference)
    s = result.summary()
    assert s["tuned"] == scoring.agreement([r.tuned for r in result.rows], [r.reference for r in result.rows])
    assert s["rows"] == s["scored"] == 8 and result.verdict()

    save_result(result, tmp_path / "c.csv")
    rows = list(csv.DictReader((tmp_path / "c.csv").open(encoding="utf-8")))
    assert [r["tuned"] for r in rows] == [r.tuned for r in result.rows]
    save_result(result, tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert saved["summary"]["scored"] == 8 and len(saved["rows"]) == 8 and saved["verdict"] == result.verdict()
    save_result(result, tmp_path / "c.html")  # the evaluation report, from the comparison's outputs
    page = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert "ROUGE-L F1" in page and "Accuracy: colour" in page and "<svg" in page  # the run's loss curve
    assert f"{s['tuned']['rouge_l']:.4f}" in page


def test_cli_json_table_and_errors(trained, tmp_path, capsys):
    from finetune_app.cli.compare import main

    model, data, run_dir = trained
    assert main(["--model", str(model), "--adapter", str(run_dir), "--data", str(data), "--limit", "3",
                 "--max-tokens", str(MAX_TOKENS), "--json", "--save", str(tmp_path / "out.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["rows"]) == 3 and out["tuned"] == "checkpoint step 4" and out["summary"]["scored"] == 3
    assert (tmp_path / "out.csv").read_text(encoding="utf-8").startswith("index,label,image,prompt,reference,base,tuned")

    # the adapter folder alone: the base is the one it records; a plain table
    adapter = run_dir / "checkpoints" / "step-0000002"
    assert main(["--adapter", str(adapter), "--data", str(data), "--limit", "2", "--max-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert "Fine-tuned: checkpoint step 2" in text and "ROUGE-L" in text and "reference" in text

    # a plain folder of pictures: outputs side by side, nothing to score
    assert main(["--model", str(model), "--adapter", str(run_dir), "--data", str(data / "images"), "--limit", "2",
                 "--max-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["scored"] == 0 and len(out["rows"]) == 2 and out["verdict"].startswith("No references")
    assert all(r["prompt"] == "Describe this image." for r in out["rows"])

    # wrong folders: a readable message and the adapter exit code
    assert main(["--model", str(model), "--adapter", str(data), "--data", str(data)]) == 6
    assert "is not a run, adapter or exported model folder" in capsys.readouterr().err
    fresh = tmp_path / "fresh-run"
    fresh.mkdir()
    (fresh / "train_config.toml").write_text("save_every = 50\n")
    assert main(["--model", str(model), "--adapter", str(fresh), "--data", str(data)]) == 6
    assert "has no checkpoint yet (the first is written at step 50)" in capsys.readouterr().err


def test_exported_bundle_and_adapter_bypass_are_exact(trained, tmp_path):
    """An exported (fused) model folder works as the fine-tuned side; the shared-weights base
    (adapter layers bypassed) says exactly what a fresh base says, and the adapter stays attached."""
    from mlx.utils import tree_flatten

    from finetune_app.core.compare import ModelCache, TunedSource, items_from_data, run_compare
    from finetune_app.core.export.bundle_mlx import write_mlx_bundle
    from finetune_app.core.export.fuse import fuse_adapter
    from finetune_app.core.generate import GenerationSettings
    from finetune_app.core.models import load_base

    model, data, run_dir = trained
    fused = load_base(model)
    fuse_adapter(fused, run_dir)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_mlx_bundle(fused, fused.model, bundle, quantization=None)
    src = TunedSource.detect(bundle)
    assert src.kind == "bundle"

    result = run_compare(str(model), src, data, limit=2, settings=GenerationSettings(max_tokens=MAX_TOKENS))
    items = items_from_data(data, limit=2)
    assert [r.base for r in result.rows] == independent(model, None, items)
    assert [r.tuned for r in result.rows] == independent(bundle, None, items)
    assert result.tuned == "exported model bundle"

    # one cache, a newer checkpoint swapped in: each answer is the engine's own for that adapter
    from finetune_app.core.compare import _generate
    from finetune_app.core.data.images import load_image

    cache = ModelCache()
    item = items[0]
    images = [load_image(r) for r in item.images]
    settings = GenerationSettings(max_tokens=MAX_TOKENS)
    for folder in (run_dir / "checkpoints" / "step-0000002", run_dir):
        tuned, resolved = cache.tuned(str(model), TunedSource.detect(folder))
        text = _generate(tuned, item, images, settings, None, None, None)
        assert text == independent(model, resolved.path, [item])[0], resolved.label
        with cache.base(str(model)) as base:
            assert base is tuned, "one copy of the weights"
            assert not any("lora" in k for k, _ in tree_flatten(base.model.parameters()))
            assert _generate(base, item, images, settings, None, None, None) == result.rows[0].base
        assert any("lora_a" in k for k, _ in tree_flatten(tuned.model.parameters()))
    cache.clear()


def test_text_model_compare(tiny_model, instruction_data, tmp_path):
    """Text LLMs (mlx-lm adapters) compare the same way, on their prompts."""
    from finetune_app.core.compare import items_from_data, run_compare
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.generate import GenerationSettings
    from finetune_app.core.training.trainer import Trainer

    model = tiny_model("llama")
    run_dir = tmp_path / "text-run"
    cfg = TrainConfig(model=str(model), data=str(instruction_data), output=str(run_dir), iters=3, batch_size=2,
                      learning_rate=5e-3, lora_rank=4, steps_per_report=1, steps_per_eval=100, save_every=3,
                      sample_count=0, seed=0)
    assert Trainer(cfg).run().status == "finished"
    result = run_compare(str(model), run_dir, instruction_data, limit=2, settings=GenerationSettings(max_tokens=MAX_TOKENS))
    items = items_from_data(instruction_data, limit=2)
    assert not items[0].images and items[0].reference
    assert [r.base for r in result.rows] == independent(model, None, items)
    assert [r.tuned for r in result.rows] == independent(model, run_dir, items)
    assert result.summary()["scored"] == 2


def test_compare_view_fills_the_table(trained, qtbot, qapp, monkeypatch, tmp_path):
    pytest.importorskip("PySide6")
    monkeypatch.setenv("FINETUNE_SETTINGS_DIR", str(tmp_path / "settings"))
    from finetune_app.ui.caption_panel import InferenceService
    from finetune_app.ui.compare_view import COL_BASE, COL_REF, COL_TUNED, CompareView
    from finetune_app.ui.widgets import breakable, clean_output

    model, data, run_dir = trained
    service = InferenceService()
    view = CompareView(service, context_fn=lambda: {"model": str(model), "data": str(data)})
    qtbot.addWidget(view)
    try:
        view.max_tokens.setValue(MAX_TOKENS)
        view.limit.setValue(3)
        assert view.start() is None and "start a training run" in view.message.text.text()
        assert view.picker.add_folder(run_dir)
        assert view.start() is not None
        qtbot.waitUntil(lambda: not view.is_running(), timeout=90000)
        result = view.result
        assert result is not None and len(result.rows) == 3 and view.table.rowCount() == 3
        for i, row in enumerate(result.rows):
            assert view.table.item(i, COL_REF).text() == row.reference
            # shown as a person reads them: control tokens removed, long runs breakable
            assert view.table.item(i, COL_BASE).text() == breakable(clean_output(row.base))
            assert view.table.item(i, COL_TUNED).text() == breakable(clean_output(row.tuned))
        assert html.escape(result.verdict()) in view.summary.text()
        assert "Compared 3 items" in view.status.text()
        assert view.save(tmp_path / "v.json").is_file()
    finally:
        service.shutdown()


def test_compare_view_full_evaluation_progress_cancel_resume_and_report(trained, qtbot, qapp, monkeypatch, tmp_path):
    """The Compare tab's Full Evaluation: core.evaluation on its own thread with the tab's settings;
    Cancel stops between rows and keeps them (the next start resumes after them); the metrics table
    with perplexity, deltas and intervals; Open Report hands report.html to the desktop; a third
    start comes from the cache; a dataset without answers is a message, not a traceback."""
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QObject, Qt, Slot
    from PySide6.QtGui import QDesktopServices
    from PIL import Image

    from finetune_app.ui.caption_panel import InferenceService
    from finetune_app.ui.compare_view import CompareView

    monkeypatch.setenv("FINETUNE_SETTINGS_DIR", str(tmp_path / "settings"))
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "appdata"))
    model, data, run_dir = trained
    service = InferenceService()
    view = CompareView(service, context_fn=lambda: {"model": str(model), "data": str(data)})
    qtbot.addWidget(view)
    view.resamples = 50
    view.max_tokens.setValue(4)
    view.limit.setValue(4)
    assert view.picker.add_folder(run_dir)
    seen = []
    try:
        # 1. cancelled as soon as the first row is done (on the worker's thread: deterministic)
        worker = view.start_eval()
        assert worker is not None and not view.run_button.isEnabled() and view.start() is None
        worker.progressed.connect(lambda side, done, total: worker.cancel() if done >= 1 else None,
                                  Qt.ConnectionType.DirectConnection)
        qtbot.waitUntil(lambda: not view.is_evaluating(), timeout=90000)
        assert "cancelled" in view.status.text() and not view.message.isVisible()
        assert view.eval_result is None and not view.open_report.isEnabled() and view.run_button.isEnabled()
        partial = list((tmp_path / "appdata" / "eval-cache").glob("*.partial.json"))
        assert len(partial) == 1 and len(json.loads(partial[0].read_text())["rows"]) == 1

        # 2. again: resumes after the kept row, then the after side; the metrics show in the tab
        worker = view.start_eval()
        worker.progressed.connect(lambda *a: seen.append(a), Qt.ConnectionType.DirectConnection)
        qtbot.waitUntil(lambda: not view.is_evaluating(), timeout=90000)
        assert not view.message.isVisible(), view.message.text.text()
        assert seen[0] == ("before", 1, 4) and seen[-1] == ("after", 4, 4)
        assert [d for s, d, _ in seen if s == "before"] == [1, 2, 3, 4]
        assert not list((tmp_path / "appdata" / "eval-cache").glob("*.partial.json"))
        result = view.eval_result
        assert result["rows"] == 4 and result["settings"]["max_tokens"] == 4
        assert result["sides"]["after"]["label"].startswith("checkpoint step 4")
        assert view.report_path == run_dir / "eval" / "report.html" and view.report_path.is_file()
        assert (run_dir / "eval" / "eval.json").is_file()
        table = {view.eval_table.item(r, 0).text(): [view.eval_table.item(r, c).text() for c in range(1, 5)]
                 for r in range(view.eval_table.rowCount())}
        assert view.eval_table.isVisible() or view.eval_table.isVisibleTo(view)
        ppl = table["Perplexity (lower is better)"]
        b, a = result["metrics"]["before"]["perplexity"], result["metrics"]["after"]["perplexity"]
        assert ppl[0].startswith(f"{b:.4f}" if b < 10 else f"{b:.2f}") and "[" in ppl[0]
        assert ppl[1].startswith(f"{a:.4f}" if a < 10 else f"{a:.2f}")
        lo, hi = result["deltas"]["perplexity"]["ci95"]
        assert lo <= result["deltas"]["perplexity"]["delta"] <= hi and ppl[3].startswith("[")
        assert {"BLEU (sacreBLEU)", "ROUGE-L F1", "Accuracy: colour", "Accuracy: shape"} <= table.keys()

        # Open Report: report.html goes to the desktop's handler for file: URLs
        class Catch(QObject):
            urls = []

            @Slot("QUrl")
            def take(self, url):
                self.urls.append(url.toLocalFile())

        catch = Catch()
        QDesktopServices.setUrlHandler("file", catch, "take")
        try:
            assert view.open_report.isEnabled() and view.open_report_file()
        finally:
            QDesktopServices.unsetUrlHandler("file")
        assert catch.urls == [str(view.report_path)]

        # 3. re-opening is instant: both sides from the cache, the same numbers
        view.start_eval()
        qtbot.waitUntil(lambda: not view.is_evaluating(), timeout=30000)
        assert view.eval_result["sides"]["before"]["cached"] and view.eval_result["sides"]["after"]["cached"]
        assert view.eval_result["metrics"] == result["metrics"] and "from the cache" in view.status.text()

        # 4. pictures without captions cannot be scored: a message in the tab
        pics = tmp_path / "pics"
        pics.mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 100, 0, 0)).save(pics / f"p{i}.png")
        view.set_data(pics)
        view.start_eval()
        qtbot.waitUntil(lambda: not view.is_evaluating(), timeout=30000)
        assert view.message.isVisibleTo(view) and "no reference answers" in view.message.text.text()
        assert "Traceback" not in view.message.text.text() and view.eval_button.isEnabled()
    finally:
        view.shutdown_eval()
        service.shutdown()


def test_eval_eta_counts_only_this_sessions_rows():
    pytest.importorskip("PySide6")
    from finetune_app.ui.eval_worker import Eta

    eta = Eta()
    assert eta.update(10, 40, now=100.0) == ""  # resumed after 10 cached rows: no rate yet
    assert eta.update(10, 40, now=101.0) == ""
    assert eta.update(20, 40, now=105.0) == "about 10 s left"  # 10 rows in 5 s, 20 to go
    assert eta.update(30, 400, now=110.0) == "about 3 min left"  # 2 rows/s, 370 to go
