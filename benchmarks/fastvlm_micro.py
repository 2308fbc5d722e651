"""FastVLM's phases at fixed shapes (#16 done-when: 1024 px, 3 epochs, cached >= x2.0 uncached wall).

The wall ratio of the 3-epoch run is bounded by 3(T + c) / (T + 3c) (docs/performance.md, "FastVLM at
1024 px"): T = the frozen FastViTHD tower on one batch's pictures, c = the cached LM step. This
measures both in one process, on a model folder built by side_by_side.py (`--setup fastvlm --size
real`: the tower's weights do not depend on the image size, so any `model-<px>px` folder serves):

- `tower`: ours' first-epoch fill call (`FastVLM._tower_call`, compiled as the trainer compiles it,
  the step's pictures in one call) and the same call uncompiled (mlx-vlm's own), features' dtype;
- `profile`: the tower eagerly with a sync after every convolution / linear / attention call:
  seconds, FLOPs and TFLOP/s by kind (1x1 conv, depthwise / grouped kxk conv, dense conv, linear,
  attention; `other` = the elementwise work between them) and by stage: where the tower's time goes;
- `cached` / `uncached`: the trainer's step (`training/step.py` Step on FastVLM's fast path) on
  `--pictures` rows of one picture each: features already cached (later epochs), or the tower inside
  the compiled step (`--no-cache-vision`, the baseline), each synced with parameters and optimizer.

Prints one JSON (and writes --out) with the predicted 3-epoch ratio at 40 and 400 pictures for a
fixed cost F (`--fixed-s`).

    python benchmarks/fastvlm_micro.py --model /tmp/sbs/work/fastvlm-real/model-1024px --px 1024
    python benchmarks/fastvlm_micro.py --model M --px 128 --parts tower,profile,cached --steps 1  # CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from finetune_app.core.atomic import write_text as atomic_write_text  # noqa: E402  (a kill keeps the last whole file)


def ceiling(t: float, c: float) -> float | None:
    """The 3-epoch wall ratio uncached / cached can reach at any row count: 3(T + c) / (T + 3c), with
    T the tower's time per step and c the cached step's (None where undefined)."""
    return 3 * (t + c) / (t + 3 * c) if t + 3 * c > 0 else None


def conv_kind(conv, x) -> str:
    """1x1 / depthwise-or-grouped kxk / dense kxk, from the weight [O, kH, kW, C/groups]."""
    o, kh, kw, cg = conv.weight.shape
    if kh == kw == 1 and cg == x.shape[-1]:
        return "conv1x1"
    return f"conv{kh}x{kw}-" + ("grouped" if cg < x.shape[-1] else "dense")


class Profiler:
    """Wraps Conv2d / Linear / sdpa for one forward: FLOPs by kind, and with `sync` the seconds of
    each call (its input evaluated first, so the elementwise work before it counts as `other`)."""

    def __init__(self, sync: bool):
        self.sync, self.flops, self.secs, self.calls = sync, defaultdict(float), defaultdict(float), defaultdict(int)

    def _timed(self, kind, flops, fn, *xs):
        import mlx.core as mx

        if self.sync:
            t = time.perf_counter()
            mx.eval(*xs)
            self.secs["other"] += time.perf_counter() - t
        t = time.perf_counter()
        out = fn()
        if self.sync:
            mx.eval(out)
            self.secs[kind] += time.perf_counter() - t
        self.flops[kind] += flops
        self.calls[kind] += 1
        return out

    def __enter__(self):
        import mlx.core as mx
        import mlx.nn as nn

        self.saved = (nn.Conv2d.__call__, nn.Linear.__call__, mx.fast.scaled_dot_product_attention)
        conv_call, lin_call, sdpa = self.saved
        prof = self

        def conv(mod, x):
            o, kh, kw, cg = mod.weight.shape
            h, w = _out_hw(mod, x)
            flops = 2.0 * x.shape[0] * h * w * o * kh * kw * cg
            return prof._timed(conv_kind(mod, x), flops, lambda: conv_call(mod, x), x)

        def lin(mod, x):
            flops = 2.0 * np.prod(x.shape[:-1]) * mod.weight.shape[0] * mod.weight.shape[1]
            return prof._timed("linear", flops, lambda: lin_call(mod, x), x)

        def attn(q, k, v, **kw):
            b, h, n, d = q.shape
            return prof._timed("attention", 4.0 * b * h * n * k.shape[2] * d, lambda: sdpa(q, k, v, **kw), q, k, v)

        nn.Conv2d.__call__, nn.Linear.__call__, mx.fast.scaled_dot_product_attention = conv, lin, attn
        return self

    def __exit__(self, *exc):
        import mlx.core as mx
        import mlx.nn as nn

        nn.Conv2d.__call__, nn.Linear.__call__, mx.fast.scaled_dot_product_attention = self.saved


def _out_hw(conv, x):
    _, kh, kw, _ = conv.weight.shape
    s = conv.stride if isinstance(conv.stride, (tuple, list)) else (conv.stride, conv.stride)
    p = conv.padding if isinstance(conv.padding, (tuple, list)) else (conv.padding, conv.padding)
    return ((x.shape[1] + 2 * p[0] - kh) // s[0] + 1, (x.shape[2] + 2 * p[1] - kw) // s[1] + 1)


def stages(vm):
    """(name, module) of FastViTHD's parts in order: stem, network[i] (stages, patch embeds, CPEs), conv_exp."""
    yield "stem", vm.patch_embed
    for i, layer in enumerate(vm.network):
        yield f"network.{i}:{type(layer).__name__ if not isinstance(layer, list) else f'stage x{len(layer)}'}", layer
    yield "conv_exp", vm.conv_exp


