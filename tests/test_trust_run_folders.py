"""Own only what you made (issue #14): one test per way a run folder could lose the user's work.

* a foreign folder (the user's Documents, the dataset) is refused as output, and deleting a run
  deletes only the files the run wrote;
* one writer per run folder: a second `train` (or a resume) while a real training process holds
  the folder is refused, saying who holds it;
* a resume that would change the model or the adapter's shape is refused, saying which setting;
* non-finite loss stops the run as failed with the last good checkpoint kept; a NaN adapter or
  optimizer state is never resumed from (an older good checkpoint is, saying so);
* a run SIGKILLed before its first checkpoint restarts cleanly (resume or the same --output).

The CLI runs in this process where a second process is not what is being tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")

from finetune_app.cli import main as cli_main
from finetune_app.core.training.events import MetricsLog
from helpers import popen_cli


@pytest.fixture(autouse=True)
def appdata(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "appdata"))


def train_args(model, data, out, *, iters=2, save_every=1, **extra):
    args = ["train", "--model", model, "--data", data, "--output", out, "--iters", iters, "--batch-size", 2,
            "--learning-rate", "2e-3", "--lora-rank", 8, "--steps-per-report", 1, "--steps-per-eval", 1000,
            "--save-every", save_every, "--keep-checkpoints", 3, "--sample-count", 0, "--seed", 1, "--quiet"]
    for k, v in extra.items():
        args += ["--" + k.replace("_", "-"), v]
    return args


def cli(capsys, *args):
    capsys.readouterr()
    code = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return code, text


def digests(folder: Path) -> dict:
    """Every file's hash (the lock file's note of who last trained is not the run's content)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".run.lock"}


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in MetricsLog.read(run_dir / "metrics.jsonl") if r.get("kind") == "train"]


def wait_for(predicate, proc, what, seconds=300):
    """Poll until `predicate()`; a hang guard (not a timing assertion)."""
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, f"the training process ended before {what}: {proc.stdout.read()}"
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


# ---- a foreign folder is never ours ---------------------------------------------------------------

def test_foreign_output_refused_and_delete_keeps_foreign_files(tiny_model, instruction_data, tmp_path, capsys):
    model = tiny_model("llama")
    docs = tmp_path / "Documents"
    (docs / "taxes").mkdir(parents=True)
    (docs / "thesis.docx").write_bytes(b"my thesis")
    (docs / "taxes" / "2025.pdf").write_bytes(b"%PDF")
    before = digests(docs)
    code, text = cli(capsys, *train_args(model, instruction_data, docs))
    assert code == 5, text
    assert str(docs) in text and "not empty" in text and "new or empty folder" in text
    assert digests(docs) == before and not (docs / "run.json").exists()

    data_copy = shutil.copytree(instruction_data, tmp_path / "mydata")
    data_before = digests(data_copy)
    code, text = cli(capsys, *train_args(model, data_copy, data_copy))
    assert code == 5 and "dataset" in text, text
    assert digests(data_copy) == data_before

    # a run of ours; the user then keeps their own files in its folder: delete removes only the run's
    run = tmp_path / "run"
    code, text = cli(capsys, *train_args(model, instruction_data, run))
    assert code == 0, text
    assert json.loads((run / "run.json").read_text())["format"] == "finetune-run"
    (run / "notes.txt").write_text("mine")
    (run / "exports").mkdir()
    (run / "exports" / "model.gguf").write_bytes(b"mine too")
    (run / "checkpoints" / "README.md").write_text("mine as well")
    code, text = cli(capsys, "runs", "delete", run, "--yes")
    assert code == 0, text
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == ["checkpoints", "checkpoints/README.md", "exports", "exports/model.gguf", "notes.txt"]

    # a run folder holding only what the run wrote goes entirely
    clean = tmp_path / "clean"
    assert cli(capsys, *train_args(model, instruction_data, clean))[0] == 0
    assert cli(capsys, "runs", "delete", clean, "--yes")[0] == 0
    assert not clean.exists()


# ---- one writer per run folder ------------------------------------------------------------------

def test_second_train_into_a_folder_in_use_is_refused(tiny_model, instruction_data, tmp_path, capsys):
    model = tiny_model("llama")
    run = tmp_path / "run"
    proc = popen_cli(*train_args(model, instruction_data, run, iters=100000, save_every=1,
                                 keep_checkpoints=1))
    try:
        wait_for(lambda: (run / "checkpoints" / "step-0000001").is_dir(), proc, "its first checkpoint")
        code, text = cli(capsys, *train_args(model, instruction_data, run))
        assert code == 5, text
        assert "in use by another training process" in text and f"pid {proc.pid}" in text, text
        code, text = cli(capsys, "train", "--resume", run, "--iters", 3, "--quiet")
        assert code == 5, text
        assert f"pid {proc.pid}" in text, text
    finally:
        proc.kill()
        proc.wait(60)
    # the kernel released the lock with the process: the run resumes
    from finetune_app.core.run_folder import RunLock

    RunLock(run).acquire().release()


# ---- a resume keeps the run's model, data and adapter shape -------------------------------------

