"""Shared test helpers (importable from tests)."""

import subprocess
import sys


def run_cli(*args, timeout=600, **kwargs):
    """Run `python -m finetune_app ARGS` in a fresh process (what a user's shell does)."""
    return subprocess.run([sys.executable, "-m", "finetune_app", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def popen_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "finetune_app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def sigkill_between_checkpoints(proc, run_dir, checkpoint_step: int, reported_step: int, timeout: float = 300) -> None:
    """SIGKILL a training process once checkpoint `checkpoint_step` is on disk and metrics.jsonl
    reports training step `reported_step`: the kill falls after a checkpoint, before the run ends."""
    import os
    import signal
    import time

    from finetune_app.core import run_folder
    from finetune_app.core.training.events import MetricsLog

    metrics, checkpoint = run_folder.metrics_path(run_dir), run_folder.checkpoint_dir(run_dir, checkpoint_step)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            rows = MetricsLog.read(metrics) if metrics.exists() else []
            last = max((r["step"] for r in rows if r.get("kind") == "train"), default=0)
            if checkpoint.exists() and last >= reported_step:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)


def find_last(haystack, needle) -> int:
    """Where the token run `needle` last starts in `haystack` (the independent loss tests locate
    the answer's tokens with it)."""
    for start in range(len(haystack) - len(needle), -1, -1):
        if list(haystack[start:start + len(needle)]) == list(needle):
            return start
    raise AssertionError(f"answer tokens {needle} not found in {haystack}")


def log_softmax64(x):
    """log-softmax in float64 on the host: the independent computation the engine's losses are checked against."""
    import numpy as np

    x = np.asarray(x).astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
