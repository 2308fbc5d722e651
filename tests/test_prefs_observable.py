"""Preference and reward runs are observable where SFT's loss is (issue 17): a DPO run's reward
accuracy (and margin, chosen/rejected log-probabilities) and a GRPO run's reward mean, spread and
KL appear as points in the Training screen's objective plot, in the run History (one run, and runs
compared), in TensorBoard, and on the CLI line, with the values of metrics.jsonl."""

from __future__ import annotations

import io
import json
import os

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from finetune_app.core.training import objective_metrics as om  # noqa: E402
from finetune_app.core.training.events import MetricsLog, ObjectiveReport, TrainReport  # noqa: E402
from finetune_app.testing.preference_tasks import make_format_preferences  # noqa: E402

pytestmark = pytest.mark.gui
STEPS = 4


def objective_rows(run_dir):
    return [r for r in MetricsLog.read(run_dir / "metrics.jsonl") if r.get("kind") in ("train", "objective")]


@pytest.fixture(scope="module")
def runs_db(tmp_path_factory, tiny_model):
    """A GRPO run (3 steps, an evaluation at the end) recorded in the run database of its own data folder."""
    from finetune_app.core import runs
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    root = tmp_path_factory.mktemp("observable")
    words = ["red", "blue", "green", "circle", "square", "star"]
    data = root / "grpo"
    data.mkdir()
    rows = [{"prompt": f"Describe the {a} {b}.", "answer": "any"} for a in words for b in words if a != b]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    (data / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:24]))
    old = os.environ.get("FINETUNE_DATA_DIR")
    os.environ["FINETUNE_DATA_DIR"] = str(root / "appdata")
    try:
        cfg = TrainConfig(model=str(tiny_model("llama")), data=str(data), output=str(root / "grpo-run"), iters=3,
                          batch_size=2, learning_rate=1e-2, lora_rank=4, steps_per_report=1, steps_per_eval=3,
                          save_every=100, sample_count=0, val_batches=1, objective="grpo", grpo_group_size=3,
                          grpo_max_tokens=2, grpo_beta=0.1, grpo_rewards="regex:/^ [a-z]/")
        recorder = runs.RunRecorder(cfg)
        assert Trainer(cfg, listeners=[recorder]).run().status == "finished"
        recorder.close()
    finally:
        if old is None:
            os.environ.pop("FINETUNE_DATA_DIR", None)
        else:
            os.environ["FINETUNE_DATA_DIR"] = old
    return root, recorder.run_id, root / "grpo-run"


def test_dpo_reward_accuracy_is_plotted_live_in_history_and_tensorboard(runs_db, tiny_model, app_env, qtbot,
                                                                        monkeypatch, tmp_path):
    from finetune_app.core import runs
    from finetune_app.core.config import TrainConfig
    from finetune_app.ui.run_history import RunHistoryView
    from finetune_app.ui.training_view import TrainingView
    from finetune_app.ui.workers import TrainingRun

    root, grpo_id, grpo_dir = runs_db
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(root / "appdata"))  # the same run database
    data = make_format_preferences(tmp_path / "pairs", n_train=8, n_valid=4)
    out = tmp_path / "dpo-run"
    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(data), output=str(out), iters=STEPS, batch_size=2,
                      objective="dpo", beta=0.2, learning_rate=2e-3, lora_rank=4, steps_per_report=1,
                      steps_per_eval=2, save_every=100, sample_count=0, seed=0, report_to=["tensorboard"])
    view = TrainingView()
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    run = TrainingRun(cfg, parent=view)
    view.attach(run)
    assert view.objective_panel.isHidden(), "an objective plot only for preference / reward runs"
    with qtbot.waitSignal(run.worker.done, timeout=60_000):
        run.start()
    qtbot.waitUntil(lambda: view.state == "finished", timeout=10_000)
    view._redraw()

    logged = {r["step"]: r["metrics"] for r in objective_rows(out) if r["kind"] == "train"}
    assert sorted(logged) == list(range(1, STEPS + 1))
    held = {r["step"]: r["metrics"] for r in objective_rows(out) if r["kind"] == "objective"}
    assert sorted(held) == [2, 4] and all(r["split"] == "valid" for r in objective_rows(out) if r["kind"] == "objective")
    held_acc = [held[s]["reward_accuracy"] for s in (2, 4)]
    assert all(4 * a == round(4 * a) for a in held_acc), "an accuracy over the 4 held-out pairs"
    accuracy = [logged[s]["reward_accuracy"] for s in range(1, STEPS + 1)]
    panel = view.objective_panel
    assert not panel.isHidden() and panel.metric == "reward_accuracy"
    assert {"reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"} <= set(panel.names())
    [(xs, ys), held_points] = panel.points()  # training, and held out (dashed points)
    assert xs == list(range(1, STEPS + 1)) and ys == pytest.approx(accuracy)
    assert held_points == ([2, 4], pytest.approx(held_acc))
    (x0, x1), (y0, y1) = panel.plot.plotItem.vb.viewRange()
    assert x0 <= 1 and x1 >= STEPS and y0 <= min(ys) and y1 >= max(ys)
    panel.select("chosen_logps")  # the selector switches the plotted metric
    assert panel.points()[0][1] == pytest.approx([logged[s]["chosen_logps"] for s in range(1, STEPS + 1)])
    assert all(v < 0 for v in panel.points()[0][1])

    # TensorBoard got the same numbers
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/reward_accuracy")] == pytest.approx(accuracy, rel=1e-6)
    assert "train/rejected_logps" in acc.Tags()["scalars"]
    assert [e.value for e in acc.Scalars("val/reward_accuracy")] == pytest.approx(held_acc)

    # the run History: the DPO run alone, then compared with the GRPO run
    history = RunHistoryView(root / "appdata" / "runs.sqlite3")
    qtbot.addWidget(history)
    history.resize(1280, 860)
    history.show()
    history.refresh()
    dpo_id = runs.open_store(root / "appdata" / "runs.sqlite3").find_by_dir(out).id
    history.select_runs([dpo_id])
    hp = history.objective_panel
    assert not hp.isHidden() and hp.metric == "reward_accuracy"
    [(xs, ys), held_points] = hp.points()
    assert xs == list(range(1, STEPS + 1)) and ys == pytest.approx(accuracy)
    assert held_points == ([2, 4], pytest.approx(held_acc))

    history.select_runs([dpo_id, grpo_id])
    assert {"reward_accuracy", "reward_mean", "reward_std", "kl"} <= set(hp.names())
    hp.select("reward_mean")
    grpo = om.series(objective_rows(grpo_dir))
    train_steps, train_means = grpo["reward_mean"]
    valid_steps, valid_means = grpo["valid/reward_mean"]
    assert train_steps == [1, 2, 3] and valid_steps == [3]
    assert sorted(hp.points()) == sorted([(train_steps, pytest.approx(train_means)),
                                          (valid_steps, pytest.approx(valid_means))])
    names = [item.name() for item in hp.plot.plotItem.listDataItems()]
    assert any(n and n.endswith("(held out)") and str(grpo_id) in n for n in names)
    history.select_runs([])
    assert hp.isHidden()


