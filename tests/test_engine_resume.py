"""A run killed with SIGKILL and resumed reproduces the uninterrupted run's per-step losses exactly
(CPU), including the LR schedule (warmup + cosine), dropout randomness and the data order."""

import json

import pytest

from finetune_app.core.training.events import MetricsLog
from helpers import popen_cli, run_cli, sigkill_between_checkpoints

STEPS = 16


def train_args(model, data, out):
    return ["train", "--model", model, "--data", data, "--output", out, "--iters", STEPS, "--batch-size", 2,
            "--learning-rate", "2e-3", "--lora-rank", 4, "--lora-dropout", "0.1", "--warmup-steps", 3,
            "--lr-schedule", "cosine", "--grad-accumulation", 2, "--steps-per-report", 1, "--steps-per-eval", 100,
            "--save-every", 4, "--sample-count", 0, "--seed", 7, "--quiet"]


def losses(run_dir):
    rows = [r for r in MetricsLog.read(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    return {r["step"]: (r["loss"], r["learning_rate"]) for r in rows}


def test_sigkill_and_resume_reproduces_losses(tiny_model, instruction_data, tmp_path):
    model = tiny_model("llama")
    ref_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    done = run_cli(*train_args(model, instruction_data, ref_dir))
    assert done.returncode == 0, done.stderr
    reference = losses(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))

    proc = popen_cli(*train_args(model, instruction_data, killed_dir))
    sigkill_between_checkpoints(proc, killed_dir, 8, 9)  # after step 8's checkpoint, before the end
    killed_at = max(losses(killed_dir))
    assert 9 <= killed_at < STEPS

    resumed = run_cli("train", "--resume", killed_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from step-" in resumed.stderr
    after = losses(killed_dir)
    assert sorted(after) == list(range(1, STEPS + 1)), "every step appears once"
    assert after == reference, "per-step losses and learning rates equal the uninterrupted run's"
    assert (killed_dir / "adapters.safetensors").exists()


def test_corrupt_newest_checkpoint_falls_back(tiny_model, instruction_data, tmp_path):
    model = tiny_model("llama")
    run = tmp_path / "run"
    args = train_args(model, instruction_data, run)
    args[args.index("--iters") + 1] = 8
    assert run_cli(*args).returncode == 0
    newest = run / "checkpoints" / "step-0000008" / "adapters.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    resumed = run_cli("train", "--resume", run, "--iters", 10, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "step-0000008 is damaged" in resumed.stderr
    assert "Resuming from step-0000004" in resumed.stderr
    assert max(losses(run)) == 10
