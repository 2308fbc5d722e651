"""Time the data preparation before the first step (`tokenising: N/M`), sequential vs threaded.

    python3 benchmarks/bench_prepare.py [--rows 200] [--size 448] [--workers 1 2 8]

A tiny random Qwen2-VL (the real Qwen2-VL processor and chat template) and a shapes captioning
set at --size px; each worker count prepares the same rows with the family's prepare_example, as
Trainer.setup does, and the examples are checked to be identical to the sequential ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from finetune_app.core.config import TrainConfig  # noqa: E402
from finetune_app.core.data.demo import make_shapes_dataset  # noqa: E402
from finetune_app.core.data.tokenize import Encoder  # noqa: E402
from finetune_app.core.families import family_for  # noqa: E402
from finetune_app.core.models import load_base  # noqa: E402
from finetune_app.core.training.prepare import prepare_examples  # noqa: E402
from finetune_app.testing.tiny_models import build_tiny_model  # noqa: E402


def snapshot(prepared):
    return [(e.input_ids.tobytes(), e.target_mask.tobytes(),
             sorted((k, v.tobytes()) for k, v in e.images.items())) for e in prepared.train + prepared.valid]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model("qwen2_vl", Path(tmp) / "model", seed=0)
        data = make_shapes_dataset(Path(tmp) / "data", n_train=args.rows - args.rows // 10,
                                   n_valid=args.rows // 10, size=args.size, seed=0)
        base = load_base(str(model))
        cfg = TrainConfig(model=str(model), data=str(data), output=str(Path(tmp) / "out"), max_length=4096)
        first = None
        for w in args.workers:
            family = family_for(base)
            family.start(cfg)
            enc = Encoder(base, completion_only=cfg.completion_only, image_size=cfg.image_size,
                          image_features=family.image_features(), serve_target=cfg.serve_target)
            t = time.perf_counter()
            got = prepare_examples(cfg, base, enc, on_example=family.prepare_example, workers=w)
            dt = time.perf_counter() - t
            snap = snapshot(got)
            first = first or snap
            print(f"workers {w}: {len(got.train) + len(got.valid)} rows in {dt:.2f} s "
                  f"({(len(got.train) + len(got.valid)) / dt:.1f} rows/s); identical to the first: {snap == first}")


if __name__ == "__main__":
    main()
