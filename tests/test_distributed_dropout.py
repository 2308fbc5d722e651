"""A host that drops out of a data-parallel run: the survivors stop with a clear error, rank 0
saves the last finished step, and resuming on one machine continues exactly like a run that was
never interrupted (the global batch does not depend on the number of processes)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mlx.core as mx
import pytest

from finetune_app.core.training.events import MetricsLog
from helpers import popen_cli, run_cli

ARGS = ["--iters", 60, "--batch-size", 4, "--learning-rate", "2e-3", "--lora-rank", 4, "--steps-per-report", 1,
        "--steps-per-eval", 1000, "--save-every", 5, "--sample-count", 0, "--seed", 5, "--quiet"]
ENV = dict(os.environ, FINETUNE_RECORD_RUNS="0")


def train_losses(run):
    return {r["step"]: r["loss"] for r in MetricsLog.read(run / "metrics.jsonl") if r["kind"] == "train"}


def rank_pid(tag: str, rank: int) -> int | None:
    """The process with MLX_RANK=rank whose environment carries FINETUNE_TEST_RUN=tag (a host's process)."""
    return next(iter(rank_pids(tag, rank)), None)


def rank_pids(tag: str, rank: int) -> list[int]:
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _has_env(pid, tag, rank)]


def _has_env(pid: int, tag: str, rank: int) -> bool:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return False
    return f"MLX_RANK={rank}".encode() in env and f"FINETUNE_TEST_RUN={tag}".encode() in env


def hung_stacks(tag: str, rank: int, stacks_dir) -> str:
    """Where a hung rank is: its Python threads (faulthandler on SIGUSR1, FINETUNE_STACKS_DIR) and,
    with gdb, its C++ threads (a collective that never returns shows there)."""
    report = []
    for pid in rank_pids(tag, rank):
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            continue
        time.sleep(1)
        dump = stacks_dir / f"rank{rank}.txt"
        report.append(f"--- rank {rank} pid {pid} Python stacks:\n" + (dump.read_text() if dump.exists() else "(none)"))
        if shutil.which("gdb"):
            try:
                bt = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 25"],
                                    capture_output=True, text=True, timeout=90)
                bt = "\n".join(l for l in bt.stdout.splitlines() if l.startswith(("Thread", "#"))) or bt.stderr
            except subprocess.TimeoutExpired:
                bt = "(gdb timed out)"
            report.append(f"--- rank {rank} pid {pid} C stacks:\n{bt}")
        with contextlib.suppress(OSError):  # the launcher's kill does not reach its ranks' sessions
            os.kill(pid, signal.SIGKILL)
    return "\n".join(report) or f"no process of rank {rank} left"


def wait_for_step(run, step: int, proc, timeout=120) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = train_losses(run)
        if steps and max(steps) >= step:
            return max(steps)
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def hostfile(tmp_path, n=2):
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"backend": "ring", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * n}))
    return path


def test_host_killed_mid_run_then_resume_alone_matches_uninterrupted(tiny_model, instruction_data, tmp_path):
    model = tiny_model("llama")
    ref, run = tmp_path / "reference", tmp_path / "run"
    one = run_cli("train", "--model", model, "--data", instruction_data, "--output", ref, *ARGS, env=ENV)
    assert one.returncode == 0, one.stderr
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    proc = popen_cli("train", "--hostfile", hostfile(tmp_path), "--model", model, "--data", instruction_data,
                     "--output", run, *ARGS, env=dict(ENV, FINETUNE_TEST_RUN="0", FINETUNE_STACKS_DIR=str(stacks)),
                     stdin=subprocess.DEVNULL)
    try:
        wait_for_step(run, 8, proc)
        pid = rank_pid("0", 1)  # kill rank 1 the way a host dies
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # seen once in ~20 CI runs: say where rank 0 was
            where = hung_stacks("0", 0, stacks)
            proc.kill()
            raise AssertionError(f"the run did not end within 120 s of rank 1's SIGKILL\n{where}\n"
                                 f"--- launcher output:\n{proc.communicate()[0]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out
    assert "Rank 1 on 127.0.0.1 (this machine) dropped out: its process was killed (SIGKILL)" in out, out
    saved = int(out.split("Data-parallel training stopped at step ")[1].split(":")[0])
    assert saved >= 8
    assert f"Step {saved} is saved in {run}/checkpoints/step-{saved:07d}" in out, out
    assert (run / "checkpoints" / f"step-{saved:07d}" / "adapters.safetensors").is_file()

    stale = run / "checkpoints" / ".step-0000099.staging-x1"  # what a save killed mid-way leaves
    stale.mkdir()
    again = run_cli("train", "--resume", run, "--quiet", env=ENV)  # this machine alone
    assert again.returncode == 0, again.stderr
    assert not stale.exists()
    assert f"Resuming from step-{saved:07d}" in again.stdout + again.stderr
    ref_losses, losses = train_losses(ref), train_losses(run)
    assert sorted(losses) == list(range(1, 61))
    # Per-step losses: two ranks and one process sum the same gradients in another order, and
    # AdamW carries that rounding forward: measured 1e-7 at step 1 growing smoothly to ~2.5e-4 by
    # step 50 (since the fused LM head, whose per-rank chunks differ from one process's). A lost,
    # repeated or wrong batch moves a step's loss by percents, far above this bound.
    for step in range(1, 61):
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-3, abs=1e-5), step
    # Weights after 60 AdamW steps: two ranks sum their halves' gradients in another order than
    # one process, and the drift reaches ~4e-5 on values up to 0.27 since the length-sorted batch
    # order, 1.6e-4 (of 0.29) since the fused LM head. The per-step losses above are what catch a
    # lost, repeated or wrong batch; this catches weights gone astray.
    a, b = mx.load(str(ref / "adapters.safetensors")), mx.load(str(run / "adapters.safetensors"))
    for k in a:
        assert mx.allclose(a[k], b[k], rtol=1e-3, atol=4e-4).item(), k


