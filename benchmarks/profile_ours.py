"""Where one training step of our engine spends its time (companion of side_by_side.py).

    python benchmarks/profile_ours.py --model MODEL_DIR --data DATA_DIR [--steps 60] [--cprofile 25]
                                      [--set cache_vision=false] [--batch-size 4]

Runs the same Trainer with settings like side_by_side.py's (constant LR, no clipping, no eval/saving
inside the steps) in this process, with timers around the phases of a step:
  collate   host side: build the batch (Trainer.make_batch, or _collate in older trees)
  build     building the lazy graph: value_and_grad + optimizer.update (Step.__call__; Trainer.train_step in older trees)
  compute   mx.eval of parameters, optimizer state and loss (the actual forward/backward/update)
  other     the rest of the loop (LR schedule, .item() syncs, reports)
Prints mean ms per step per phase over the steps after --warmup, and with --cprofile N the top N
functions by cumulative time (cProfile over the same steps).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cprofile", type=int, default=0, help="print the top N functions (cumulative)")
    p.add_argument("--set", action="append", default=[], help="TrainConfig field override KEY=JSON")
    args = p.parse_args(argv)

    import mlx.core as mx

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import trainer as T

    out = Path(tempfile.mkdtemp(prefix="profile-ours-")) / "run"
    cfg = TrainConfig(model=args.model, data=args.data, output=str(out), lr_schedule="constant", grad_clip=None,
                      weight_decay=0.0, iters=args.steps, epochs=None, batch_size=args.batch_size,
                      steps_per_eval=10**9, save_every=10**9, steps_per_report=10, sample_count=0)
    for item in args.set:
        k, v = item.split("=", 1)
        cfg = cfg.replace(**{k: json.loads(v)})

    phases = {"collate": [], "build": [], "compute": [], "step": []}
    batch_fn = "make_batch" if hasattr(T.Trainer, "make_batch") else "_collate"  # the engine's name for it
    step_owner, step_fn = (T.Step, "__call__") if hasattr(T, "Step") else (T.Trainer, "train_step")
    orig_collate, orig_step, orig_eval = getattr(T.Trainer, batch_fn), getattr(step_owner, step_fn), mx.eval
    state = {"in_loop": False}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            r = fn(*a, **k)
            phases[name].append(time.perf_counter() - t0)
            return r
        return wrapper

    setattr(T.Trainer, batch_fn, timed("collate", orig_collate))
    setattr(step_owner, step_fn, timed("build", orig_step))

    def eval_hook(*a, **k):  # only the step's own eval (the one right after train_step)
        if state["in_loop"] and len(phases["build"]) > len(phases["compute"]):
            t0 = time.perf_counter()
            r = orig_eval(*a, **k)
            phases["compute"].append(time.perf_counter() - t0)
            return r
        return orig_eval(*a, **k)

    T.mx.eval = eval_hook
    marks = []
    prof = cProfile.Profile()

    def listener(ev):
        name = type(ev).__name__
        if name == "StateChanged" and ev.state == "started":
            state["in_loop"] = True
        if name == "StateChanged" and ev.state in ("finished", "failed"):
            state["in_loop"] = False
        if name == "TrainReport":
            marks.append((ev.step, time.perf_counter()))
            if args.cprofile and ev.step == args.warmup:
                prof.enable()
            if args.cprofile and ev.step == args.steps:
                prof.disable()

    t0 = time.perf_counter()
    trainer = T.Trainer(cfg, listeners=[listener])
    trainer.run()
    total = time.perf_counter() - t0
    T.mx.eval = orig_eval
    w = args.warmup
    n = args.steps - w
    wall = [(s, t) for s, t in marks]
    start = next(t for s, t in wall if s >= w)
    end = wall[-1][1]
    per_step = (end - start) / max(1, wall[-1][0] - next(s for s, t in wall if s >= w))
    res = {k: sum(v[w:]) / max(1, len(v[w:])) * 1000 for k, v in phases.items() if v}
    res["step_wall"] = per_step * 1000
    res["other"] = res["step_wall"] - res.get("collate", 0) - res.get("build", 0) - res.get("compute", 0)
    print(f"model {args.model}  steps {args.steps} (mean over {n} after {w} warm-up)  load {os.getloadavg()[0]:.2f}")
    print("ms/step: " + "  ".join(f"{k} {res[k]:.1f}" for k in ("step_wall", "collate", "build", "compute", "other")))
    print(f"(process total {total:.1f} s, examples/s {args.batch_size / per_step:.2f})")
    if args.cprofile:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.cprofile)
        print(s.getvalue())
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.cprofile)
        print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
