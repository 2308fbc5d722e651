"""Time indexing + a full text-level validation of a 100,000-row JSONL (target: < 5 s).

    python3 benchmarks/bench_index.py [--rows N] [--format messages|sharegpt|caption]

Rows reference images that do not exist: check_images=False must never touch them, which is
the point (opening and validating must not load images).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_app.core.data import open_dataset, split, validate  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def row(i: int, fmt: str, rng: random.Random) -> dict:
    caption = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} number {i}"
    image = f"images/{i:06d}.png"
    if fmt == "caption":
        return {"image": image, "caption": caption}
    if fmt == "sharegpt":
        return {"image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": caption}]}
    return {"images": [image], "messages": [
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "What is in the picture?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": caption}]}]}


def _load() -> str:
    try:
        return "%.1f" % os.getloadavg()[0]
    except OSError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--format", default="messages", choices=("messages", "sharegpt", "caption"))
    ap.add_argument("--budget", type=float, default=5.0, help="seconds allowed (exit 1 above)")
    args = ap.parse_args(argv)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for i in range(args.rows):
                fh.write(json.dumps(row(i, args.format, rng)) + "\n")
        size = path.stat().st_size
        c0, t0 = time.process_time(), time.perf_counter()
        ds = open_dataset(path)
        t1 = time.perf_counter()
        report = validate(ds, check_images=False)
        c2, t2 = time.process_time(), time.perf_counter()
        train, valid = split(report)
        t3 = time.perf_counter()
        page = [ds.sample(i) for i in range(0, len(ds), max(1, len(ds) // 50))]
        t4 = time.perf_counter()
    total = t2 - t0
    print(f"{args.rows:,} rows ({args.format}, {size / 1e6:.1f} MB JSONL)")
    print(f"open_dataset:                {t1 - t0:6.2f} s")
    print(f"validate(check_images=False): {t2 - t1:6.2f} s  -> {report.rows_usable:,} usable")
    print(f"open + validate:             {total:6.2f} s  (budget {args.budget:.1f} s; "
          f"CPU time {c2 - c0:.2f} s, load average {_load()})")
    print(f"split(report):               {t3 - t2:6.2f} s  -> {len(train):,} train / "
          f"{len(valid):,} valid")
    print(f"50 random-access samples:    {(t4 - t3) * 1000:6.1f} ms")
    assert report.rows_usable == args.rows and len(page) >= 50
    return 0 if total < args.budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