def test_resume_refuses_a_changed_model_or_adapter_shape(tiny_model, instruction_data, tmp_path, capsys):
    model = tiny_model("llama")
    run = tmp_path / "run"
    assert cli(capsys, *train_args(model, instruction_data, run))[0] == 0
    before = digests(run)

    code, text = cli(capsys, "train", "--resume", run, "--iters", 4, "--lora-rank", 4, "--quiet")
    assert code == 5, text
    assert "lora_rank" in text and "8 -> 4" in text and "train_config.toml" in text, text

    other = tiny_model("llama", num_hidden_layers=1)
    code, text = cli(capsys, "train", "--resume", run, "--iters", 4, "--model", other, "--quiet")
    assert code == 5, text
    assert "model" in text and str(other) in text, text
    assert digests(run) == before, "a refused resume changes nothing in the run folder"

    # what is safe to change: more steps, a lower learning rate, the intervals
    code, text = cli(capsys, "train", "--resume", run, "--iters", 3, "--learning-rate", "1e-4",
                     "--save-every", 3, "--quiet")
    assert code == 0, text
    assert train_steps(run) == [1, 2, 3]


# ---- non-finite training ------------------------------------------------------------------------

def test_nan_loss_stops_as_failed_keeping_the_last_good_checkpoint(tiny_model, instruction_data, tmp_path, capsys):
    model = shutil.copytree(tiny_model("llama"), tmp_path / "model")
    run = tmp_path / "run"
    assert cli(capsys, *train_args(model, instruction_data, run, iters=2, save_every=2))[0] == 0
    good = digests(run / "checkpoints" / "step-0000002")
    # the model's weights go bad on disk (a damaged copy): the forward pass gives NaN from then on
    weights_file = next(model.glob("*.safetensors"))
    poison(weights_file, lambda k: "embed_tokens" in k)
    code, text = cli(capsys, "train", "--resume", run, "--iters", 12, "--save-every", 1, "--quiet")
    assert code != 0, text
    assert "diverged at step 3" in text and "step-0000002" in text and "learning rate" in text.lower(), text
    assert "changed on disk since this run started" in text, text
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000002"]
    assert digests(run / "checkpoints" / "step-0000002") == good
    weights = mx.load(str(run / "adapters.safetensors"))
    assert all(bool(mx.all(mx.isfinite(v)).item()) for v in weights.values())
    code, text = cli(capsys, "runs", "show", run, "--json")
    assert json.loads(text[text.index("{"):])["status"] == "failed"


def poison(path: Path, key_filter=lambda k: True):
    """Write NaN into the first float tensor of a safetensors file (as a diverged run would)."""
    tensors = dict(mx.load(str(path)))
    key = next(k for k, v in tensors.items() if key_filter(k) and v.size > 0 and mx.issubdtype(v.dtype, mx.floating))
    tensors[key] = mx.full(tensors[key].shape, float("nan"), dtype=tensors[key].dtype)
    mx.save_safetensors(str(path), tensors, metadata={"format": "mlx"})


def test_nan_checkpoints_are_never_resumed(tiny_model, instruction_data, tmp_path, capsys):
    model = tiny_model("llama")
    run = tmp_path / "run"
    assert cli(capsys, *train_args(model, instruction_data, run, iters=4, save_every=2))[0] == 0
    poison(run / "checkpoints" / "step-0000004" / "adapters.safetensors")
    code, text = cli(capsys, "train", "--resume", run, "--iters", 6, "--quiet")
    assert code == 0, text
    assert "step-0000004 is damaged" in text and "NaN" in text and "Resuming from step-0000002" in text, text
    losses = [r["loss"] for r in MetricsLog.read(run / "metrics.jsonl") if r.get("kind") == "train"]
    assert all(v == v for v in losses), losses

    # the optimizer state of the only checkpoint is NaN: refused, with the file named
    lone = tmp_path / "lone"
    assert cli(capsys, *train_args(model, instruction_data, lone, iters=2, save_every=2))[0] == 0
    poison(lone / "checkpoints" / "step-0000002" / "optimizer.safetensors", lambda k: k not in ("step", "learning_rate"))
    code, text = cli(capsys, "train", "--resume", lone, "--iters", 4, "--quiet")
    assert code == 5, text
    assert "No usable checkpoint" in text and "optimizer.safetensors" in text and "NaN" in text, text

    # garbage optimizer state (a readable file of the wrong tensors): refused the same way
    mx.save_safetensors(str(lone / "checkpoints" / "step-0000002" / "optimizer.safetensors"), {"junk": mx.zeros((3,))})
    code, text = cli(capsys, "train", "--resume", lone, "--iters", 4, "--quiet")
    assert code == 5, text
    assert "optimizer.safetensors" in text and "does not fit" in text, text


# ---- killed before the first checkpoint ----------------------------------------------------------

def test_run_killed_before_its_first_checkpoint_restarts(tiny_model, instruction_data, tmp_path, capsys):
    model = tiny_model("llama")
    run = tmp_path / "run"
    args = train_args(model, instruction_data, run, iters=100000, save_every=100000)
    proc = popen_cli(*args)
    try:
        wait_for(lambda: bool(train_steps(run)), proc, "its first step")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(60)
    assert (run / "train_config.toml").is_file() and not (run / "checkpoints").exists()
    again = shutil.copytree(run, tmp_path / "again")

    code, text = cli(capsys, "train", "--resume", run, "--iters", 2, "--quiet")
    assert code == 0, text
    assert "before its first checkpoint" in text and "step 0" in text, text
    assert train_steps(run) == [1, 2]

    # the same folder as --output: it is our run without a checkpoint, so a fresh start is accepted
    code, text = cli(capsys, *train_args(model, instruction_data, again, iters=2))
    assert code == 0, text
    assert "step 0" in text and train_steps(again) == [1, 2]
