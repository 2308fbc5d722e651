"""One LoRA training step of a Qwen2-VL model, ours against mlx-vlm's trainer, at fixed shapes (#16).

The VLM sibling of step_micro.py: tells what one step costs and how much of the device it uses,
apart from the run around it. On one random-weight model (Qwen2-VL-2B-sized by default, the
side-by-side harness's QWEN2_VL_2B config, bf16 on a GPU; `--size tiny` for a CPU check), the
same LoRA (rank 16, alpha 16: every LM projection) and AdamW (lr 1e-4, no decay), the same rows
(synthetic: text, one or more pictures' pads, text, the answer; random pixels):

- `ours`: the trainer's cached step: tower features already in the cache (later epochs), the
  `training/step.py` `Step` on the Qwen-VL fast path (compiled where the trainer compiles it);
- `ours-e0`: ours' first-epoch step: the batch's pictures through the frozen tower (compiled for
  the group's signature where the trainer compiles it), then the same step, one sync;
- `ours-nocache`: `--no-cache-vision`: the library's forward with the tower in it, uncompiled;
- `ours-text`: our text step (the text family's compiled fast path) on an mlx-lm `qwen2` model with
  the VLM's LM dimensions (built once beside the VLM), fed the same rows' ids and supervised
  positions (the pictures' pads as plain tokens): the step the VLM's LM step should match per FLOP
  (#16 lmstep: the text step of a 3B reached ~57% MFU where this VLM step reached 24%);
- `mlx_vlm`: the step `mlx_vlm.train` runs (mlx-vlm 0.7.10: `prepare_model_for_training`,
  `vlm_sft_loss` with `train_on_completions`, `nn.value_and_grad`, `apply_gradient_step`;
  uncompiled, its default and the harness's; `mlx_vlm-compiled` tries its `--compile`, which
  cannot trace Qwen2-VL: the tower's `rot_pos_emb` reads the grid on the host), fed
  `collate_vlm_batch` at `--pad-to-multiple 1` (the harness's best flags).

Shapes (`--shapes`, comma-separated `PX:PICTURES:TEXT:ANSWER`): pictures of PX x PX pixels
(PX / 28 squared merged tokens each), TEXT prompt tokens, ANSWER supervised tokens; the batch's
other rows a few answer tokens shorter. Default: the harness's rows (448 px: 256 picture tokens,
~330 a row, 30 supervised) and a document-sized row (1,120 px: 1,600 picture tokens, ~1,900 a row,
200 supervised).

Per tool and shape: the first call, the median of `--steps` steps (each synced with parameters and
optimizer state), MLX's peak, LM-only FLOPs (sbs_flops.lm_flops over real tokens; ours' head at
the supervised positions, mlx-vlm's at every position) and total FLOPs (plus the tower's forward
where the step runs it), MFU of each against a bf16 (CPU: float32) matmul peak measured in this
process; and `--count-ops`: primitives in the step's graph (compiled: after mx.compile's fusion,
one node per kernel or view), by name.

    python benchmarks/vlm_step_micro.py --out /tmp/vlm-micro.json                 # GPU: 2B-sized, bf16
    python benchmarks/vlm_step_micro.py --size tiny --count-ops --out /tmp/v.json  # CPU check
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from step_micro import timed, write_results  # noqa: E402

VIEWS = {"Reshape", "Broadcast", "Squeeze", "ExpandDims", "Transpose", "Slice", "AsStrided", "StopGradient", "Depends",
         "NumberOfElements", "Split", "Flatten", "Unflatten"}  # primitives that are usually no kernel of their own


def build_text_twin(vlm: Path, dtype: str) -> Path:
    """An mlx-lm `qwen2` model with the Qwen2-VL's LM dimensions (random weights), beside it."""
    from side_by_side import child_build

    dest = vlm.parent / (vlm.name + "-text-twin")
    if not (dest / "config.json").is_file():
        c = json.loads((vlm / "config.json").read_text())
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta")
        over = {k: c[k] for k in keys if k in c} | {"tie_word_embeddings": c.get("tie_word_embeddings", True)}
        child_build({"family": "qwen2", "dest": str(dest), "dtype": dtype, "overrides": over})
    return dest


