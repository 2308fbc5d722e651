"""The run records with the real engine, in this process (fast): a damaged newest checkpoint makes
`runs resume` fall back and say so; a finished run extends with its optimizer state; checkpoint
rotation keeps the best by validation loss; a full disk refuses to start, with the figures."""

import json
import shutil
import subprocess
import sys

import pytest

from finetune_app.cli import main as cli_main
from finetune_app.core import runs
from finetune_app.core.config import TrainConfig
from finetune_app.core.errors import FinetuneError
from finetune_app.core.training import checkpoint as ckpt
from finetune_app.core.training.control import Control
from finetune_app.core.training.events import TrainReport
from finetune_app.core.training.trainer import Trainer


@pytest.fixture
def datadir(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "appdata"))
    return tmp_path / "appdata"


def config(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output=str(out), iters=12, batch_size=2, learning_rate=2e-3,
                lora_rank=4, lora_dropout=0.1, lr_schedule="constant", steps_per_report=1, steps_per_eval=4,
                save_every=4, keep_checkpoints=3, sample_count=1, sample_max_tokens=4, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def train(cfg, *listeners, resume=False, control=None):
    recorder = runs.RunRecorder(cfg, resume=resume)
    try:
        return Trainer(cfg, listeners=[recorder, *listeners], resume=resume, control=control).run(), recorder.run_id
    finally:
        recorder.close()


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


class DieAt:
    """Stands in for a kill: aborts the training loop (KeyboardInterrupt is not swallowed)."""

    def __init__(self, step):
        self.step = step

    def __call__(self, event):
        if isinstance(event, TrainReport) and event.step == self.step:
            raise KeyboardInterrupt


def test_runs_resume_skips_a_damaged_newest_checkpoint(tiny_model, instruction_data, tmp_path, datadir, capsys):
    model = tiny_model("llama")
    train(config(model, instruction_data, tmp_path / "ref"))
    with runs.open_store() as store:
        ref_losses = store.losses(store.find_by_dir(str((tmp_path / "ref").resolve())).id)

    run = (tmp_path / "run").resolve()
    with pytest.raises(KeyboardInterrupt):
        train(config(model, instruction_data, run), DieAt(10))
    with runs.open_store() as store:
        rec = store.find_by_dir(str(run))
        assert rec.status == "running" and rec.step == 10
        store.update_run(rec.id, pid=dead_pid())  # the process that trained it is gone
        assert [r.id for r in runs.recover_at_startup(store)] == [rec.id]
        assert [c.step for c in store.checkpoints(rec.id)] == [4, 8]
    newest = run / "checkpoints" / "step-0000008" / "adapters.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated

    capsys.readouterr()
    assert cli_main(["runs", "resume", str(rec.id), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "step-0000008 is damaged" in err and "Resuming from step-0000004" in err
    with runs.open_store() as store:
        after = store.get(rec.id)
        log = [e["message"] for e in store.run_log(rec.id)]
        assert after.status == "finished" and after.step == 12 and after.sessions == 2
        assert any("step-0000008 is damaged" in m for m in log), "the fallback is recorded too"
        assert store.losses(rec.id) == ref_losses, "steps 5-12 trained again from step 4 equal the reference"
        assert {s["step"] for s in store.samples(rec.id)} == {4, 8, 12}
        assert [c.step for c in store.checkpoints(rec.id)] == [4, 8, 12]
    assert ckpt.is_valid(run / "checkpoints" / "step-0000008"), "step 8 was written again, whole"


def test_finished_run_extends_with_its_optimizer_state(tiny_model, instruction_data, tmp_path, datadir):
    model = tiny_model("llama")
    train(config(model, instruction_data, tmp_path / "long", iters=12))
    short, run_id = train(config(model, instruction_data, tmp_path / "short", iters=8))
    assert short.status == "finished" and short.step == 8
    with pytest.raises(FinetuneError, match="finished all 8 steps"):
        runs.resume_run(run_id)
    result = runs.resume_run(run_id, iters=12)
    assert result.status == "finished" and result.step == 12
    assert TrainConfig.load(tmp_path / "short" / "train_config.toml").iters == 12, "the extension is remembered"
    with runs.open_store() as store:
        long_id = store.find_by_dir(str((tmp_path / "long").resolve())).id
        # constant learning rate: 8 steps + 4 more with the saved optimizer state == 12 steps at once
        assert store.losses(run_id) == store.losses(long_id)
        assert store.get(run_id).total_steps == 12


def test_rotation_keeps_the_last_n_and_the_best(tmp_path):
    run = tmp_path / "run"
    vals = {2: 3.0, 4: 1.5, 6: 2.0, 8: 2.5, 10: None}
    for step, val in vals.items():
        c = run / "checkpoints" / f"step-{step:07d}"
        c.mkdir(parents=True)
        state = {"step": step, "val_loss": val if val is not None else 9.0, "val_step": step if val else step - 1}
        (c / "state.json").write_text(json.dumps(state))
    assert ckpt.best_checkpoint(run).name == "step-0000004"
    ckpt.rotate(run / "checkpoints", keep=2)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000004", "step-0000008", "step-0000010"]
    assert ckpt.checkpoint_val_loss(run / "checkpoints" / "step-0000010") is None, "not evaluated at its step"


def test_training_keeps_the_best_checkpoint(tiny_model, instruction_data, tmp_path, datadir):
    # (a high learning rate: on this seed the best validation loss comes before the end, step 8 as of
    # loracut; the assertions hold whichever step it is, since a 16-step tiny run's trajectory moves
    # with any rounding change in the step)
    cfg = config(tiny_model("llama"), instruction_data, tmp_path / "run", iters=16, learning_rate=0.2,
                 steps_per_eval=2, save_every=2, keep_checkpoints=1, sample_count=0, lora_dropout=0.0)
    train(cfg)
    with runs.open_store() as store:
        rec = store.find_by_dir(str((tmp_path / "run").resolve()))
        val = store.losses(rec.id, "val")
        kept = [c.step for c in store.checkpoints(rec.id)]
    best = min(val, key=lambda s: (val[s], s))
    assert rec.best_step == best and rec.best_val_loss == val[best]
    assert kept == sorted({best, 16}), (val, kept)  # the best and the last, nothing else
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{best:07d}" / "state.json").read_text())
    assert state["val_loss"] == val[best] and state["val_step"] == best


def test_full_disk_refuses_to_start_with_the_figures(tiny_model, instruction_data, tmp_path, datadir, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    cfg = config(tiny_model("llama"), instruction_data, tmp_path / "run")
    with pytest.raises(FinetuneError) as err:
        train(cfg)
    msg = str(err.value)
    assert "Not enough disk space" in msg and "cannot start" in msg and "0.0 MB is free" in msg
    assert "MB" in msg.split("needs about")[1]
    assert not (tmp_path / "run").exists(), "nothing was written"
    with runs.open_store() as store:
        [rec] = store.runs()
        assert rec.status == "failed" and "Not enough disk space" in rec.message


def test_disk_filling_up_during_training_stops_before_the_next_checkpoint(tiny_model, instruction_data, tmp_path,
                                                                        datadir, monkeypatch):
    real = shutil.disk_usage
    state = {"full": False}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1) if state["full"] else real(p))

    def fill(event):
        if isinstance(event, TrainReport) and event.step == 5:
            state["full"] = True

    cfg = config(tiny_model("llama"), instruction_data, tmp_path / "run", sample_count=0)
    with pytest.raises(FinetuneError, match="stopped before writing its next checkpoint"):
        train(cfg, fill)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-0000004"]
    with runs.open_store() as store:
        rec = store.runs()[0]
        assert rec.status == "failed" and runs.is_resumable(rec)


def test_estimate_is_three_times_the_trainable_bytes(tiny_model, instruction_data, tmp_path, datadir):
    cfg = config(tiny_model("llama"), instruction_data, tmp_path / "run", iters=4, sample_count=0)
    trainer = Trainer(cfg)
    trainer.run()
    files = [tmp_path / "run" / "checkpoints" / "step-0000004" / n for n in ("adapters.safetensors", "optimizer.safetensors")]
    on_disk = sum(f.stat().st_size for f in files)
    # AdamW: the adapter and two moments of its size; the files add only their JSON headers
    assert 0 <= on_disk - trainer.checkpoint_bytes < 32_000, (on_disk, trainer.checkpoint_bytes)


def test_stopped_run_resumes_through_records(tiny_model, instruction_data, tmp_path, datadir):
    control = Control()

    def stop(event):
        if isinstance(event, TrainReport) and event.step == 6:
            control.stop(save=True)

    cfg = config(tiny_model("llama"), instruction_data, tmp_path / "run", sample_count=0)
    result, run_id = train(cfg, stop, control=control)
    assert result.status == "stopped"
    found = runs.resumable_runs()
    assert [(r.id, r.status) for r in found] == [(run_id, "stopped")]
    assert runs.resume_run(run_id).status == "finished"
    with runs.open_store() as store:
        assert sorted(store.losses(run_id)) == list(range(1, 13))


def test_unrecorded_runs_are_imported_or_backfilled(tiny_model, instruction_data, tmp_path, datadir, capsys):
    model = tiny_model("llama")
    # trained without a record (FINETUNE_RECORD_RUNS=0, another data folder, an older version)
    Trainer(config(model, instruction_data, tmp_path / "done", iters=6, sample_count=0)).run()
    assert cli_main(["runs", "import", str(tmp_path / "done")]) == 0
    assert "finished, step 6 of 6" in capsys.readouterr().out
    with runs.open_store() as store:
        rec = store.find_by_dir(str((tmp_path / "done").resolve()))
        assert rec.status == "finished" and sorted(store.losses(rec.id)) == list(range(1, 7))
        assert [c.step for c in store.checkpoints(rec.id)] == [4, 6]
        assert runs.import_run(tmp_path / "done", store).id == rec.id, "importing twice changes nothing"

    # an unrecorded run that is resumed: the record starts with what the folder knows
    control = Control()
    stop = lambda e: isinstance(e, TrainReport) and e.step == 5 and control.stop(save=False)  # noqa: E731
    cfg = config(model, instruction_data, tmp_path / "half", sample_count=0)
    Trainer(cfg, listeners=[stop], control=control).run()
    recorder = runs.RunRecorder(cfg, resume=True)
    Trainer(cfg, listeners=[recorder], resume=True).run()
    recorder.close()
    with runs.open_store() as store:
        rec = store.get(recorder.run_id)
        assert rec.status == "finished" and sorted(store.losses(rec.id)) == list(range(1, 13))
