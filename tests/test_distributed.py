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


def ring_port_args() -> list[str]:
    """Ports of their own: the two ring tests may run at once on two xdist workers, and at
    mlx.launch's default port their ranks would join the other test's run."""
    from finetune_app.core.cluster.launch import free_ports

    return ["--starting-port", str(free_ports(2))]


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
    cmd = ["mlx.launch", "-n", "2", "--backend", "ring", *ring_port_args(), "--", sys.executable, "-m", "finetune_app", "train",
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


@pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch is not installed")
def test_grpo_on_two_ring_processes_matches_one_process(tiny_model, tmp_path):
    """Data-parallel GRPO: each process samples its shard of the prompts (a prompt's answers are
    seeded by (seed, step, row), so they do not depend on the process), the gradients are all-summed,
    and rank 0 records and reports every process's answers and rewards (all_gather)."""
    import json

    words = ["red", "blue", "green", "circle", "square", "star"]
    rows = [{"prompt": f"Describe the {a} {b}.", "answer": "any"} for a in words for b in words if a != b]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    (data / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:16]))
    args = ["--model", str(tiny_model("llama")), "--data", str(data), "--iters", "3", "--batch-size", "2",
            "--learning-rate", "2e-2", "--lora-rank", "4", "--steps-per-report", "1", "--steps-per-eval", "3",
            "--save-every", "100", "--sample-count", "0", "--seed", "3", "--objective", "grpo",
            "--grpo-group-size", "3", "--grpo-max-tokens", "2", "--grpo-beta", "0.1",
            "--grpo-rewards", "regex:/^ [a-z]/,length:1-6:0.5", "--quiet"]
    single, double = tmp_path / "single", tmp_path / "double"
    one = run_cli("train", *args, "--output", single)
    assert one.returncode == 0, one.stderr
    cmd = ["mlx.launch", "-n", "2", "--backend", "ring", *ring_port_args(), "--", sys.executable, "-m", "finetune_app", "train",
           *args, "--output", str(double)]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr

    def record(run):
        rows = MetricsLog.read(run / "metrics.jsonl")
        loss = {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}
        objective = {(r["step"], r["split"]): r["metrics"] for r in rows if r["kind"] == "objective"}
        sampled = sorted((r["step"], r["split"], r["index"], r["completion"], r["reward"])
                         for r in map(json.loads, (run / "rewards.jsonl").read_text().splitlines()))
        return loss, objective, sampled

    (l1, o1, s1), (l2, o2, s2) = record(single), record(double)
    assert s2 == s1, "rank 0 recorded every process's answers, the same as one process sampled"
    assert len(s1) == 3 * 2 * 3 + 4 * 3
    assert sorted(o2) == sorted(o1) == [(1, "train"), (2, "train"), (3, "train"), (3, "valid")]
    for key in o1:
        assert o2[key] == pytest.approx(o1[key], rel=1e-5, abs=1e-6), key
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6)