def tower_profile(model, pixels, sync: bool) -> dict:
    import mlx.core as mx

    vm = model.vision_tower.vision_model
    dtype = vm.patch_embed.blocks[0].reparam_conv.weight.dtype
    x = pixels.astype(dtype).transpose(0, 2, 3, 1)
    if sync:  # one unprofiled pass first: cuDNN builds (and caches) a plan per conv shape on its first call
        mx.eval(x)
        y = x
        for _, mod in stages(vm):
            y = mod(y)
        mx.eval(y)
        del y
    by_stage, total = [], Profiler(sync)
    t0 = time.perf_counter()
    for name, mod in stages(vm):
        with Profiler(sync) as p:
            t = time.perf_counter()
            x = mod(x)
            if sync:
                mx.eval(x)
            dt = time.perf_counter() - t
        gflop = sum(p.flops.values()) / 1e9
        by_stage.append({"stage": name, "out": list(x.shape), "gflop": round(gflop, 2),
                         **({"s": round(dt, 5), "tflops": round(gflop / dt / 1e3, 3)} if sync else {})})
        for k in p.flops:
            total.flops[k] += p.flops[k]
            total.secs[k] += p.secs[k]
            total.calls[k] += p.calls[k]
        total.secs["other"] += p.secs["other"]
    wall = time.perf_counter() - t0
    kinds = {k: {"calls": total.calls[k], "gflop": round(total.flops[k] / 1e9, 2),
                 **({"s": round(total.secs[k], 5), "tflops": round(total.flops[k] / max(total.secs[k], 1e-9) / 1e12, 3)}
                    if sync else {})} for k in sorted(total.flops)}
    if sync:
        kinds["other"] = {"s": round(total.secs["other"], 5)}
    return {"synced_per_op": sync, "wall_s": round(wall, 4), "flop": sum(total.flops.values()),
            "tflop": round(sum(total.flops.values()) / 1e12, 4),
            "by_kind": kinds, "by_stage": by_stage, "dtype": str(dtype)}


def timed(fn, steps: int) -> dict:
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"first_call_s": round(first, 4), "s": round(statistics.median(times), 5) if times else None,
            "min_s": round(min(times), 5) if times else None}