def test_grpo_rewards_reach_the_training_view_and_the_cli_line(runs_db, qtbot):  # (qtbot: the QApplication)
    """A GRPO run's ObjectiveReports (replayed from its metrics.jsonl) are drawn as the live view draws
    them, and the CLI's step line carries the last reward mean, spread and KL; held-out ones get a line."""
    from finetune_app.cli.progress import ConsolePrinter
    from finetune_app.ui.training_view import TrainingView

    _, _, grpo_dir = runs_db
    rows = MetricsLog.read(grpo_dir / "metrics.jsonl")
    view = TrainingView()
    out = io.StringIO()
    printer = ConsolePrinter(out)
    for r in rows:
        if r.get("kind") == "objective":
            event = ObjectiveReport(step=r["step"], metrics=r["metrics"], split=r["split"])
        elif r.get("kind") == "train":
            event = TrainReport(**{k: v for k, v in r.items() if k not in ("kind", "hosts")})
        else:
            continue
        printer(event)
        (view.on_objective if isinstance(event, ObjectiveReport) else view.on_train)(event)
    view._redraw()
    panel = view.objective_panel
    assert not panel.isHidden() and panel.metric == "reward_mean"
    expect = om.series(rows)
    assert sorted(panel.points()) == sorted([expect["reward_mean"], expect["valid/reward_mean"]])
    lines = out.getvalue().splitlines()
    last = [r["metrics"] for r in rows if r.get("kind") == "objective" and r["split"] == "train"][-1]
    step_line = [ln for ln in lines if ln.startswith("step 3/3")][0]
    assert f"reward {last['reward_mean']:.3f}±{last['reward_std']:.3f}" in step_line and " kl " in step_line
    assert any(ln.startswith("step 3: held-out reward ") for ln in lines)
    # a resumed run's history drops the points after the step it continues from
    view._add_train_point(2, 1.0, 1e-3)
    view._dirty = True
    view._redraw()
    assert panel.points() == [([1, 2], pytest.approx(expect["reward_mean"][1][:2]))]
    # GRPO reports a step's rewards before its loss: a resumed run's first report replaces the later points
    view.on_objective(ObjectiveReport(step=1, metrics={"reward_mean": 0.25}))
    view._redraw()
    assert panel.points() == [([1], [0.25])]


def test_the_cli_line_of_a_dpo_step():
    m = {"reward_accuracy": 0.75, "reward_margin": 0.1234, "chosen_logps": -12.34, "rejected_logps": -15.6}
    assert om.text(m) == " | reward acc 0.75 margin 0.123 logp chosen/rejected -12.3/-15.6"
    assert om.text({}) == ""
    assert om.label("valid/reward_mean") == "reward mean (held out)" and om.label("reward_regex:x") == "reward: regex:x"
