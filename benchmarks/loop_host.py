"""Host time per training step outside the device's evaluation (#16 loopipe).

    python benchmarks/loop_host.py                       # tiny Llama text + tiny Qwen2-VL, built here
    python benchmarks/loop_host.py --model M --data D [--batch-size 4] [--steps 60] [--set KEY=JSON] [--sync]

Runs our Trainer unchanged in this process (settings as profile_ours.py: constant LR, no clipping,
no evaluation or saving inside the steps) and times, per step after --warmup steps:
  wall        step to step (the end of one step's wait to the next's; reports every 10 steps)
  wait        the loop blocked in `mx.eval` of the step's outputs: the device still working
  async_eval  the loop blocked in `mx.async_eval` (pipelined loop): MLX returns from it only once
              at most 10 tasks are in flight, a task being one op on the CPU (so there it returns
              near the step's end) and one committed graph (MLX_MAX_OPS_PER_BUFFER ops) on CUDA
  host        wall - wait - async_eval: the loop's own work on the step's critical path; on a GPU
              the device sits idle for about this long every step (nothing queued)
  make_batch  Trainer.make_batch of the training batches (with pipelining it runs while the device
              works, so it leaves `host`)
  build       Step.__call__: the lazy graph of the step (and the numpy -> mx inputs)
  tower_async_eval  (in make_batch) the frozen tower's fill started (vision_cache.py): on the CPU
              it blocks as the loop's async_eval does, so it is device time, not host time
Prints one line per model and a JSON line (`LOOP_HOST {...}`). On this shared CPU the "device" is
the same cores, so `host` there measures the loop, and wall is what the user gets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(model: str, data: str, *, steps: int, warmup: int, batch_size: int, overrides: dict,
            sync: bool = False) -> dict:
    import mlx.core as mx

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import loop as L
    from finetune_app.core.training import trainer as T

    out = Path(tempfile.mkdtemp(prefix="loop-host-")) / "run"
    cfg = TrainConfig(model=model, data=data, output=str(out), lr_schedule="constant", grad_clip=None,
                      weight_decay=0.0, iters=steps, epochs=None, batch_size=batch_size, steps_per_eval=10**9,
                      save_every=10**9, sample_count=0, **overrides)
    times = {"wait": [], "async_eval": [], "tower_async_eval": [], "make_batch": [], "build": []}
    loop_file = L.__file__
    orig = {"eval": mx.eval, "async_eval": mx.async_eval, "make_batch": T.Trainer.make_batch, "step": T.Step.__call__}

    def waited(*a, **k):  # only the loop's wait for a step's outputs
        if sys._getframe(1).f_code.co_filename != loop_file:
            return orig["eval"](*a, **k)
        t0 = time.perf_counter()
        r = orig["eval"](*a, **k)
        marks.append(time.perf_counter())
        times["wait"].append(marks[-1] - t0)
        return r

    def started(*a, **k):  # MLX blocks in async_eval while over 10 tasks run (CPU: an op; CUDA: a graph)
        t0 = time.perf_counter()
        r = orig["async_eval"](*a, **k)
        key = "async_eval" if sys._getframe(1).f_code.co_filename == loop_file else "tower_async_eval"
        times[key].append(time.perf_counter() - t0)
        return r

    def make_batch(self, examples, split="train"):
        t0 = time.perf_counter()
        r = orig["make_batch"](self, examples, split)
        if split == "train":
            times["make_batch"].append(time.perf_counter() - t0)
        return r

    def step(self, *a, **k):
        t0 = time.perf_counter()
        r = orig["step"](self, *a, **k)
        times["build"].append(time.perf_counter() - t0)
        return r

    marks = []
    L.mx.eval, T.Trainer.make_batch, T.Step.__call__ = waited, make_batch, step
    L.mx.async_eval = started  # (the module's: the loop's, and the tower fill's in make_batch)
    ahead = L.builds_ahead
    if sync:  # the synchronous loop (as GRPO's), for before/after in one tree
        L.builds_ahead = lambda run: False
    try:
        T.Trainer(cfg).run()
    finally:
        L.mx.eval, T.Trainer.make_batch, T.Step.__call__ = orig["eval"], orig["make_batch"], orig["step"]
        L.mx.async_eval, L.builds_ahead = orig["async_eval"], ahead
        shutil.rmtree(out.parent, ignore_errors=True)
    n = len(marks) - 1 - warmup
    wall = (marks[-1] - marks[warmup]) / n
    mean = {k: sum(v[warmup + 1:warmup + 1 + n]) / max(1, len(v[warmup + 1:warmup + 1 + n])) for k, v in times.items()}
    res = {"wall_ms": wall * 1e3, **{f"{k}_ms": v * 1e3 for k, v in mean.items()}}
    res["host_ms"] = res["wall_ms"] - res["wait_ms"] - res["async_eval_ms"] - res["tower_async_eval_ms"]
    res["load"] = os.getloadavg()[0]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="TrainConfig field override KEY=JSON")
    p.add_argument("--sync", action="store_true", help="the synchronous loop (next batch built after the step)")
    args = p.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.model:
        runs = [(Path(args.model).name, args.model, args.data)]
    else:  # tiny models of the real architectures, with the demo datasets
        from finetune_app.core.data.demo import make_instruction_dataset, make_shapes_dataset
        from finetune_app.testing.tiny_models import build_tiny_model

        root = Path(tempfile.mkdtemp(prefix="loop-host-models-"))
        text, shapes = root / "instructions", root / "shapes"
        make_instruction_dataset(text, n=200, seed=0)
        make_shapes_dataset(shapes, n_train=200, n_valid=8, size=64, seed=0)
        runs = [("tiny-llama text", str(build_tiny_model("llama", root / "llama", seed=0)), str(text)),
                ("tiny-qwen2_vl", str(build_tiny_model("qwen2_vl", root / "qwen2_vl", seed=0)), str(shapes))]
    for name, model, data in runs:
        r = measure(model, data, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                    overrides=overrides, sync=args.sync)
        print(f"{name}: ms/step wall {r['wall_ms']:.1f}  wait {r['wait_ms']:.1f} + async_eval {r['async_eval_ms']:.1f}  "
              f"+ tower {r['tower_async_eval_ms']:.1f}  host {r['host_ms']:.1f}  "
              f"(make_batch {r['make_batch_ms']:.1f}, build {r['build_ms']:.1f})  load {r['load']:.1f}")
        print("LOOP_HOST " + json.dumps({"model": name, "loop": "sync" if args.sync else "ahead",
                                         **{k: round(v, 2) for k, v in r.items()}}))
    if not args.model:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
