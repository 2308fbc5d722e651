"""Does the model learn the demo shapes task, and how long does it take? Ours vs mlx-vlm's trainer.

    python benchmarks/learn_shapes.py --family qwen2_vl --iters 2000 [--theirs]

Both trainers get the same tiny random-weight model, the same `{"images", "messages"}` JSONL
(mlx-vlm's `--data DIR` layout: 300 train / 60 held-out centred shapes, 64 px) and the same steps,
batch 4, lr 1e-3, LoRA rank 16 / alpha 16, completion-only loss:
  ours    `python -m finetune_app train --preset balanced ...` (the default preset)
  theirs  `python -m mlx_vlm.train ...`
"seconds" is wall clock from the command to the saved adapter (process start, loading and data
preparation included). Accuracy is measured ONLY through mlx-vlm's standard path
(`mlx_vlm.load(base, adapter_path)` + `apply_chat_template(..., num_images=1)` + greedy `generate`),
the way users run the adapter. Prints one JSON line per trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, r


def scored(name: str, seconds: float, r, model_dir, adapter_dir, data_dir) -> dict:
    from finetune_app.testing.runtime_accuracy import mlx_vlm_shapes_accuracy

    if r.returncode != 0:
        return {"trainer": name, "failed": (r.stderr or r.stdout).strip().splitlines()[-3:]}
    acc, outs = mlx_vlm_shapes_accuracy(model_dir, adapter_dir, data_dir)
    return {"trainer": name, "seconds": round(seconds, 1), **acc, "examples": outs[:4]}


def ours(model_dir, data_dir, work, args) -> dict:
    out = work / "ours"
    cmd = [sys.executable, "-m", "finetune_app", "train", "--preset", "balanced", "--model", str(model_dir),
           "--data", str(data_dir), "--output", str(out), "--iters", str(args.iters), "--batch-size", "4",
           "--learning-rate", "1e-3", "--lora-rank", "16", "--lora-alpha", "16", "--seed", str(args.seed),
           "--steps-per-eval", "1000000000", "--save-every", "1000000000", "--sample-count", "0", "--quiet",
           "--serve-target", args.serve_target]
    seconds, r = timed(cmd)
    return scored("finetune", seconds, r, model_dir, out, data_dir)


def theirs(model_dir, data_dir, work, args) -> dict:
    out = work / "theirs"
    cmd = [sys.executable, "-m", "mlx_vlm.train", "--model", str(model_dir), "--data", str(data_dir),
           "--iters", str(args.iters), "--batch-size", "4", "--learning-rate", "1e-3", "--lora-rank", "16",
           "--lora-alpha", "16", "--lora-dropout", "0", "--train-on-completions", "--seed", str(args.seed),
           "--steps-per-eval", "100000", "--steps-per-save", "100000", "--output-path", str(out)]
    seconds, r = timed(cmd)
    adapter = out if (out / "adapter_config.json").is_file() else out.parent
    return scored("mlx_vlm.train", seconds, r, model_dir, adapter, data_dir)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="qwen2_vl")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--valid", type=int, default=60)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-target", default="auto")
    p.add_argument("--theirs", action="store_true", help="also run python -m mlx_vlm.train")
    p.add_argument("--model", default=None, help="model folder (default: a tiny one of --family)")
    args = p.parse_args()
    from finetune_app.core.data.demo import make_shapes_dataset
    from finetune_app.testing.tiny_models import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="learn-shapes-"))
    try:
        model_dir = Path(args.model) if args.model else build_tiny_model(args.family, work / "model")
        data_dir = make_shapes_dataset(work / "shapes", n_train=args.train, n_valid=args.valid, size=args.size,
                                       seed=args.seed, jsonl=True)
        head = {"family": args.family, "iters": args.iters}
        print(json.dumps({**head, **ours(model_dir, data_dir, work, args)}), flush=True)
        if args.theirs:
            print(json.dumps({**head, **theirs(model_dir, data_dir, work, args)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
