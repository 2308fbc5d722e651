"""Data-parallel training: two processes launched with `mlx.launch` over the ring backend on
loopback reproduce a single-process run with the same global batch (float32 tolerance)."""

import shutil
import subprocess
import sys

import mlx.core as mx
import pytest

from finetune_app.core.training.events import MetricsLog
from helpers import run_cli

ARGS = ["--iters", 6, "--batch-size", 4, "--learning-rate", "2e-3", "--lora-rank", 4, "--steps-per-report", 1,
        "--steps-per-eval", 3, "--save-every", 3, "--sample-count", 0, "--seed", 3, "--quiet"]


def losses(run):
    rows = MetricsLog.read(run / "metrics.jsonl")
    return ({r["step"]: r["loss"] for r in rows if r["kind"] == "train"},
            {r["step"]: r["val_loss"] for r in rows if r["kind"] == "val"})


@pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch is not installed")
def test_two_ring_processes_match_one_process(tiny_model, instruction_data, tmp_path):
    model = tiny_model("llama")
    single, double = tmp_path / "single", tmp_path / "double"
    one = run_cli("train", "--model", model, "--data", instruction_data, "--output", single, *ARGS)
    assert one.returncode == 0, one.stderr
    cmd = ["mlx.launch", "-n", "2", "--backend", "ring", "--", sys.executable, "-m", "finetune_app", "train",
           "--model", str(model), "--data", str(instruction_data), "--output", str(double), *map(str, ARGS)]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    (l1, v1), (l2, v2) = losses(single), losses(double)
    assert sorted(l2) == list(range(1, 7)), "rank 0 alone logged each step once"
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6)
    for step in v1:
        assert v2[step] == pytest.approx(v1[step], rel=1e-5, abs=1e-6)
    a, b = mx.load(str(single / "adapters.safetensors")), mx.load(str(double / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.allclose(a[k], b[k], rtol=1e-4, atol=1e-6).item(), k
    assert sorted(p.name for p in (double / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
