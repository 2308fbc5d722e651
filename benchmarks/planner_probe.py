"""The "will it fit" planner (`estimates.run_memory_gb`) against MLX's measured peak, per probe (#16 plannerfit).

For each model (text: Llama- and Qwen2-shaped; VLM: Qwen2-VL) and shape, one real training step of
ours (step_micro.py's / vlm_step_micro.py's `ours_tool`: the compiled step, LoRA r16 on every
linear layer, AdamW, the fused head), MLX's peak over the shape's first call and one more step,
from a fresh `mx.reset_peak_memory()` with weights, LoRA and AdamW state resident, less what was
active before the model loaded (what a fresh process holds for that step), and the planner's
prediction for the same run (`fit_check.planner_gb`, the call the form and `data check` make).
Text probes: B rows of about L tokens (step_micro.rows_for, 65% supervised). VLM probes: the
cached step (`ours`: features resident, the tower not run) and the first-epoch step (`ours-e0`:
the batch's pictures through the frozen tower, then the step).

    FINETUNE_CPU_COMPILE=1 python benchmarks/planner_probe.py --suite cpu --work /tmp/pf --out /tmp/pf/probes.json
    python benchmarks/planner_probe.py --suite h200 --work /tmp/pf --out $OUT/planner.json   # GPU

Prints one line per probe (predicted, measured, ratio) and the worst ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from finetune_app.core.atomic import write_text as atomic_write_text  # noqa: E402  (a kill keeps the last whole file)

# name: (family, config overrides, [(B, L) text | (B, "PX:PICTURES:TEXT:ANSWER") VLM])
SUITES = {
    "cpu": {
        "llama-1024": ("llama", {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                 "num_key_value_heads": 4, "head_dim": 64, "num_hidden_layers": 2,
                                 "vocab_size": 16384, "tie_word_embeddings": True},
                       [(1, 256), (4, 256), (1, 1024), (2, 512)]),
        "qwen2-896": ("qwen2", {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 32768},
                      [(1, 512), (4, 256)]),
        "llama-512-l4": ("llama", {"hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 8,
                                   "num_key_value_heads": 2, "head_dim": 64, "num_hidden_layers": 4,
                                   "vocab_size": 8192}, [(1, 2048), (4, 512)]),
        "llama-512-l2": ("llama", {"hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 8,
                                   "num_key_value_heads": 2, "head_dim": 64, "num_hidden_layers": 2,
                                   "vocab_size": 8192}, [(1, 2048), (4, 512)]),
        "qwen2-512": ("qwen2", {"hidden_size": 512, "intermediate_size": 2816, "num_attention_heads": 8,
                                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 16384},
                      [(1, 1024), (4, 384)]),
        "qwen2vl-512": ("qwen2_vl", {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                                     "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 8192,
                                     "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
                                     "vision_config": {"depth": 2, "embed_dim": 256, "hidden_size": 512,
                                                       "num_heads": 4, "mlp_ratio": 4}},
                        [(2, "448:1:40:30"), (1, "896:1:60:100")]),
        "qwen2vl-384": ("qwen2_vl", {"hidden_size": 384, "intermediate_size": 2048, "num_attention_heads": 6,
                                     "num_key_value_heads": 2, "num_hidden_layers": 3, "vocab_size": 8192,
                                     "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
                                     "vision_config": {"depth": 2, "embed_dim": 192, "hidden_size": 384,
                                                       "num_heads": 3, "mlp_ratio": 4}},
                        [(4, "224:2:40:60"), (1, "672:1:40:120")]),
    },
}
for _n in (1, 2, 4, 6):  # the per-layer share: the same width at several depths
    SUITES["cpu"][f"llama-256-l{_n}"] = ("llama", {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4,
                                                   "num_key_value_heads": 2, "head_dim": 64, "num_hidden_layers": _n,
                                                   "vocab_size": 4096}, [(1, 1024), (4, 256)])
SUITES["h200"] = {  # real widths (the lead's check): Llama-3B-sized 28 layers and Qwen2-VL-2B
    "llama-3b": ("llama", None, [(1, 2048), (4, 512), (4, 1024), (8, 512)]),
    "qwen2vl-2b": ("qwen2_vl", None, [(4, "448:1:40:30"), (1, "1120:1:100:200"), (4, "1120:1:100:200")]),
}


def build(family: str, over: dict | None, dtype: str, work: Path) -> Path:
    from side_by_side import LLAMA_3B, QWEN2_VL_2B, child_build

    over = over if over is not None else (LLAMA_3B if family == "llama" else QWEN2_VL_2B)
    tag = "-".join(f"{k[:3]}{v}" for k, v in sorted(over.items()) if isinstance(v, int))
    dest = work / f"{family}-{dtype}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"
    if not (dest / "config.json").is_file():
        child_build({"family": family, "dest": str(dest), "dtype": dtype, "overrides": dict(over)})
    return dest


def measure(one, held: int) -> float:
    import mlx.core as mx

    mx.synchronize()  # (a VLM's cache fill is started, not waited for: its tower is not this step's)
    mx.reset_peak_memory()
    one()
    one()
    return mx.get_peak_memory() - held


def text_probes(folder: Path, shapes, a) -> list[dict]:
    import mlx.core as mx

    from finetune_app.testing.fit_check import planner_gb
    from step_micro import ours_tool, rows_for

    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    out = []
    gc.collect()
    mx.clear_cache()
    held = mx.get_active_memory()
    with ours_tool(folder, SimpleNamespace(rank=16, lr=1e-4)) as (run, meta):
        for B, L in shapes:
            rows, prompts = rows_for(L, B, 0.65, vocab, seed=L)
            share = sum(len(r) - p for r, p in zip(rows, prompts)) / sum(map(len, rows))
            gc.collect()
            mx.clear_cache()
            one, facts = run(rows, prompts)
            t = time.perf_counter()
            peak = measure(one, held)
            pred = planner_gb(meta["cfg"].replace(batch_size=B), meta["info"], meta["config"], seq_len=L,
                              supervised=share)
            out.append({"B": B, "L": L, "positions": facts["positions"], "supervised_k": facts["supervised_k"],
                        "share": round(share, 4),
                        "measured_gb": round(peak / 1e9, 4), "predicted_gb": round(pred, 4),
                        "ratio": round(pred * 1e9 / peak, 3), "s": round(time.perf_counter() - t, 1)})
            print(f"  B={B} L={L:5} {out[-1]}", flush=True)
        a.model_facts = {"parameters": meta["info"].parameters, "config": meta["config"]}
        del run, meta
    return out


def vlm_probes(folder: Path, shapes, a) -> list[dict]:
    import mlx.core as mx

    from finetune_app.core import estimates
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.models import describe, load_base
    from finetune_app.testing.fit_check import planner_gb
    from vlm_step_micro import make_rows, ours_tool

    config = json.loads((folder / "config.json").read_text())
    info = describe(load_base(folder))
    a.model_facts = {"parameters": info.parameters, "config": config}
    out = []
    for variant in ("ours", "ours-e0"):
        gc.collect()
        mx.clear_cache()
        held = mx.get_active_memory()
        with ours_tool(folder, SimpleNamespace(rank=16, lr=1e-4), variant) as run:
            for B, shape in shapes:
                rows = make_rows(config, shape, B, seed=B)
                gc.collect()
                mx.clear_cache()
                one, facts, _ = run(rows)
                t = time.perf_counter()
                peak = measure(one, held)
                L = max(len(r["ids"]) for r in rows)
                share = sum(int(r["mask"].sum()) for r in rows) / sum(len(r["ids"]) for r in rows)
                patches = [int(g.prod()) for r in rows for g in r["grid"]]
                facts["patches"] = patches
                cfg = TrainConfig(batch_size=B, lora_rank=16)
                pred = planner_gb(cfg, info, config, seq_len=L, supervised=share,
                                  images=estimates.ImageLoad(patches=patches, cached=sum(patches) // 4,
                                                             tower=variant == "ours-e0"))
                out.append({"variant": variant, "B": B, "shape": shape, "L": L, "positions": facts.get("positions"),
                            "patches": patches, "share": round(share, 4),
                            "measured_gb": round(peak / 1e9, 4), "predicted_gb": round(pred, 4),
                            "ratio": round(pred * 1e9 / peak, 3), "s": round(time.perf_counter() - t, 1)})
                print(f"  {variant:7} B={B} {shape:14} {out[-1]}", flush=True)
            del run
    return out


def main() -> None:
    import mlx.core as mx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="cpu", choices=sorted(SUITES))
    p.add_argument("--models", default=None, help="comma-separated names of the suite (default: all)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--work", required=True, help="where the built models are kept (reused)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    suite = SUITES[a.suite]
    results = {"device": str(mx.default_device()), "suite": a.suite, "probes": []}
    t0 = time.perf_counter()
    for name in (a.models.split(",") if a.models else suite):
        family, over, shapes = suite[name]
        for dtype in a.dtypes.split(","):
            folder = build(family, over, dtype, work)
            print(f"{name} {dtype} ({folder})", flush=True)
            probes = (vlm_probes if family.endswith("_vl") else text_probes)(folder, shapes, a)
            results["probes"] += [{"model": name, "dtype": dtype, **r} for r in probes]
            results.setdefault("models", {})[f"{name}/{dtype}"] = a.model_facts
            atomic_write_text(a.out, json.dumps(results, indent=1))
    ratios = [r["ratio"] for r in results["probes"]]
    results["worst"] = max(ratios, key=lambda x: abs(x - 1))
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(a.out, json.dumps(results, indent=1))
    print(f"planner / measured: x{min(ratios):.3f} to x{max(ratios):.3f} over {len(ratios)} probes "
          f"({results['wall_s']} s)")


if __name__ == "__main__":
    main()
