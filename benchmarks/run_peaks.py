"""Per-step MLX peak of ours' real training run, by batch shape, against the same step alone (#16).

The side-by-side run's MLX peak (ours 24.7 GB vs mlx_lm 21.5 on the H200, 1,000 Alpaca rows) is a
whole run's; `text_mem.py` measures one step at a time. This runs the real trainer (the CLI's
path: the loop with its batch built ahead, hooks, bounded cache) on a model folder and data, resets
MLX's peak before each step and records, per step, the peak above what was active before it and
the step's (M, K) shape. Per shape: the highest such peak in the run. Compare with
`text_mem.py`'s per-shape step peak on the same model: a run above its own steps has an excess
outside the step graph (what the loop holds, the queue ahead of the device, the cache).

    python benchmarks/run_peaks.py --model M --data D --out /tmp/rp.json [--sync]

Candidates for an excess, one flag each: `--sync` (the loop without the batch built during the
step), `--cache-gb` (MLX's buffer cache limit, below the trainer's), `--memory-limit-gb`
(`mx.set_memory_limit`: MLX's eval stops queueing work while active memory is above it, so the
buffers of ops queued ahead of the device are bounded; on CUDA it also trims the cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--sync", action="store_true", help="the synchronous loop (no batch built during the step)")
    p.add_argument("--steps", type=int, default=0, help="stop after N steps (0: one epoch)")
    p.add_argument("--cache-gb", type=float, default=None, help="MLX's buffer cache limit for the run")
    p.add_argument("--memory-limit-gb", type=float, default=None, help="mx.set_memory_limit for the run")
    a = p.parse_args()
    import mlx.core as mx

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training import loop, step as step_mod
    from finetune_app.core.training.trainer import Trainer

    if a.sync:
        loop.builds_ahead = lambda run: False
    if a.cache_gb is not None:
        mx.set_cache_limit(int(a.cache_gb * 1e9))
    if a.memory_limit_gb is not None:
        mx.set_memory_limit(int(a.memory_limit_gb * 1e9))
    rec: list[dict] = []
    state = {"shape": None, "held": 0}
    real_call = step_mod.Step.__call__

    def close() -> None:  # the step before: its peak from its call to this one (its eval, the hooks)
        if state["shape"] is not None:
            rec.append({"shape": state["shape"], "peak_above_held_gb": (mx.get_peak_memory() - state["held"]) / 1e9,
                        "held_gb": state["held"] / 1e9})

    def call(self, batches, norm=None):
        close()
        b = batches[0]
        state["shape"] = [int(b.input_ids.shape[1]), int(b.sel.shape[0])] if getattr(b, "sel", None) is not None else None
        state["held"] = mx.get_active_memory()
        mx.reset_peak_memory()
        return real_call(self, batches, norm)

    step_mod.Step.__call__ = call
    real_evaluate = Trainer.evaluate

    def evaluate(self):  # validation (and what follows it: the save) recorded apart from the last step
        close()
        state["shape"], state["held"] = ["validation"], mx.get_active_memory()
        mx.reset_peak_memory()
        return real_evaluate(self)

    Trainer.evaluate = evaluate
    out = Path(tempfile.mkdtemp(prefix="run_peaks_"))
    cfg = TrainConfig(model=a.model, data=a.data, output=str(out), epochs=1, batch_size=4, learning_rate=1e-4,
                      optimizer="adamw", lr_schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=None,
                      lora_rank=16, lora_alpha=16.0, lora_dropout=0.0, steps_per_eval=10**9, val_batches=1,
                      save_every=10**9, sample_count=0, steps_per_report=5, **({"iters": a.steps} if a.steps else {}))
    t = time.perf_counter()
    result = Trainer(cfg).run()
    wall = time.perf_counter() - t
    close()
    by_shape: dict[str, dict] = {}
    for r in rec:
        k = "x".join(map(str, r["shape"] or ["library path"]))
        seen = by_shape.setdefault(k, {"max_gb": -1.0, "steps": 0})
        seen["steps"] += 1
        if r["peak_above_held_gb"] > seen["max_gb"]:
            seen |= {"max_gb": round(r["peak_above_held_gb"], 4), "held_gb": round(r["held_gb"], 4)}
    for k, v in sorted(by_shape.items(), key=lambda kv: [int(x) if x.isdigit() else 1 << 30 for x in kv[0].split("x")]):
        print(f"M x K {k:>10}: {v['steps']:4} steps, highest step peak above held {v['max_gb']:.4f} GB (held {v['held_gb']:.3f})")
    top = max((v for k, v in by_shape.items() if k != "validation"), key=lambda v: v["max_gb"])
    print(f"training peak (highest step above held, plus held): {top['max_gb'] + top['held_gb']:.3f} GB; "
          f"cache at the end {mx.get_cache_memory() / 1e9:.3f} GB; trainer {wall:.1f} s, {result.step} steps")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"sync": a.sync, "cache_gb": a.cache_gb, "memory_limit_gb": a.memory_limit_gb,
                                       "wall_s": round(wall, 2), "steps": rec, "by_shape": by_shape}, indent=1))


if __name__ == "__main__":
    main()
