"""One compiled LoRA training step, ours against mlx-lm's, at a few fixed batch shapes (#16).

Tells whether our text step is slower per shape (the step itself) or only across a run (retraces,
padding). For each tool, on the same random-weight model (Llama-3.2-3B-sized by default, the
side-by-side harness's LLAMA_3B config; `--size tiny` for a CPU check), the same LoRA (mlx-lm's
`linear_to_lora_layers`, rank 16, every layer) and AdamW (lr 1e-4), and the same token rows:

- ours: the real `training/step.py` `Step` on the text family's fast path (compiled, no gradient
  clipping), batches planned by the family (`gather_plan`: supervised positions only reach the head),
  under the trainer's bounded buffer cache;
- mlx_lm: the step `mlx_lm.tuner.trainer.train` builds (`default_loss`, `nn.value_and_grad`,
  `mx.compile` with the model, optimizer and random state), fed the padded rows and (offset,
  length) pairs its `iterate_batches` would give.

Per shape (B rows of about L tokens, the longest exactly L, `--supervised` of each row the answer):
the first call (a trace at a new shape; the first shape's also loads the step's kernels) and the
median of `--steps` steady-state steps, each `mx.eval`-synced with the parameters and optimizer
state. Prints a table and writes JSON to `--out`.

    python benchmarks/step_micro.py --out /tmp/micro.json                # GPU: Llama-3B-sized, bf16
    python benchmarks/step_micro.py --size tiny --out /tmp/micro.json    # CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def build_model(size: str, dtype: str, dest: Path) -> Path:
    from side_by_side import LLAMA_3B, SMALL_TEXT, child_build

    if not (dest / "config.json").is_file():
        t = time.perf_counter()
        child_build({"family": "llama", "dest": str(dest), "dtype": dtype,
                     "overrides": LLAMA_3B if size == "real" else SMALL_TEXT})
        print(f"built the {size} Llama in {dest} ({time.perf_counter() - t:.0f} s)", flush=True)
    return dest


def rows_for(L: int, batch_size: int, supervised: float, vocab: int, seed: int):
    """B token rows of length L down to ~0.85 L (a length-sorted batch), each its last
    `supervised` share the answer: (ids, prompt lengths)."""
    rng = np.random.default_rng(seed)
    lengths = [L] + sorted(rng.integers(int(0.85 * L), L + 1, batch_size - 1).tolist(), reverse=True)
    rows = [rng.integers(3, vocab, n).astype(np.int32) for n in lengths]
    prompts = [max(1, int(round(n * (1 - supervised)))) for n in lengths]
    return rows, prompts


def timed(fn, steps: int, warmup: int) -> dict:
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"first_call_s": round(first, 4), "step_s": round(statistics.median(times), 5),
            "step_min_s": round(min(times), 5)}


def ours(folder: Path, shapes: list, a) -> dict:
    import mlx.core as mx

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.families import family_for
    from finetune_app.core.models import load_base
    from finetune_app.core.training.memory import bounded_cache
    from finetune_app.core.training.objectives import objective
    from finetune_app.core.training.optim import make_optimizer
    from finetune_app.core.training.step import Step

    cfg = TrainConfig(model=str(folder), lora_rank=a.rank, learning_rate=a.lr, grad_clip=None)
    base = load_base(folder)
    adapters.attach(base, cfg)
    family = family_for(base)
    family.start(cfg)
    assert family.fast and family.compiled, "the text family's compiled fast path"
    opt = make_optimizer("adamw", a.lr, 0.0)
    step = Step(base.model, opt, family, objective("sft", cfg), grad_clip=None)
    out = {}
    with bounded_cache():
        for L, (rows, prompts) in shapes:
            examples = [SimpleNamespace(input_ids=r, target_mask=np.arange(len(r)) >= p, index=i)
                        for i, (r, p) in enumerate(zip(rows, prompts))]
            batch = family.plan(examples)

            def one():
                loss, _ = step([batch])
                mx.eval(loss, base.model.trainable_parameters(), opt.state)

            mx.reset_peak_memory()
            out[L] = timed(one, a.steps, a.warmup) | {"positions": list(batch.src.shape),
                                                      "supervised": int(batch.sel.shape[0]),
                                                      "peak_gb": round(mx.get_peak_memory() / 1e9, 2)}
    return out


def mlx_lm(folder: Path, shapes: list, a) -> dict:
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.tuner.trainer import default_loss
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, _ = load(str(folder))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": a.rank, "scale": 20.0, "dropout": 0.0})
    opt = optim.AdamW(learning_rate=a.lr, weight_decay=0.0)
    loss_value_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, opt.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)  # as mlx_lm.tuner.trainer.train (no accumulation)
    def step(batch, prev_grad, do_update):
        (lvalue, toks), grad = loss_value_and_grad(model, *batch)
        if do_update:
            opt.update(model, grad)
            grad = None
        return lvalue, toks, grad

    model.train()
    out = {}
    for L, (rows, prompts) in shapes:
        width = -(-max(len(r) for r in rows) // 32) * 32  # iterate_batches: padded to a multiple of 32
        ids = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
        batch = (mx.array(ids), mx.array([[p, len(r)] for r, p in zip(rows, prompts)]))

        def one():
            lvalue, toks, _ = step(batch, None, True)
            mx.eval(lvalue, toks, state)

        mx.reset_peak_memory()
        out[L] = timed(one, a.steps, a.warmup) | {"positions": [len(rows), width - 1],
                                                  "peak_gb": round(mx.get_peak_memory() / 1e9, 2)}
    return out


def main() -> None:
    import mlx.core as mx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "real"), default=None, help="default: real on CUDA, tiny else")
    p.add_argument("--model", default=None, help="a Llama model folder instead of building one")
    p.add_argument("--work", default=None, help="where the built model is kept (reused; default a temp folder)")
    p.add_argument("--dtype", default=None, help="built weights' dtype (default bfloat16 on CUDA, float32 else)")
    p.add_argument("--lengths", default="128,256,512")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--supervised", type=float, default=0.65, help="answer share of each row (Alpaca: ~0.6-0.7)")
    p.add_argument("--steps", type=int, default=10, help="timed steady-state steps per shape (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tools", default="ours,mlx_lm")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cuda = mx.cuda.is_available() if hasattr(mx, "cuda") else False
    size = a.size or ("real" if cuda else "tiny")
    dtype = a.dtype or ("bfloat16" if cuda else "float32")
    tmp = None
    if a.model:
        folder = Path(a.model)
    else:
        work = Path(a.work) if a.work else Path(tmp := tempfile.mkdtemp(prefix="step_micro_"))
        folder = build_model(size, dtype, work / f"llama-{size}-{dtype}")
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    shapes = [(L, rows_for(L, a.batch_size, a.supervised, vocab, seed=L)) for L in map(int, a.lengths.split(","))]
    results = {"device": str(mx.default_device()), "device_info": {k: v for k, v in mx.device_info().items()
                                                                     if isinstance(v, (int, float, str))},
               "model": str(folder), "size": size, "dtype": dtype, "batch_size": a.batch_size,
               "supervised": a.supervised, "steps": a.steps, "tools": {}}
    for tool in a.tools.split(","):
        t = time.perf_counter()
        results["tools"][tool] = {"L": (ours if tool == "ours" else mlx_lm)(folder, shapes, a)}
        results["tools"][tool]["wall_s"] = round(time.perf_counter() - t, 1)
        gc.collect()
        mx.clear_cache()
    print(f"{'tool':8} {'L':>5} {'positions':>10} {'K':>5} {'first call s':>12} {'step ms':>9} {'min ms':>8} "
          f"{'peak GB':>8}")
    for tool, r in results["tools"].items():
        for L, x in r["L"].items():
            print(f"{tool:8} {L:>5} {'x'.join(map(str, x['positions'])):>10} {x.get('supervised', '-'):>5} "
                  f"{x['first_call_s']:>12.2f} {1e3 * x['step_s']:>9.1f} {1e3 * x['step_min_s']:>8.1f} "
                  f"{x['peak_gb']:>8.2f}")
    if {"ours", "mlx_lm"} <= set(results["tools"]):
        for L in results["tools"]["ours"]["L"]:
            o, m = results["tools"]["ours"]["L"][L], results["tools"]["mlx_lm"]["L"][L]
            print(f"L={L}: ours/mlx_lm step time x{o['step_s'] / m['step_s']:.2f}, "
                  f"first call x{o['first_call_s'] / m['first_call_s']:.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
