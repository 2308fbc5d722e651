"""Evaluation during training (issue 19): scores of greedy generations at each evaluation, in
metrics.jsonl, the trackers, the run history and the live plot; the best checkpoint chosen by a
score is kept through rotation and named in the run folder (best_checkpoint.json), also after a
resume; the settings are checked."""

from __future__ import annotations

import json

import pytest

from finetune_app.core import run_folder, scoring
from finetune_app.core.config import TrainConfig
from finetune_app.core.training import checkpoint as ckpt
from finetune_app.core.training.events import EvalReport, MetricsLog, SampleItem, SampleReport

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
METRICS = ["accuracy", "chrf", "rouge_l", "exact_match", "bleu"]


@pytest.fixture(scope="module")
def label_data(tmp_path_factory):
    """Alpaca rows whose answers are "a {colour} {shape}" (so label accuracy has two slots)."""
    dest = tmp_path_factory.mktemp("labels")
    for name, n, offset in (("train", 24, 0), ("valid", 6, 7)):
        rows = [{"instruction": f"Describe item {i + offset}.", "input": "",
                 "output": f"a {COLOURS[(i + offset) % 4]} {SHAPES[(i + offset) % 3]}"} for i in range(n)]
        (dest / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


@pytest.fixture(scope="module")
def scored_run(tiny_model, label_data, tmp_path_factory):
    from finetune_app.core.runs import RunRecorder
    from finetune_app.core.training.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("scored") / "run"
    db = tmp_path_factory.mktemp("db") / "runs.sqlite"
    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(label_data), output=str(run_dir), iters=4,
                      batch_size=2, lora_rank=4, learning_rate=1e-2, steps_per_report=1, steps_per_eval=2,
                      save_every=2, keep_checkpoints=1, sample_count=2, sample_max_tokens=6, seed=0,
                      eval_metrics=METRICS, eval_samples=4, best_by="chrf")
    events = []
    recorder = RunRecorder(cfg, path=db)
    result = Trainer(cfg, listeners=[events.append, recorder]).run()
    assert result.status == "finished"
    return run_dir, cfg, events, db


def test_hook_scores_equal_the_libraries_on_the_same_outputs(scored_run):
    from rouge_score import rouge_scorer
    from sacrebleu import corpus_bleu, corpus_chrf

    run_dir, cfg, events, _ = scored_run
    rows = [r for r in MetricsLog.read(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in rows] == [2, 4]
    sent = [e for e in events if isinstance(e, EvalReport)]
    assert [e.metrics for e in sent] == [r["metrics"] for r in rows]
    # the sample captions are the first scored rows (generated once per evaluation, reused)
    samples = [e for e in events if isinstance(e, SampleReport)]
    assert [s.items for s in samples] == [e.items[:2] for e in sent]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for row in rows:
        outs = [i["output"] for i in row["items"]]
        refs = [i["reference"] for i in row["items"]]
        assert row["n"] == len(outs) == cfg.eval_samples
        assert refs == [json.loads(line)["output"] for line in (cfg_valid(cfg)).read_text().splitlines()[:4]]
        m = row["metrics"]
        assert m["chrf"] == pytest.approx(corpus_chrf(outs, [refs]).score)
        assert m["bleu"] == pytest.approx(corpus_bleu(outs, [refs]).score)
        assert m["rouge_l"] == pytest.approx(sum(scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outs, refs)) / 4)
        assert m["exact_match"] == pytest.approx(sum(o.strip() == r.strip() for o, r in zip(outs, refs)) / 4)
        acc = scoring.label_accuracy(outs, refs, scoring.label_slots(_all_answers(cfg)))
        assert {"accuracy": acc["all"], "accuracy/colour": acc["colour"], "accuracy/shape": acc["shape"]}.items() <= m.items()
        # core/scoring.py on the same outputs gives the same numbers
        assert scoring.metric_values(METRICS, outs, refs, scoring.label_slots(_all_answers(cfg))) == m


def cfg_valid(cfg):
    from pathlib import Path

    return Path(cfg.data) / "valid.jsonl"


def _all_answers(cfg):
    from pathlib import Path

    return [json.loads(line)["output"] for name in ("train", "valid")
            for line in (Path(cfg.data) / f"{name}.jsonl").read_text().splitlines()]


