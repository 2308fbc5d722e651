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

`--graph` (ours): the step's graph walked as vlm_step_micro.py's `--graph` does (matmuls by dtype,
AddMMs, bytes the non-view primitives write before fusion); `--count-ops` (ours): one more step's
graph as compiled (fused kernels); `--steps 0`: those only, nothing run (a CPU can read a 3B-width
proxy's graphs: `--size real --layers 4`); `--lora-branch previous`: ours with the LoRA branch as
before #16 loracut (`y + scale * (x @ A) @ B`), the before/after of its one-AddMM form.

`--longest GB` (default 24) instead: per tool and batch size (`--longest-batch`), the longest row
whose one step's MLX peak stays within GB (weights, LoRA and AdamW state included), found in at
most `--probes` lengths (doubling, then interpolation to `--resolution` tokens; each length a
retrace), and for ours the planner's prediction (`estimates.run_memory_gb`, as `fit_check` asks it)
next to each measured peak: the "will it fit" planner's 15% check in the same call.

    python benchmarks/step_micro.py --longest 24 --out /tmp/longest.json           # GPU
    python benchmarks/step_micro.py --size tiny --longest 0.2 --out /tmp/l.json     # CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def build_model(size: str, dtype: str, dest: Path, layers: int | None = None) -> Path:
    from side_by_side import LLAMA_3B, SMALL_TEXT, child_build

    if not (dest / "config.json").is_file():
        t = time.perf_counter()
        over = (LLAMA_3B if size == "real" else SMALL_TEXT) | ({"num_hidden_layers": layers} if layers else {})
        child_build({"family": "llama", "dest": str(dest), "dtype": dtype, "overrides": over})
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


@contextmanager
def ours_tool(folder: Path, a, buckets=None):
    """Our step on the text family's fast path, under the trainer's bounded cache: yields
    run(rows, prompts) -> (one synced step, shape facts) and the planner's inputs for the model.
    `buckets`: a run's ShapePlan (default: each batch padded on its own)."""
    import mlx.core as mx

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.families import family_for
    from finetune_app.core.models import describe, load_base
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
    family.buckets = buckets
    opt = make_optimizer("adamw", a.lr, 0.0)
    step = Step(base.model, opt, family, objective("sft", cfg), grad_clip=None)

    def run(rows, prompts):
        examples = [SimpleNamespace(input_ids=r, target_mask=np.arange(len(r)) >= p, index=i)
                    for i, (r, p) in enumerate(zip(rows, prompts))]
        batch = family.plan(examples)

        def one():
            loss, _ = step([batch])
            mx.eval(loss, base.model.trainable_parameters(), opt.state)

        from vlm_step_micro import counted, traced  # (the graph walkers, shared with the VLM step's benchmark)

        one.trace = lambda: traced(base.model, family, step.objective, step.inputs(batch))  # noqa: E731
        one.graph = counted(base.model, opt, lambda: step([batch])[0])
        return one, {"positions": list(batch.src.shape), "supervised_k": int(batch.sel.shape[0])}

    with bounded_cache():
        yield run, {"cfg": cfg, "info": describe(base), "config": base.config}


def fixed_shapes(tool_cm, folder: Path, shapes: list, a) -> dict:
    """One tool (`ours_tool` or `mlx_lm_tool`) at each fixed shape: first call, steady steps, peak."""
    import mlx.core as mx

    from mlx.utils import tree_flatten

    out = {}
    with tool_cm(folder, a) as (run, _):
        for L, (rows, prompts) in shapes:
            one, facts = run(rows, prompts)
            rec = out[L] = dict(facts)
            if a.graph and hasattr(one, "trace"):  # ours: the step's primitives, uncompiled, never run
                g = rec["graph"] = one.trace()
                print(f"  L={L} graph: {g['primitives']} primitives ({g['non_view']} non-view), {g['matmuls']} "
                      f"matmuls ({g['addmm']} AddMM, {g['float32_matmuls']} with a float32 operand), "
                      f"{g['written_gb']} GB written unfused", flush=True)
            if a.count_ops and hasattr(one, "graph"):  # ours: one more step's graph as compiled, never run
                from vlm_step_micro import count_ops

                arrays = [x for _, x in tree_flatten(one.graph()) if isinstance(x, mx.array)]
                rec["ops"] = count_ops(*arrays)
                del arrays
                print(f"  L={L} ops {rec['ops']['nodes']} ({rec['ops']['non_view']} non-view, "
                      f"{rec['ops']['fused_kernels']} fused)", flush=True)
            if a.steps:
                mx.reset_peak_memory()
                rec |= timed(one, a.steps, a.warmup) | {"peak_gb": round(mx.get_peak_memory() / 1e9, 2)}
    return out


@contextmanager
def mlx_lm_tool(folder: Path, a):
    """mlx-lm's own compiled step (as `mlx_lm.tuner.trainer.train` builds it): yields
    run(rows, prompts) -> (one synced step on the rows padded as `iterate_batches` pads them, facts)."""
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

    def run(rows, prompts):
        width = -(-max(len(r) for r in rows) // 32) * 32  # iterate_batches: padded to a multiple of 32
        ids = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
        batch = (mx.array(ids), mx.array([[p, len(r)] for r, p in zip(rows, prompts)]))

        def one():
            lvalue, toks, _ = step(batch, None, True)
            mx.eval(lvalue, toks, state)

        return one, {"positions": [len(rows), width - 1]}

    yield run, {}


# ---- --longest: the longest row one step can train within a memory budget ------------------------

def planner_bytes(meta: dict, B: int, L: int, share: float) -> float:
    """The planner's MLX peak for B rows padded to L (what the form and `data check` estimate, as
    `fit_check.predicted_vs_measured` asks it: `run_memory_gb(overhead=False)`), in bytes."""
    from finetune_app.core import estimates
    from finetune_app.core.training.batch import padded_length

    info = meta["info"]
    return 1e9 * estimates.run_memory_gb(meta["cfg"].replace(batch_size=B), parameters=info.parameters,
                                         dtype=info.dtype, quantization=info.quantization,
                                         sizes=estimates.model_sizes(meta["config"]), seq_len=padded_length(L),
                                         supervised=share, overhead=False)


def planner_longest(meta: dict, B: int, budget: float, cap: int, share: float) -> dict:
    """The planner's longest row at the budget: its estimate against the same MLX-peak budget
    (the comparison), and the form's `will_it_fit` on a device of that memory (80% of it, process
    overhead included: what a user is told)."""
    from finetune_app.core import estimates

    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if planner_bytes(meta, B, mid, share) <= budget else (lo, mid - 1)
    info = meta["info"]
    fit = estimates.will_it_fit(meta["cfg"].replace(batch_size=B), budget_bytes=int(budget), seq_len=lo or 1,
                                parameters=info.parameters, dtype=info.dtype, quantization=info.quantization,
                                sizes=estimates.model_sizes(meta["config"]), supervised=share)
    return {"estimate_longest": lo, "form_longest": fit.longest_row}


def search_longest(run, B: int, a, budget: float, cap: int, start: int, vocab: int, held: int, meta: dict | None,
                   tool: str) -> dict:
    """Doubling from `start` until a step's peak passes the budget (or `cap`), then interpolation
    (a quadratic in L fitted to the peaks measured so far; the midpoint when it does not narrow the
    bracket) down to `a.resolution` tokens; at most `a.probes` lengths, each a new trace. A probe's
    peak: MLX's peak over its first call and one more step, from `mx.reset_peak_memory()` with the
    weights, LoRA and optimizer state resident (what the process holds), less `held` (arrays from
    before this tool loaded)."""
    import mlx.core as mx

    res = a.resolution
    probes: dict[int, dict] = {}

    def probe(L: int) -> bool:
        rows, prompts = rows_for(L, B, a.supervised, vocab, seed=L)
        share = sum(len(r) - p for r, p in zip(rows, prompts)) / sum(map(len, rows))
        gc.collect()
        mx.clear_cache()
        one, facts = run(rows, prompts)
        resident = mx.get_active_memory() - held
        mx.reset_peak_memory()
        t = time.perf_counter()
        one()
        first = time.perf_counter() - t
        t = time.perf_counter()
        one()
        step_s = time.perf_counter() - t
        peak = mx.get_peak_memory() - held
        rec = {"L": L, "positions": facts["positions"], "peak_gb": round(peak / 1e9, 4),
               "resident_gb": round(resident / 1e9, 4), "first_call_s": round(first, 3), "step_s": round(step_s, 3)}
        if "supervised_k" in facts:
            rec["supervised_k"] = facts["supervised_k"]
        if meta is not None:
            pred = planner_bytes(meta, B, L, share)
            rec |= {"planner_gb": round(pred / 1e9, 4), "ratio": round(pred / peak, 3)}
        probes[L] = rec
        print(f"  {tool:7} B={B} L={L:>6} {'x'.join(map(str, rec['positions'])):>10} peak {rec['peak_gb']:8.3f} GB"
              + (f"  planner {rec['planner_gb']:8.3f} GB  x{rec['ratio']:.3f}" if meta is not None else "")
              + f"  first {first:6.2f} s  step {step_s:6.2f} s  {'ok' if peak <= budget else 'over'}", flush=True)
        return peak <= budget

    lo, hi, L = 0, None, min(start, cap)
    while len(probes) < a.probes:  # bracket: double up (or halve down when the start is already over)
        if probe(L):
            lo = L
            if hi is not None or L >= cap:
                break
            L = min(2 * L, cap)
        else:
            hi = L
            if lo:
                break
            L = L // 2 // res * res or L // 2  # (below the resolution too: not even `res` tokens fit)
            if not L:
                break
    while hi is not None and hi - lo > res and len(probes) < a.probes:  # narrow
        xs = np.array(sorted(probes), float)
        ys = np.array([probes[int(x)]["peak_gb"] * 1e9 for x in xs])
        guess = (lo + hi) / 2
        if len(xs) >= 3:
            c2, c1, c0 = np.polyfit(xs, ys, 2)
            roots = [r.real for r in np.roots([c2, c1, c0 - budget]) if abs(r.imag) < 1e-9 and lo < r.real < hi]
            if roots:
                guess = roots[0]
        L = int(min(max(guess // res * res, lo + res), hi - res))
        if probe(L):
            lo = L
        else:
            hi = L
    return {"longest": lo, "first_over": hi, "exact_to": (hi - lo) if hi is not None else None,
            "probes": list(probes.values()),
            **(planner_longest(meta, B, budget, cap, a.supervised) if meta is not None else {})}


def longest_mode(folder: Path, a, results: dict, vocab: int, cap: int) -> None:
    import mlx.core as mx

    budget = a.longest * 1e9
    batches = [int(b) for b in a.longest_batch.split(",")]
    results["longest"] = out = {"budget_gb": a.longest, "cap": cap, "resolution": a.resolution,
                                "batches": batches, "peak": "MLX peak over a new shape's first call and one more step, "
                                "weights + LoRA + AdamW state resident (from a fresh process: those plus the step)",
                                "tools": {}}
    print(f"longest row within {a.longest} GB of MLX peak (cap {cap}, to {a.resolution} tokens, <= {a.probes} probes)")
    for tool in a.tools.split(","):
        t = time.perf_counter()
        gc.collect()
        mx.clear_cache()
        held = mx.get_active_memory()
        out["tools"][tool] = rec = {}
        with (ours_tool if tool == "ours" else mlx_lm_tool)(folder, a) as (run, meta):
            load_s = time.perf_counter() - t
            for B in batches:
                b1 = rec.get("B=1", {}).get("longest")
                start = max(a.resolution, (b1 // B) // a.resolution * a.resolution) if b1 and B > 1 else a.longest_start
                rec[f"B={B}"] = search_longest(run, B, a, budget, cap, start, vocab, held,
                                               meta if tool == "ours" else None, tool)
        del run, meta  # the closures hold the model: freed before the next tool loads its own
        rec["held_before_gb"] = round(held / 1e9, 4)
        rec["load_s"], rec["wall_s"] = round(load_s, 1), round(time.perf_counter() - t, 1)
    print(f"{'tool':8} {'B':>3} {'longest':>8} {'first over':>10} {'probes':>6} {'planner':>8} {'form':>6} "
          f"{'planner/measured':>17}  wall s")
    for tool, rec in out["tools"].items():
        for B in batches:
            r = rec[f"B={B}"]
            ratios = [p["ratio"] for p in r["probes"] if "ratio" in p]
            span = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
            print(f"{tool:8} {B:>3} {r['longest']:>8} {str(r['first_over']):>10} {len(r['probes']):>6} "
                  f"{r.get('estimate_longest', '-'):>8} {r.get('form_longest', '-'):>6} {span:>17}  {rec['wall_s']}")
    if {"ours", "mlx_lm"} <= set(out["tools"]):
        for B in batches:
            o, m = out["tools"]["ours"][f"B={B}"]["longest"], out["tools"]["mlx_lm"][f"B={B}"]["longest"]
            print(f"B={B}: longest row within {a.longest} GB: ours {o}, mlx_lm {m}" + (f" (x{o / m:.2f})" if m else ""))
    ratios = [p["ratio"] for r in out["tools"].get("ours", {}).values() if isinstance(r, dict)
              for p in r.get("probes", []) if "ratio" in p]
    if ratios:
        worst = max(ratios, key=lambda x: abs(x - 1))
        out["planner_worst_ratio"] = worst
        print(f"planner vs measured (ours, every probe): x{min(ratios):.3f} to x{max(ratios):.3f}; "
              f"worst {abs(worst - 1):.1%} off ({'within' if abs(worst - 1) <= 0.15 else 'outside'} 15%)")


def main() -> None:
    import mlx.core as mx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "real"), default=None, help="default: real on CUDA, tiny else")
    p.add_argument("--model", default=None, help="a Llama model folder instead of building one")
    p.add_argument("--work", default=None, help="where the built model is kept (reused; default a temp folder)")
    p.add_argument("--dtype", default=None, help="built weights' dtype (default bfloat16 on CUDA, float32 else)")
    p.add_argument("--layers", type=int, default=None, help="layers of the built model (e.g. a 4-layer proxy)")
    p.add_argument("--lengths", default="128,256,512")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--supervised", type=float, default=0.65, help="answer share of each row (Alpaca: ~0.6-0.7)")
    p.add_argument("--steps", type=int, default=10, help="timed steady-state steps per shape (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tools", default="ours,mlx_lm")
    p.add_argument("--graph", action="store_true",
                   help="ours: the step's (uncompiled) graph walked: matmuls by dtype, bytes written unfused")
    p.add_argument("--count-ops", action="store_true", help="ours: primitives of one step's graph as compiled")
    p.add_argument("--lora-branch", choices=("addmm", "previous"), default="addmm",
                   help="ours: the LoRA branch as one AddMM (the app's), or the form before #16 loracut")
    p.add_argument("--out", required=True)
    p.add_argument("--longest", type=float, nargs="?", const=24.0, default=None, metavar="GB",
                   help="instead of --lengths: the longest row whose step's MLX peak stays within GB (default 24)")
    p.add_argument("--longest-batch", default="1", help="--longest: batch sizes (e.g. 1,4)")
    p.add_argument("--longest-start", type=int, default=None, help="--longest: first length (default 512; tiny 64)")
    p.add_argument("--longest-cap", type=int, default=32768, help="--longest: longest length tried (and max positions)")
    p.add_argument("--resolution", type=int, default=64, help="--longest: tokens the answer is exact to")
    p.add_argument("--probes", type=int, default=8, help="--longest: lengths tried per tool and batch (each a trace)")
    a = p.parse_args()
    if a.lora_branch == "previous":  # (for the whole process: before any step is traced or compiled)
        from finetune_app.testing.lora_reference import use_previous_branch

        use_previous_branch()
    cuda = mx.cuda.is_available() if hasattr(mx, "cuda") else False
    size = a.size or ("real" if cuda else "tiny")
    dtype = a.dtype or ("bfloat16" if cuda else "float32")
    tmp = None
    if a.model:
        folder = Path(a.model)
    else:
        work = Path(a.work) if a.work else Path(tmp := tempfile.mkdtemp(prefix="step_micro_"))
        folder = build_model(size, dtype, work / (f"llama-{size}-{dtype}" + (f"-{a.layers}l" if a.layers else "")),
                             a.layers)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    if a.longest is not None:
        config = json.loads((folder / "config.json").read_text())
        cap = min(a.longest_cap, config.get("max_position_embeddings") or a.longest_cap)
        a.longest_start = a.longest_start or (512 if size == "real" else 64)
        results = {"device": str(mx.default_device()), "model": str(folder), "size": size, "dtype": dtype,
                   "supervised": a.supervised, "rank": a.rank}
        t = time.perf_counter()
        longest_mode(folder, a, results, vocab, cap)
        results["wall_s"] = round(time.perf_counter() - t, 1)
        print(f"--longest: {results['wall_s']} s after the model build")
        write_results(a.out, results, tmp)
        return
    shapes = [(L, rows_for(L, a.batch_size, a.supervised, vocab, seed=L)) for L in map(int, a.lengths.split(","))]
    results = {"device": str(mx.default_device()), "device_info": {k: v for k, v in mx.device_info().items()
                                                                     if isinstance(v, (int, float, str))},
               "model": str(folder), "size": size, "dtype": dtype, "batch_size": a.batch_size,
               "supervised": a.supervised, "steps": a.steps, "lora_branch": a.lora_branch, "tools": {}}
    for tool in a.tools.split(","):
        t = time.perf_counter()
        results["tools"][tool] = {"L": fixed_shapes(ours_tool if tool == "ours" else mlx_lm_tool, folder, shapes, a)}
        results["tools"][tool]["wall_s"] = round(time.perf_counter() - t, 1)
        gc.collect()
        mx.clear_cache()
    if a.steps:
        print(f"{'tool':8} {'L':>5} {'positions':>10} {'K':>5} {'first call s':>12} {'step ms':>9} {'min ms':>8} "
              f"{'peak GB':>8}")
    for tool, r in results["tools"].items():
        for L, x in r["L"].items() if a.steps else ():
            print(f"{tool:8} {L:>5} {'x'.join(map(str, x['positions'])):>10} {x.get('supervised_k', '-'):>5} "
                  f"{x['first_call_s']:>12.2f} {1e3 * x['step_s']:>9.1f} {1e3 * x['step_min_s']:>8.1f} "
                  f"{x['peak_gb']:>8.2f}")
    if {"ours", "mlx_lm"} <= set(results["tools"]) and a.steps:
        for L in results["tools"]["ours"]["L"]:
            o, m = results["tools"]["ours"]["L"][L], results["tools"]["mlx_lm"]["L"][L]
            print(f"L={L}: ours/mlx_lm step time x{o['step_s'] / m['step_s']:.2f}, "
                  f"first call x{o['first_call_s'] / m['first_call_s']:.2f}")
    write_results(a.out, results, tmp)


def write_results(out: str, results: dict, tmp: str | None) -> None:
    """The JSON to `out`; the model folder built for this call (no --work) removed."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=1))
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