def test_frozen_host_is_given_up_after_the_peer_timeout(tiny_model, instruction_data, tmp_path):
    """A host that stops answering without closing its connections (frozen, cable pulled): the
    collective never returns and never fails; the watchdog gives up after FINETUNE_PEER_TIMEOUT."""
    model = tiny_model("llama")
    run = tmp_path / "run"
    ring = tmp_path / "ring.json"
    ring.write_text(json.dumps([["127.0.0.1:%d" % (45211 + os.getpid() % 500)], ["127.0.0.1:%d" % (45212 + os.getpid() % 500)]]))
    env = dict(ENV, MLX_HOSTFILE=str(ring), FINETUNE_PEER_TIMEOUT="3")
    args = ["train", "--model", model, "--data", instruction_data, "--output", run, *ARGS]
    args[args.index("--iters") + 1] = 5000
    r0 = popen_cli(*args, env=dict(env, MLX_RANK="0"))
    r1 = popen_cli(*args, env=dict(env, MLX_RANK="1"))
    try:
        wait_for_step(run, 6, r0)
        r1.send_signal(signal.SIGSTOP)
        out, _ = r0.communicate(timeout=60)
    finally:
        for p in (r0, r1):
            if p.poll() is None:
                p.kill()
        r1.communicate()
    assert r0.returncode == 75, out
    assert "another process stopped answering: no reply for" in out, out
    saved = int(out.split("Data-parallel training stopped at step ")[1].split(":")[0])
    assert (run / "checkpoints" / f"step-{saved:07d}" / "optimizer.safetensors").is_file()
    state = json.loads((run / "checkpoints" / f"step-{saved:07d}" / "state.json").read_text())
    assert state["step"] == saved and saved >= 6


def test_pause_resume_and_stop_reach_every_rank(tiny_model, instruction_data, tmp_path):
    """The app's controls go through the launcher's stdin to every rank; the ranks agree on the
    step, so a stop saves one checkpoint and nobody waits for ever."""
    from finetune_app.core.cluster.hosts import read_hostfile
    from finetune_app.core.cluster.launch import DistributedRun
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import events as ev

    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(instruction_data), output=str(tmp_path / "run"),
                      iters=5000, batch_size=4, lora_rank=4, steps_per_report=1, steps_per_eval=100000,
                      save_every=100000, sample_count=0)
    seen = []
    launch = DistributedRun(read_hostfile(hostfile(tmp_path)), cfg, listeners=[seen.append], env={"FINETUNE_RECORD_RUNS": "0"})
    launch.start()
    import threading

    result = {}
    follower = threading.Thread(target=lambda: result.setdefault("outcome", launch.wait()))
    follower.start()

    def wait_until(pred, what, timeout=90):
        t0 = time.time()
        while not pred():
            assert time.time() - t0 < timeout, f"{what}: {[type(e).__name__ for e in seen[-5:]]}"
            time.sleep(0.05)

    def states():
        return [e.state for e in seen if isinstance(e, ev.StateChanged)]

    reports = lambda: [e for e in seen if isinstance(e, ev.TrainReport)]  # noqa: E731
    try:
        wait_until(lambda: len(reports()) >= 3, "training")
        assert [h.rank for h in reports()[-1].hosts] == [0, 1]
        assert all(h.examples_per_second > 0 for h in reports()[-1].hosts)
        launch.send("pause")
        wait_until(lambda: "paused" in states(), "pause")
        n = len(reports())
        time.sleep(1.0)
        assert len(reports()) <= n + 1, "no step while paused"
        launch.send("resume")
        wait_until(lambda: "resumed" in states() and len(reports()) > n + 2, "resume")
        launch.send("stop")
        follower.join(120)
    finally:
        launch.terminate()
    outcome = result["outcome"]
    assert outcome.status == "stopped", outcome.message
    step = outcome.step
    assert (tmp_path / "run" / "checkpoints" / f"step-{step:07d}").is_dir()
    assert states()[-1] == "stopped"
