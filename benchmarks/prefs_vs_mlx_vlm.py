"""Our DPO / ORPO against mlx-vlm 0.7.10's (`python -m mlx_vlm.train --algorithm dpo|orpo`) on the
same tiny Qwen2-VL, the same shapes preference data (finetune_app/testing/preference_tasks.py),
steps, batch, learning rate, LoRA rank and beta (mlx-vlm's default 0.1). Both run as commands;
reported: seconds from the command to the saved adapter, pairs/s over that time, the child's peak
RSS, and held-out preference accuracy of each adapter scored the same way, through mlx-vlm's own
load + forward (`runtime_preference_accuracy`). Not a test: it prints a table.

    PYTHONPATH=. python benchmarks/prefs_vs_mlx_vlm.py [--iters 60] [--algorithms dpo,orpo]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from finetune_app.testing.preference_tasks import make_shapes_preferences, runtime_preference_accuracy
from finetune_app.testing.tiny_models import build_tiny_model


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and this child's own peak RSS (MB, from wait4's rusage)."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"{cmd[:4]} failed:\n{err.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--algorithms", default="dpo,orpo")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="prefs-bench-"))
    model = build_tiny_model("qwen2_vl", root / "model", seed=0)
    data = make_shapes_preferences(root / "shapes")
    common = ["--iters", str(args.iters), "--batch-size", str(args.batch_size), "--learning-rate",
              str(args.learning_rate), "--lora-rank", "16", "--lora-alpha", "16", "--seed", "0"]
    base_acc = runtime_preference_accuracy(model, None, data)
    print(f"base model: held-out preference accuracy {base_acc:.3f}")
    print("| algorithm | trainer | command to adapter (s) | pairs/s | peak RSS (MB) | held-out preference accuracy |")
    print("|---|---|---:|---:|---:|---:|")
    for algo in args.algorithms.split(","):
        ours_dir, theirs_dir = root / f"ours-{algo}", root / f"theirs-{algo}"
        runs = {
            "ours": [sys.executable, "-m", "finetune_app", "train", "--model", str(model), "--data", str(data),
                     "--output", str(ours_dir), "--objective", algo, "--beta", "0.1", "--lr-schedule", "constant",
                     "--steps-per-eval", "100000", "--save-every", "100000", "--sample-count", "0", "--quiet", *common],
            "mlx-vlm": [sys.executable, "-m", "mlx_vlm.train", "--algorithm", algo, "--model", str(model),
                        "--data", str(data), "--output-path", str(theirs_dir), "--steps-per-eval", "100000",
                        "--steps-per-save", "100000", *common],
        }
        for name, cmd in runs.items():
            seconds, rss = timed(cmd)
            acc = runtime_preference_accuracy(model, ours_dir if name == "ours" else theirs_dir, data)
            print(f"| {algo} | {name} | {seconds:.1f} | {args.iters * args.batch_size / seconds:.2f} | {rss:.0f} | {acc:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