def test_best_checkpoint_by_the_score_is_kept_and_marked(scored_run):
    run_dir, cfg, _, _ = scored_run
    rows = [r for r in MetricsLog.read(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    best_value = max(r["metrics"]["chrf"] for r in rows)
    best_step = next(r["step"] for r in rows if r["metrics"]["chrf"] == best_value)  # earliest on ties
    mark = run_folder.read_best(run_dir)
    assert mark == {"checkpoint": f"checkpoints/step-{best_step:07d}", "step": best_step, "by": "chrf",
                    "value": pytest.approx(best_value)}
    kept = [p.name for p in ckpt.list_checkpoints(run_dir)]
    assert kept == sorted({f"step-{best_step:07d}", "step-0000004"})  # keep_checkpoints=1, plus the best
    assert run_folder.best_checkpoint_dir(run_dir) == run_folder.checkpoint_dir(run_dir, best_step)
    state = ckpt.read_state(run_folder.checkpoint_dir(run_dir, 4))
    assert state.metrics_step == 4 and state.val_metrics == rows[-1]["metrics"]
    assert run_folder.BEST_FILE in run_folder.read_manifest(run_dir)["files"]


def test_export_picks_the_best_checkpoint(scored_run, tmp_path, capsys):
    from finetune_app.cli import main

    run_dir, _, _, _ = scored_run
    out = tmp_path / "best-adapter"
    assert main(["export", "--adapter", str(run_dir), "--checkpoint", "best", "--target", "adapter",
                 "--output", str(out), "--no-verify"]) == 0
    best = run_folder.best_checkpoint_dir(run_dir)
    assert (out / "adapters.safetensors").read_bytes() == (best / "adapters.safetensors").read_bytes()
    assert main(["export", "--adapter", str(run_dir), "--checkpoint", "99", "--target", "adapter",
                 "--output", str(tmp_path / "x")]) == 5
    kept = ", ".join(str(run_folder.checkpoint_step(p)) for p in ckpt.list_checkpoints(run_dir))
    printed = capsys.readouterr()
    assert f"has no checkpoint '99' (it has {kept})" in printed.out + printed.err


def test_export_wizard_offers_the_best_checkpoint(scored_run, qapp):
    from finetune_app.ui.export_wizard import ExportWizard

    run_dir, _, _, _ = scored_run
    wizard = ExportWizard(adapter=str(run_dir))
    box = wizard.source.checkpoint_box
    texts = [box.itemText(i) for i in range(box.count())]
    best = run_folder.read_best(run_dir)
    assert texts[0] == "The run's final adapter" and wizard.options().adapter == str(run_dir)
    assert texts[1].startswith(f"Best checkpoint: step {best['step']} (by chrf = ")
    assert texts[2] == "Latest checkpoint: step 4"
    box.setCurrentIndex(1)
    assert wizard.options().adapter == str(run_folder.checkpoint_dir(run_dir, best["step"]))
    wizard.source.refresh()  # the choice stays
    assert box.currentIndex() == 1


def test_scores_reach_the_run_history_and_trackers(scored_run):
    from finetune_app.core import trackers
    from finetune_app.core.run_records.store import RunStore

    run_dir, _, events, db = scored_run
    store = RunStore(db)
    got = store.query("SELECT step, data FROM metrics WHERE kind='eval' ORDER BY step")
    assert [r["step"] for r in got] == [2, 4]
    sent = [e for e in events if isinstance(e, EvalReport)]
    assert [json.loads(r["data"])["metrics"] for r in got] == [e.metrics for e in sent]
    assert trackers.scalars(sent[0]) == {f"eval/{k}": float(v) for k, v in sent[0].metrics.items()}


def test_rotation_keeps_the_best_by_score_not_by_loss(tmp_path):
    """Three checkpoints: the best chrF at step 1, the lowest loss at step 3; keep 1."""
    def make(step, loss, chrf):
        d = run_folder.checkpoint_dir(tmp_path, step)
        d.mkdir(parents=True)
        (d / run_folder.STATE_FILE).write_text(json.dumps(
            {"step": step, "val_loss": loss, "val_step": step, "val_metrics": {"chrf": chrf}, "metrics_step": step}))

    for step, loss, chrf in ((1, 2.0, 50.0), (2, 1.5, 10.0), (3, 1.0, 20.0), (4, 1.2, 5.0)):
        make(step, loss, chrf)
    assert ckpt.best_checkpoint(tmp_path, "chrf").name == "step-0000001"
    assert ckpt.best_checkpoint(tmp_path, "val_loss").name == "step-0000003"
    ckpt.rotate(tmp_path / "checkpoints", 1, "chrf")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000001", "step-0000004"]


def test_resume_keeps_the_scores_and_the_mark(scored_run, tmp_path):
    import shutil

    from finetune_app.core.training.trainer import Trainer

    run_dir, cfg, _, _ = scored_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".run.lock"))
    more = cfg.replace(output=str(copy), iters=6)
    events = []
    assert Trainer(more, resume=True, listeners=[events.append]).run().status == "finished"
    rows = [r for r in MetricsLog.read(copy / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in rows] == [2, 4, 6]
    best_value = max(r["metrics"]["chrf"] for r in rows)
    best_step = next(r["step"] for r in rows if r["metrics"]["chrf"] == best_value)
    assert run_folder.read_best(copy)["step"] == best_step
    assert (run_folder.checkpoint_dir(copy, best_step)).is_dir()
    # best_by may change on resume: the mark follows it (the lowest loss among the checkpoints kept)
    more = more.replace(iters=7, best_by="val_loss")
    assert Trainer(more, resume=True).run().status == "finished"
    losses = {run_folder.checkpoint_step(c): ckpt.checkpoint_val_loss(c) for c in ckpt.list_checkpoints(copy)}
    mark = run_folder.read_best(copy)
    assert mark["by"] == "val_loss" and mark["value"] == min(v for v in losses.values() if v is not None)
    assert losses[mark["step"]] == mark["value"]


def test_settings_are_checked_and_generated():
    from finetune_app.core.config import setting_of

    assert TrainConfig().eval_metrics is None and TrainConfig().best_by == "val_loss"
    bad = TrainConfig(eval_metrics=["chrf", "meteor"], eval_samples=0, best_by="rouge_l").problems()
    assert set(bad) == {"eval_metrics", "eval_samples", "best_by"}
    assert "val_loss or one of the scores in eval_metrics" in bad["best_by"]
    assert not TrainConfig(eval_metrics=["rouge_l"], best_by="rouge_l").problems()
    assert setting_of("eval_metrics").flag == "--eval-metrics" and setting_of("best_by").flag == "--best-by"
    assert ("val_loss", "val_loss") in setting_of("best_by").choices
    cfg = TrainConfig(eval_metrics=["chrf"], best_by="chrf")
    assert "eval_metrics = [\"chrf\"]" in cfg.to_toml() and 'best_by = "chrf"' in cfg.to_toml()


def test_the_training_view_plots_the_score_curves(qapp, tmp_path):
    from finetune_app.ui.training_view import TrainingView

    view = TrainingView()
    view.resize(1200, 800)
    items = (SampleItem(index=0, prompt="p", reference="a red circle", output="a red square"),)
    view.on_eval(EvalReport(step=2, metrics={"chrf": 40.0, "accuracy": 0.5}, n=1, seconds=0.1, items=items))
    view.on_eval(EvalReport(step=4, metrics={"chrf": 60.0, "accuracy": 1.0}, n=1, seconds=0.1, items=items))
    view._redraw()
    assert not view.score_plot.isHidden()
    x, y = view.score_curves["chrf"].getData()
    assert list(x) == [2, 4] and list(y) == pytest.approx([0.4, 0.6])  # chrF on 0-1 (legend: chrf / 100)
    x, y = view.score_curves["accuracy"].getData()
    assert list(y) == [0.5, 1.0]
    # a resumed run draws the scores of its metrics.jsonl, and drops those after the resumed step
    from finetune_app.core.training.events import TrainReport

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        log(TrainReport(step=step, total_steps=4, epoch=0, loss=1.0, learning_rate=1e-3, tokens_per_second=1,
                        examples_per_second=1, peak_memory_gb=0, active_memory_gb=0, step_time=0.1,
                        eta_seconds=0, trained_tokens=step))
        if step % 2 == 0:
            log(EvalReport(step=step, metrics={"rouge_l": step / 8}, n=1, seconds=0.1))
    fresh = TrainingView()
    fresh.load_history(tmp_path / "metrics.jsonl")
    assert list(fresh.score_curves["rouge_l"].getData()[1]) == [0.25, 0.5]
    fresh._add_train_point(3, 1.0, 1e-3)  # the resumed run repeats step 3: the later score goes
    fresh._dirty = True
    fresh._redraw()
    assert list(fresh.score_curves["rouge_l"].getData()[0]) == [2]
    view.reset_data()
    view._redraw()
    assert view.score_plot.isHidden() and not view.score_curves