def build_model(size: str, dtype: str, dest: Path, layers: int | None = None) -> Path:
    from side_by_side import QWEN2_VL_2B, child_build

    if not (dest / "config.json").is_file():
        t = time.perf_counter()
        over = dict(QWEN2_VL_2B if size == "real" else {}) | ({"num_hidden_layers": layers} if layers else {})
        child_build({"family": "qwen2_vl", "dest": str(dest), "dtype": dtype, "overrides": over})
        print(f"built the {size} Qwen2-VL in {dest} ({time.perf_counter() - t:.0f} s)", flush=True)
    return dest


def make_rows(cfg: dict, shape: str, batch: int, seed: int) -> list[dict]:
    """B rows: {ids, mask (supervised), pixels [patches, C*T*P*P], grid [n, 3]} for `PX:PICTURES:TEXT:ANSWER`."""
    px, pics, text, answer = map(int, shape.split(":"))
    v = cfg["vision_config"]
    patch, merge = v.get("patch_size", 14), v.get("spatial_merge_size", 2)
    side = px // (patch * merge) * merge  # patches a side (a whole number of merged tokens)
    width = v.get("in_channels", 3) * v.get("temporal_patch_size", 2) * patch * patch
    specials = [x for k, x in cfg.items() if k.endswith("_token_id") and isinstance(x, int)]
    top = min(x for x in specials if x > 3)
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(batch):
        n_ans = max(2, answer - 3 * b)  # a length-sorted batch: the first row the longest
        head = rng.integers(3, top, text // 2).tolist()
        ids = list(head)
        for _ in range(pics):
            ids += [cfg["vision_start_token_id"]] + [cfg["image_token_id"]] * (side * side // merge**2) \
                + [cfg["vision_end_token_id"]]
        ids += rng.integers(3, top, text - text // 2).tolist()
        prompt = len(ids)
        ids += rng.integers(3, top, n_ans).tolist()
        rows.append({"ids": np.array(ids, np.int32), "mask": np.arange(len(ids)) >= prompt,
                     "pixels": rng.standard_normal((pics * side * side, width)).astype(np.float32),
                     "grid": np.array([[1, side, side]] * pics, np.int64)})
    return rows


def count_ops(*outputs) -> dict:
    """Primitives in the graph that computes `outputs` (unevaluated): total, without views, by name."""
    import mlx.core as mx

    f = io.StringIO()
    mx.export_to_dot(f, *outputs)
    names = Counter(line.split('label ="', 1)[1].split('"', 1)[0] for line in f.getvalue().splitlines()
                    if 'label ="' in line)
    fused = sum(n for k, n in names.items() if k.startswith("Compiled"))
    return {"nodes": sum(names.values()), "non_view": sum(n for k, n in names.items() if k not in VIEWS),
            "fused_kernels": fused, "by_name": dict(names.most_common(25))}


def traced(model, family, objective, arrays: dict) -> dict:
    """Every primitive of one value-and-grad of the step's loss (uncompiled, unevaluated), walked
    with `mx.export_function`'s callback, which gives each primitive's input and output dtypes and
    shapes: the matmuls by dtype and shapes, and the bytes the non-view primitives write (before
    compilation's fusion). The head's cross-entropy is the plain one here (the fused and chunked
    ones are custom functions the exporter cannot walk); the LM body is the step's own."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from finetune_app.core import estimates
    from finetune_app.core.training import chunked_ce

    saved = chunked_ce.head_weight, estimates.logits_budget
    chunked_ce.head_weight, estimates.logits_budget = (lambda owner: None), (lambda: 1 << 60)
    prims = []
    try:
        vg = nn.value_and_grad(model, lambda x: objective.loss(model, family, x)[0])
        mx.export_function(lambda r: prims.append(r) if r.get("type") == "primitive" else None,
                           lambda **x: [v for _, v in tree_flatten(vg(x))], **arrays)
    finally:
        chunked_ce.head_weight, estimates.logits_budget = saved
    size = {mx.float32: 4, mx.int32: 4, mx.uint32: 4, mx.bool_: 1}
    written, mm, non_view = 0, Counter(), 0
    for p in prims:
        if p["name"] not in VIEWS | {"Reshape"}:
            written += sum(int(np.prod(sh)) * size.get(d, 2) for _, sh, d in p["outputs"])
            non_view += 1
        if p["name"] in ("Matmul", "AddMM", "GatherMM", "BlockMaskedMM"):
            mm[" ".join(f"{'x'.join(map(str, sh))}:{str(d).split('.')[-1]}" for _, sh, d in p["inputs"][:2])] += 1
    f32 = sum(n for k, n in mm.items() if "float32" in k)
    return {"primitives": len(prims), "non_view": non_view, "matmuls": sum(mm.values()),
            "addmm": sum(p["name"] == "AddMM" for p in prims), "float32_matmuls": f32,
            "written_gb": round(written / 1e9, 2), "matmul_shapes": dict(mm.most_common())}


def counted(model, opt, issue):
    """graph() -> one more step's outputs (loss, parameters, optimizer state), unevaluated, with the
    model and optimizer left as before it (so nothing runs: on a CPU a compiled step would build
    its kernels first; and the next count does not hold this step's graph)."""
    from mlx.utils import tree_map

    def put_back(dst, src):  # in place: a compiled step holds these very containers
        for k in (range(len(src)) if isinstance(src, list) else src):
            if isinstance(src[k], (dict, list)):
                put_back(dst[k], src[k])
            else:
                dst[k] = src[k]

    def graph():
        params, state = model.trainable_parameters(), tree_map(lambda x: x, opt.state)
        loss = issue()
        out = (loss, tree_map(lambda x: x, model.trainable_parameters()), tree_map(lambda x: x, opt.state))
        model.update(params)
        put_back(opt.state, state)
        return out

    return graph


# ---- ours --------------------------------------------------------------------------------------

@contextmanager
def ours_tool(folder: Path, a, variant: str):
    """run(rows) -> (one synced step, facts, graph outputs of one unevaluated step)."""
    import mlx.core as mx

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.data.tokenize import Example
    from finetune_app.core.families import family_for
    from finetune_app.core.families.qwen_vl import signature
    from finetune_app.core.models import load_base
    from finetune_app.core.training.memory import bounded_cache
    from finetune_app.core.training.objectives import objective
    from finetune_app.core.training.optim import make_optimizer
    from finetune_app.core.training.step import Step

    text = variant == "ours-text"
    if text:
        folder = a.text_twin
    cfg = TrainConfig(model=str(folder), lora_rank=a.rank, lora_alpha=float(a.rank), learning_rate=a.lr,
                      grad_clip=None, cache_vision=variant != "ours-nocache")
    base = load_base(folder)
    adapters.attach(base, cfg)
    family = family_for(base)
    family.start(cfg)
    opt = make_optimizer("adamw", a.lr, 0.0)
    opt.init(base.model.trainable_parameters())  # (what Step's first call does; evaluated here, so a
    mx.eval(opt.state)  # counted graph holds no zero-filling of the state)
    step = Step(base.model, opt, family, objective("sft", cfg), grad_clip=None)
    state = lambda: (base.model.trainable_parameters(), opt.state)  # noqa: E731

    def run(rows):
        def examples():
            if text:  # the same ids and supervised positions, no pictures
                return [Example(index=i, input_ids=r["ids"], target_mask=r["mask"], model_length=len(r["ids"]))
                        for i, r in enumerate(rows)]
            return [Example(index=i, input_ids=r["ids"], target_mask=r["mask"], n_images=len(r["grid"]),
                            images={"pixel_values": r["pixels"], "image_grid_thw": r["grid"]},
                            model_length=len(r["ids"])) for i, r in enumerate(rows)]

        exs = examples()
        for ex in exs if not text else ():
            family.prepare_example(ex)
        facts = {"compiled_step": family.compiled, "fast": family.fast}
        if text:
            batch = family.plan(exs)
            facts |= {"positions": list(batch.src.shape), "supervised_k": int(batch.sel.shape[0])}

            def issue():
                return step([batch])[0]
        elif not family.fast:  # the library path: the tower inside the (uncompiled) forward
            batch = family.plan(exs)

            def issue():
                return step([batch])[0]
        else:
            family.cache.plan([exs])  # one group: the batch's pictures in one tower call
            grids = np.concatenate([r["grid"] for r in rows])
            if family.compiled and variant == "ours-e0":  # (the cached step's fill is not timed: no tower compile)
                family.compiled_signatures = frozenset({signature(grids)})
            batch = family.plan(exs)  # fills the cache (the tower) and plans
            facts |= {"positions": list(batch.src.shape), "supervised_k": int(batch.sel.shape[0]),
                      "compiled_tower": bool(family.compiled_signatures)}
            if variant == "ours":
                def issue():
                    return step([batch])[0]
            else:  # first epoch: the tower again for these pictures, then the step
                keys = [k for ex in exs for k in ex.feature_keys]

                def issue():
                    for k in keys:
                        family.features.pop(k, None)
                    fresh = examples()
                    for ex, old in zip(fresh, exs):
                        ex.feature_keys, ex.rope_positions = old.feature_keys, old.rope_positions
                    family.cache.groups[0] = (family.cache.groups[0][0], fresh)
                    return step([family.plan(fresh)])[0]
        mx.eval(state())

        def one():
            loss = issue()
            mx.eval(loss, state())
            facts.setdefault("first_loss", float(loss))  # (mean over supervised tokens, before any update)

        if family.fast and variant in ("ours", "ours-text"):  # (--graph: the step's primitives, dtypes, shapes)
            one.trace = lambda: traced(base.model, family, step.objective, step.inputs(batch))

        return one, facts, counted(base.model, opt, issue)

    with bounded_cache():
        yield run


# ---- mlx-vlm -----------------------------------------------------------------------------------

@contextmanager
def mlx_vlm_tool(folder: Path, a, variant: str):
    """The step mlx_vlm.train runs (trainer/common/engine.py `train`, uncompiled by default)."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_vlm import load
    from mlx_vlm.trainer.common.model import prepare_model_for_training
    from mlx_vlm.trainer.common.utils import apply_gradient_step
    from mlx_vlm.trainer.vlm.sft.runtime import collate_vlm_batch, vlm_sft_loss

    model, _ = load(str(folder))
    model = prepare_model_for_training(model, lora_rank=a.rank, lora_alpha=float(a.rank), lora_dropout=0.0,
                                       verbose=False)
    opt = optim.AdamW(learning_rate=a.lr, weight_decay=0.0)
    opt.init(model.trainable_parameters())
    state = [model.state, opt.state, mx.random.state]
    mx.eval(state)  # (the LoRA's random init and AdamW's zeros: not part of a step)
    loss_fn = partial(vlm_sft_loss, train_on_completions=True)
    vag = nn.value_and_grad(model, loss_fn)

    def step(batch):
        return apply_gradient_step(model, opt, vag, batch, None, update=True, accumulation_steps=1)

    compiled = variant == "mlx_vlm-compiled"
    if compiled:
        step = mx.compile(step, inputs=state, outputs=state)
    model.train()

    def run(rows):
        samples = [{"input_ids": mx.array(r["ids"]), "attention_mask": mx.ones(len(r["ids"]), mx.int32),
                    "completion_mask": mx.array(r["mask"].astype(np.int32)), "pixel_values": mx.array(r["pixels"]),
                    "image_grid_thw": mx.array(r["grid"])} for r in rows]
        batch = collate_vlm_batch(samples, max_seq_length=1 << 16, pad_to_multiple=1, pad_token_id=0,
                                  image_token_id=model.config.image_token_id)
        mx.eval(batch)

        def issue():
            loss, metrics, _ = step(batch)
            return loss, metrics

        facts = {"compiled_step": compiled, "positions": list(batch["input_ids"].shape)}

        def one():
            loss, metrics = issue()
            mx.eval(loss, metrics, state)
            facts.setdefault("first_loss", float(loss))

        return one, facts, counted(model, opt, issue)

    yield run


# ---- FLOPs and the peak ------------------------------------------------------------------------

def flops(c: dict, rows: list[dict], tool: str) -> dict:
    """LM-only and total FLOPs of one step (real tokens; sbs_flops conventions). The tower counts in
    `total` only where the step runs it."""
    import sbs_flops

    head_all = tool.startswith("mlx_vlm") or tool == "ours-nocache"
    lm = sum(sbs_flops.lm_flops(c, len(r["ids"]), len(r["ids"]) if head_all else int(r["mask"][1:].sum()))
             for r in rows)
    runs_tower = tool not in ("ours", "ours-text")
    tower = sum(sbs_flops.tower_flops(c, int(np.prod(g))) for r in rows for g in r["grid"]) if runs_tower else 0.0
    return {"flops_lm": lm, "flops_tower": tower, "flops_total": lm + tower}


def matmul_peak(dtype) -> float:
    """TFLOP/s of a square matmul (best of 5), as side_by_side.py's child_peak measures it."""
    import mlx.core as mx
    import sbs_flops

    return sbs_flops.matmul_peak(8192 if mx.default_device() == mx.gpu else 1024, dtype)


def main() -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "real"), default=None, help="default: real on a GPU, tiny else")
    p.add_argument("--model", default=None, help="a Qwen2-VL model folder instead of building one")
    p.add_argument("--work", default=None, help="where the built model is kept (reused; default a temp folder)")
    p.add_argument("--layers", type=int, default=None, help="LM layers of the built model (tiny at 28: the 2B's graph)")
    p.add_argument("--dtype", default=None, help="built weights' dtype (default bfloat16 on a GPU, float32 else)")
    p.add_argument("--shapes", default="448:1:40:30,1120:1:100:200", help="PX:PICTURES:TEXT:ANSWER, comma-separated")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per shape (0: --count-ops only)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tools", default="ours,ours-e0,mlx_vlm",
                   help="ours, ours-e0, ours-nocache, ours-text, mlx_vlm, mlx_vlm-compiled")
    p.add_argument("--count-ops", action="store_true", help="count the primitives of one step's graph per tool")
    p.add_argument("--graph", action="store_true",
                   help="ours, ours-text: every matmul of the step's (uncompiled) graph with its dtypes and shapes")
    p.add_argument("--lora-branch", choices=("addmm", "previous"), default="addmm",
                   help="ours: the LoRA branch as one AddMM (the app's), or the form before #16 loracut")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.lora_branch == "previous":  # (for the whole process: before any step is traced or compiled)
        from finetune_app.testing.lora_reference import use_previous_branch

        use_previous_branch()
    gpu = mx.default_device() == mx.gpu
    size = a.size or ("real" if gpu else "tiny")
    dtype = a.dtype or ("bfloat16" if gpu else "float32")
    tmp = None
    if a.model:
        folder = Path(a.model)
    else:
        work = Path(a.work) if a.work else Path(tmp := tempfile.mkdtemp(prefix="vlm_step_micro_"))
        folder = build_model(size, dtype, work / (f"qwen2vl-{size}-{dtype}" + (f"-{a.layers}l" if a.layers else "")),
                             a.layers)
    import sbs_flops

    if "ours-text" in a.tools.split(","):
        a.text_twin = build_text_twin(folder, dtype)
    config = json.loads((folder / "config.json").read_text())
    counts = sbs_flops.model_counts(folder, a.rank)
    peak = matmul_peak(getattr(mx, dtype))
    shapes = {s: make_rows(config, s, a.batch_size, seed=i) for i, s in enumerate(a.shapes.split(","))}
    results = {"device": str(mx.default_device()), "model": str(folder), "size": size, "dtype": dtype,
               "batch_size": a.batch_size, "lora_branch": a.lora_branch, "peak_tflops": round(peak, 1), "counts": counts,
               "env": {k: os.environ.get(k) for k in ("FINETUNE_CPU_COMPILE",)}, "tools": {}}
    print(f"matmul peak {peak:.3g} TFLOP/s ({dtype}); N_body {counts['n_body']:.3g}, N_lora {counts['n_lora']:.3g}",
          flush=True)
    for tool in a.tools.split(","):
        t = time.perf_counter()
        gc.collect()
        mx.clear_cache()
        held = mx.get_active_memory()
        cm = mlx_vlm_tool if tool.startswith("mlx_vlm") else ours_tool
        out = results["tools"][tool] = {"shapes": {}}
        with cm(folder, a, tool) as run:
            out["load_s"] = round(time.perf_counter() - t, 1)
            for s, rows in shapes.items():
                one, facts, graph = run(rows)
                if a.graph and hasattr(one, "trace"):
                    g = facts["graph"] = one.trace()
                    print(f"  {tool:13} {s:16} graph: {g['primitives']} primitives ({g['non_view']} non-view), "
                          f"{g['matmuls']} matmuls ({g['addmm']} AddMM, {g['float32_matmuls']} with a float32 "
                          f"operand), {g['written_gb']} GB written unfused", flush=True)
                rec = facts | {"tokens": [len(r["ids"]) for r in rows],
                               "supervised": [int(r["mask"][1:].sum()) for r in rows],
                               "picture_tokens": [int(np.prod(r["grid"], axis=-1).sum()) // 4 for r in rows]}
                if a.steps:
                    mx.reset_peak_memory()
                    try:
                        rec |= timed(one, a.steps, a.warmup)
                    except ValueError as e:  # (mlx-vlm's --compile: its Qwen2-VL forward reads the grid on the host)
                        out["shapes"][s] = rec | {"error": str(e)}
                        print(f"  {tool:13} {s:16} failed: {e}", flush=True)
                        continue
                    rec["first_loss"] = facts.get("first_loss")
                    rec["peak_gb"] = round((mx.get_peak_memory() - held) / 1e9, 3)
                if a.count_ops:  # one more step's graph, never run
                    arrays = [x for _, x in tree_flatten(graph()) if isinstance(x, mx.array)]
                    rec["ops"] = count_ops(*arrays)
                    del arrays
                if not a.steps:  # counting only (e.g. the compiled graph on a CPU, no kernel built)
                    out["shapes"][s] = rec
                    print(f"  {tool:13} {s:16} ops {rec.get('ops', {}).get('nodes')}", flush=True)
                    continue
                f = flops(counts, rows, tool)
                rec |= {k: round(v / 1e12, 3) for k, v in f.items()}  # TFLOP per step
                rec["mfu_lm"] = round(f["flops_lm"] / rec["step_s"] / (peak * 1e12), 4)
                rec["mfu_total"] = round(f["flops_total"] / rec["step_s"] / (peak * 1e12), 4)
                out["shapes"][s] = rec
                print(f"  {tool:13} {s:16} {'x'.join(map(str, rec.get('positions', ['-']))):>9} "
                      f"step {1e3 * rec['step_s']:9.1f} ms  first {rec['first_call_s']:7.2f} s  "
                      f"LM {rec['flops_lm']:7.3f} TF  MFU LM {100 * rec['mfu_lm']:5.1f}%  total "
                      f"{100 * rec['mfu_total']:5.1f}%  peak {rec['peak_gb']:.2f} GB"
                      + f"  loss {rec['first_loss']:.5f}"
                      + (f"  ops {rec['ops']['nodes']} ({rec['ops']['non_view']} non-view, "
                         f"{rec['ops']['fused_kernels']} fused)" if "ops" in rec else ""), flush=True)
            del run
        out["wall_s"] = round(time.perf_counter() - t, 1)
    write_results(a.out, results, tmp)


if __name__ == "__main__":
    main()
