"""Packing on or off: real (non-padding) tokens per second of the training loop on variable-length
text rows, same model, same data, same steps, runs alternated. Also the padding each layout
computes (planned on the host, so exact).

    python benchmarks/bench_packing.py --rows 160 --batch-size 8 --repeats 2 [--hidden 256 --layers 4]

Rows are Alpaca-shaped: instruction and answer lengths drawn from log-normal distributions
(median ~12 and ~40 words, long tails), filler words from a fixed list; seeded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

WORDS = ("the of and to in is that for it as with was on be by this are from at or an which have not "
         "model data answer question light water river stone paper window garden music number city").split()


def write_rows(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            q = max(3, int(rng.lognormal(np.log(12), 0.6)))
            a = max(2, min(300, int(rng.lognormal(np.log(40), 0.9))))
            words = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
            f.write(json.dumps({"messages": [{"role": "user", "content": words(q)},
                                             {"role": "assistant", "content": words(a)}]}) + "\n")


def one_run(model: Path, data: Path, out: Path, pack: bool, args) -> dict:
    from finetune_app.core.config import TrainConfig
    import time

    from finetune_app.core.training.events import StateChanged
    from finetune_app.core.training.trainer import Trainer

    cfg = TrainConfig(model=str(model), data=str(data), output=str(out), epochs=args.epochs,
                      batch_size=args.batch_size, valid_fraction=0.0, sample_count=0, steps_per_eval=10**6,
                      save_every=10**6, steps_per_report=10**6, pack=pack, seed=0, max_length=4096)
    marks = {}  # the training loop's time: from "started" to "finished" (setup excluded)
    t = Trainer(cfg, listeners=[lambda e: isinstance(e, StateChanged) and marks.setdefault(e.state, time.perf_counter())])
    result = t.run()
    seconds = marks["finished"] - marks["started"]
    real = sum(len(e.input_ids) for e in t.data.train) * args.epochs
    positions, shapes = 0, set()
    for ep in range(int(args.epochs)):
        for pos in t.batches_of_epoch(ep):
            b = t.family.plan([t.data.train[i] for i in pos])
            positions += b.src.size
            shapes.add((b.src.shape, b.sel.shape))
    return {"pack": pack, "loop_seconds": seconds, "steps": result.step, "real_tokens": real,
            "computed_positions": positions, "padding": 1 - real / positions, "step_shapes": len(shapes),
            "real_tok_per_s": real / seconds, "final_loss": result.final_loss}


def main() -> None:
    from finetune_app.testing.tiny_models import build_tiny_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="llama")
    p.add_argument("--rows", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--hidden", type=int, default=0, help="hidden size override (0: the tiny model's)")
    p.add_argument("--layers", type=int, default=0)
    p.add_argument("--json-out")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pack-"))
    over = {}
    if args.hidden:
        over.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden, head_dim=args.hidden // 4,
                    num_attention_heads=4, num_key_value_heads=2)
    if args.layers:
        over["num_hidden_layers"] = args.layers
    model = build_tiny_model(args.family, work / "model", **over)
    data = work / "data.jsonl"
    write_rows(data, args.rows, seed=0)
    lines = []
    for r in range(args.repeats):
        for pack in (False, True) if r % 2 == 0 else (True, False):
            line = {"repeat": r, **one_run(model, data, work / f"run-{r}-{pack}", pack, args)}
            print(json.dumps(line), flush=True)
            lines.append(line)
    for pack in (False, True):
        rates = sorted(x["real_tok_per_s"] for x in lines if x["pack"] == pack)
        print(f"pack={pack}: median real tokens/s {rates[len(rates) // 2]:.0f} "
              f"(padding {lines[0 if not pack else 1]['padding']:.1%})")
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)


if __name__ == "__main__":
    main()
