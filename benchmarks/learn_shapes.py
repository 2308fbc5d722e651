"""Does the model learn the demo shapes task? Ours vs mlx-vlm's own trainer, same model/data/steps.

    python benchmarks/learn_shapes.py --family qwen2_vl --iters 400 [--theirs]

Trains a tiny random-weight model with the engine's default LoRA preset (and, with --theirs,
`python -m mlx_vlm.train` with the same model, data, steps, batch, learning rate, rank and alpha,
completion-only loss), then captions the held-out images greedily and scores colour and
colour+shape accuracy. Prints one JSON line per trainer.
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


def captions(base, samples, encoder):
    from finetune_app.core.generate import GenerationSettings, generate_for_sample

    s = GenerationSettings(max_tokens=10)
    return [generate_for_sample(base, x, encoder.load_images(x), settings=s, encoder=encoder) for x in samples]


def score(base, samples):
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.scoring import shapes_accuracy

    outs = captions(base, samples, Encoder(base))
    return shapes_accuracy(outs, [s.answer for s in samples]), outs


def ours(model_dir, data_dir, work, args):
    from finetune_app.core.config import DEFAULT_PRESET, TrainConfig, apply_preset
    from finetune_app.core.training.trainer import Trainer

    cfg = apply_preset(TrainConfig(), DEFAULT_PRESET).replace(
        model=str(model_dir), data=str(data_dir), output=str(work / "ours"), iters=args.iters, epochs=None,
        steps_per_eval=10**9, save_every=10**9, sample_count=0, seed=args.seed, steps_per_report=50)
    for item in args.set:  # e.g. --set train_projector=true
        key, value = item.split("=", 1)
        cfg = cfg.replace(**{key: json.loads(value)})
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.run()
    seconds = time.perf_counter() - t0
    acc, outs = score(trainer.base, trainer.data.samples)
    return {"trainer": "finetune", "seconds": round(seconds, 1), **acc, "examples": outs[:4]}


def theirs(model_dir, data_dir, work, args):
    from finetune_app.core import patches
    from finetune_app.core.data import open_dataset, split
    from finetune_app.core.models import load_base

    ds = open_dataset(data_dir)
    tr, va = split(ds)
    mdir = work / "mlxvlm-data"
    mdir.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", tr), ("valid", va)):
        with open(mdir / f"{name}.jsonl", "w") as fh:
            for i in idx:
                s = ds.sample(i)
                fh.write(json.dumps({"images": [str(s.images[0].path)], "messages": [
                    {"role": "user", "content": s.prompt}, {"role": "assistant", "content": s.answer}]}) + "\n")
    out = work / "theirs"
    cmd = [sys.executable, "-m", "mlx_vlm.train", "--model", str(model_dir), "--data", str(mdir),
           "--iters", str(args.iters), "--batch-size", "4", "--learning-rate", "1e-3", "--lora-rank", "16",
           "--lora-alpha", "16", "--lora-dropout", "0", "--train-on-completions", "--seed", str(args.seed),
           "--steps-per-eval", "100000", "--steps-per-save", "100000", "--output-path", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        return {"trainer": "mlx_vlm.train", "failed": r.stderr.strip().splitlines()[-1:]}
    from finetune_app.core import adapters

    patches.apply()
    base = load_base(model_dir)
    adapters.load_into(base, out if out.is_dir() else out.parent)
    samples = [ds.sample(i) for i in va]
    acc, outs = score(base, samples)
    return {"trainer": "mlx_vlm.train", "seconds": round(seconds, 1), **acc, "examples": outs[:4]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="qwen2_vl")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--valid", type=int, default=60)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--theirs", action="store_true")
    p.add_argument("--set", action="append", default=[], help="override a TrainConfig field: KEY=JSON")
    p.add_argument("--model", default=None, help="model folder (default: a tiny one of --family)")
    args = p.parse_args()
    from finetune_app.core.data.demo import make_shapes_dataset
    from finetune_app.testing.tiny_models import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="learn-shapes-"))
    try:
        model_dir = Path(args.model) if args.model else build_tiny_model(args.family, work / "model")
        data_dir = make_shapes_dataset(work / "shapes", n_train=args.train, n_valid=args.valid, size=args.size, seed=args.seed) or work / "shapes"
        print(json.dumps({"family": args.family, "iters": args.iters, **ours(model_dir, data_dir, work, args)}), flush=True)
        if args.theirs:
            print(json.dumps({"family": args.family, "iters": args.iters, **theirs(model_dir, data_dir, work, args)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