def trainer(folder: Path, a, cached: bool):
    """(base, family, Step, state) as the trainer sets them up: LoRA, AdamW, FastVLM started."""
    import mlx.core as mx

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.families import family_for
    from finetune_app.core.models import load_base
    from finetune_app.core.training.objectives import objective
    from finetune_app.core.training.optim import make_optimizer
    from finetune_app.core.training.step import Step

    cfg = TrainConfig(model=str(folder), lora_rank=a.rank, lora_alpha=float(a.rank), learning_rate=1e-4,
                      grad_clip=None, cache_vision=cached)
    base = load_base(folder)
    adapters.attach(base, cfg)
    family = family_for(base)
    family.start(cfg)
    opt = make_optimizer("adamw", 1e-4, 0.0)
    opt.init(base.model.trainable_parameters())
    mx.eval(opt.state)
    step = Step(base.model, opt, family, objective("sft", cfg), grad_clip=None)
    return base, family, step, lambda: (base.model.trainable_parameters(), opt.state)


def examples(family, a, rng):
    """`--pictures` rows of one picture each: text, the picture's placeholder, text, the answer."""
    from finetune_app.core.data.tokenize import Example

    rows = []
    for i in range(a.pictures):
        head = rng.integers(10, 5000, a.text // 2).tolist()
        ids = head + [family.image_token] + rng.integers(10, 5000, a.text - a.text // 2).tolist()
        n_ans = max(2, a.answer - 3 * i)
        ids = np.array(ids + rng.integers(10, 5000, n_ans).tolist(), np.int32)
        mask = np.arange(len(ids)) >= len(ids) - n_ans
        pix = rng.standard_normal((1, 3, a.px, a.px)).astype(np.float32)
        rows.append(Example(index=i, input_ids=ids, target_mask=mask, n_images=1, images={"pixel_values": pix},
                            model_length=len(ids) - 1 + (a.px // 64) ** 2))
    return rows


def step_part(folder: Path, a, cached: bool) -> dict:
    import mlx.core as mx

    from finetune_app.core.training.memory import bounded_cache

    base, family, step, state = trainer(folder, a, cached)
    exs = examples(family, a, np.random.default_rng(0))
    for ex in exs:
        family.prepare_example(ex)
    feats = (a.px // 64) ** 2
    with bounded_cache():
        if cached:  # later epochs: the features are in the cache (random: a step's cost does not depend on them)
            width = base.model.config.mm_hidden_size if hasattr(base.model.config, "mm_hidden_size") else 3072
            dt = base.model.vision_tower.vision_model.patch_embed.blocks[0].reparam_conv.weight.dtype
            for ex in exs:
                for k in ex.feature_keys:
                    family.cache.features[k] = mx.random.normal((feats, width)).astype(dt)
            mx.eval(list(family.cache.features.values()))
        batch = family.plan(exs)
        mx.eval(state())

        def one():
            loss = step([batch])[0]
            mx.eval(loss, state())

        r = timed(one, a.steps)
    r.update(compiled=family.compiled, fast=family.fast, positions=list(batch.src.shape),
             supervised=int(batch.sel.shape[0]), peak_gb=round(mx.get_peak_memory() / 1e9, 2))
    return r


def tower_part(folder: Path, a) -> dict:
    import mlx.core as mx

    base, family, _, _ = trainer(folder, a, True)
    rng = np.random.default_rng(0)
    pics = [rng.standard_normal((3, a.px, a.px)).astype(np.float32) for _ in range(a.pictures)]
    out = {"compiled_like_trainer": family.compiled}

    def fill():
        feats = family._tower_call(pics)
        mx.eval([f for f, _ in feats])
        out["features"] = [list(feats[0][0].shape), str(feats[0][0].dtype)]

    out["ours_fill"] = timed(fill, a.steps)
    model = base.model

    def eager():
        mx.eval(family.tower_features(model, mx.array(np.stack(pics))))

    out["eager"] = timed(eager, a.steps)
    return out


def harness_model(a) -> Path:
    """side_by_side.py's real FastVLM at --px in --work (built there unless it is already)."""
    import side_by_side as sbs
    import mlx.core as mx

    dtype = a.dtype or ("bfloat16" if mx.cuda.is_available() else "float32")
    ns = argparse.Namespace(size="real", config_overrides=None, image_size=a.px, dtype=dtype, rows=a.rows,
                            batch_size=a.pictures, length_scale=1.0)
    t = time.perf_counter()
    model, _, _ = sbs.build("fastvlm", ns, Path(a.work))
    print(f"model {model} ready in {time.perf_counter() - t:.1f} s", flush=True)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a FastVLM folder (side_by_side.py --setup fastvlm --size real)")
    p.add_argument("--work", default=None, help="instead of --model: side_by_side.py's --work folder; builds the real "
                   "model there at --px (and --rows of data) as the harness would, so its run reuses them")
    p.add_argument("--rows", type=int, default=40, help="with --work: the data the harness will use")
    p.add_argument("--dtype", default=None, help="with --work: bfloat16 on CUDA, float32 else (the harness's default)")
    p.add_argument("--px", type=int, default=1024)
    p.add_argument("--pictures", type=int, default=4, help="rows (one picture each) = the batch")
    p.add_argument("--text", type=int, default=40, help="prompt tokens besides the picture")
    p.add_argument("--answer", type=int, default=34, help="supervised tokens of the longest row")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed calls after the first")
    p.add_argument("--parts", default="tower,profile,cached,uncached",
                   help="comma-separated: tower, profile, flops (counts only), cached, uncached; build (with --work: only that)")
    p.add_argument("--part-timeout", type=float, default=240, help="seconds a part's process may run")
    p.add_argument("--fixed-s", type=float, default=20.0, help="fixed cost F of a run, for the predicted ratio")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import mlx.core as mx

    if a.work and not a.model:
        a.model = str(harness_model(a))
    if not a.model:
        p.error("--model or --work")
    folder, parts = Path(a.model), [x for x in a.parts.split(",") if x != "build"]
    if not parts:
        return 0
    res = {"model": str(folder), "px": a.px, "pictures": a.pictures}
    if len(parts) > 1:  # one process per part, as the trainer has one model and one step a process
        for part in parts:  # (a second loaded model's compiled step in the same process crashed MLX's CPU back-end)
            argv2 = [x for x in (argv if argv is not None else sys.argv[1:])]
            k = argv2.index("--parts") if "--parts" in argv2 else None
            argv2 = (argv2[:k] + argv2[k + 2:] if k is not None else argv2) + ["--parts", part, "--out", "", "--model", str(folder)]
            t = time.perf_counter()
            try:
                out = subprocess.run([sys.executable, __file__, *argv2], capture_output=True, text=True, check=False,
                                     timeout=a.part_timeout)
            except subprocess.TimeoutExpired:
                res[part] = {"error": f"past --part-timeout {a.part_timeout:g} s"}
                print(json.dumps({part: res[part]}), flush=True)
                continue
            res.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t, 1)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode or not line:
                res[part] = {"error": f"rc {out.returncode}: {out.stderr[-800:]}"}
            else:
                res.update({k: v for k, v in json.loads(line[7:]).items() if k not in res})
            print(json.dumps({part: res.get(part)}), flush=True)
    else:
        import mlx.core as mx

        res["device"] = str(mx.default_device())
        part = parts[0]
        if part == "tower":
            res["tower"] = tower_part(folder, a)
        elif part in ("profile", "flops"):
            from finetune_app.core.models import load_base

            model = load_base(folder, lazy=part == "flops").model
            pixels = mx.array(np.random.default_rng(0).standard_normal((a.pictures, 3, a.px, a.px)).astype(np.float32))
            res["profile"] = tower_profile(model, pixels, sync=part == "profile")
        elif part in ("cached", "uncached"):
            res[part] = step_part(folder, a, part == "cached")
        else:
            raise SystemExit(f"unknown part {part!r}: tower, profile, flops, cached, uncached")
    c = (res.get("cached") or {}).get("s")
    T = ((res.get("tower") or {}).get("ours_fill") or {}).get("s")
    u = (res.get("uncached") or {}).get("s")
    if c:
        pred = {}
        for label, t in (("T_fill", T), ("T_u_minus_c", u - c if u else None)):
            if t is not None:
                pred[label] = {"T_s": round(t, 5), "T_over_c": round(t / c, 3), "ceiling": round(ceiling(t, c), 3),
                               **{f"ratio_{n}": round((a.fixed_s + 3 * n / a.pictures * (t + c))
                                                      / (a.fixed_s + n / a.pictures * (t + 3 * c)), 3) for n in (40, 400)}}
        res["predicted"] = {"fixed_s": a.fixed_s, **pred}
    print("RESULT " + json.dumps(res), flush=True)
    if a.out:
        atomic_write_text(a.out, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
