"""Per-batch MLX peak of one training step, ours vs mlx-lm's, on the benchmark's text batches (#16).

The side-by-side text run (benchmarks/side_by_side.py, setup "text") trains on Alpaca-shaped rows
(`sbs_data.write_text`) in length-sorted batches; both tools sort and batch the same way, so each
batch is the same rows for both. Here each batch that decides memory (per compiled (M, K) shape of
ours' ShapePlan: the batch with the most positions, then the most supervised tokens) runs one step
per tool: ours at its planned (M, K) shape, mlx-lm's compiled step (`step_micro.mlx_lm_tool`) at its
own padding (to a multiple of 32) with `--mask-prompt` offsets. Per batch: MLX's peak over the
shape's first call and one more step, less what was active before it (weights, LoRA, AdamW state):
the step's own memory, the part the tools can differ in.

    python benchmarks/text_mem.py --scale 48 --set vocab_size=128256 --out /tmp/tm.json   # CPU, the 3B's vocab
    python benchmarks/text_mem.py --size real --out $OUT/tm.json                            # GPU (3B-sized)

`--head plain`: ours' SFT head before the fused one, `--lora float32`: ours' LoRA branch before it ran
in the model's dtype (for a before/after); `--first N` / `--last N`:
only the N shortest / longest deciding batches.

`--size wide`: the 3B's config with `--layers` layers and, for a CPU, every width (hidden,
intermediate, heads, vocabulary) divided by `--scale` (each memory term keeps its share at a given
row length; the compute does not fit a shared 2-core box at full width).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def overrides(a) -> dict:
    from side_by_side import LLAMA_3B

    over = dict(LLAMA_3B)
    if a.size == "wide":
        s = a.scale
        over |= {"num_hidden_layers": a.layers, "hidden_size": 3072 // s, "intermediate_size": 8192 // s,
                 "vocab_size": 128256 // s, "num_attention_heads": max(1, 24 // s),
                 "num_key_value_heads": max(1, 8 // s)}
    for kv in a.set:
        k, v = kv.split("=", 1)
        over[k] = int(v)
    return over


def rows_of(folder: Path, data: Path, vocab: int):
    """(ids, prompt length) of each train row, as mlx-lm's ChatDataset with --mask-prompt makes them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    out = []
    for line in (data / "train.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
        prompt = len(tok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True, return_dict=False))
        out.append((np.asarray(ids, np.int32) % vocab, prompt))
    return out


def deciding_batches(rows, batch_size: int):
    """The epoch's batches (ours' order), the ShapePlan, and per planned shape the batch that
    decides its memory (most positions, then most supervised tokens)."""
    from finetune_app.core.data.batching import epoch_batches
    from finetune_app.core.training.batch import ShapePlan

    lengths = [len(r) for r, _ in rows]
    batches = epoch_batches(lengths, batch_size, seed=0, epoch=0)
    sup = [len(r) - p for r, p in rows]  # targets: every token from the prompt's end on
    plan = ShapePlan([(len(b), max(lengths[i] for i in b), sum(sup[i] for i in b)) for b in batches])
    pick = {}
    for b in batches:
        key = plan(max(lengths[i] for i in b), sum(sup[i] for i in b))
        score = (max(lengths[i] for i in b), sum(sup[i] for i in b))
        if key not in pick or score > pick[key][0]:
            pick[key] = (score, b)
    return batches, plan, [pick[k][1] for k in sorted(pick)]


def measure(run, rows_b) -> dict:
    import mlx.core as mx

    ids = [r for r, _ in rows_b]
    prompts = [p for _, p in rows_b]
    gc.collect()
    mx.clear_cache()
    one, facts = run(ids, prompts)
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    t = time.perf_counter()
    one()
    one()
    return facts | {"step_gb": round((mx.get_peak_memory() - before) / 1e9, 4),
                    "held_gb": round(before / 1e9, 4), "two_steps_s": round(time.perf_counter() - t, 2)}


def main() -> None:
    import mlx.core as mx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("wide", "real"), default="wide")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--scale", type=int, default=1, help="--size wide: widths divided by this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=INT",
                   help="--size wide: a config value besides (e.g. vocab_size=128256 with --scale 48)")
    p.add_argument("--last", type=int, default=None, help="only the N deciding batches with the longest rows")
    p.add_argument("--first", type=int, default=None, help="only the N deciding batches with the shortest rows")
    p.add_argument("--head", choices=("fused", "plain"), default="fused",
                   help="ours' SFT head: plain = the path before the fused head (one matmul up to the logits budget)")
    p.add_argument("--lora", choices=("model-dtype", "float32"), default="model-dtype",
                   help="ours' LoRA branch: float32 = mlx-lm's LoRALinear as is (before #16 textmem2)")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tools", default="ours,mlx_lm")
    p.add_argument("--work", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import sbs_data
    from side_by_side import child_build
    from step_micro import mlx_lm_tool, ours_tool

    if a.head == "plain":
        from finetune_app.core.training import chunked_ce

        chunked_ce.head_weight = lambda owner: None  # sft.loss then takes the plain / recomputing path
    if a.lora == "float32":
        from finetune_app.core.training import lora_dtype

        lora_dtype.in_model_dtype = lambda model: 0  # adapters.attach then keeps mlx-lm's layer
    work = Path(a.work or tempfile.mkdtemp(prefix="text_mem_"))
    name = "llama-3b" if a.size == "real" else f"llama-wide-L{a.layers}-s{a.scale}" + "".join(f"-{x}" for x in a.set)
    folder = work / f"{name}-{a.dtype}"
    if not (folder / "config.json").is_file():
        child_build({"family": "llama", "dest": str(folder), "dtype": a.dtype, "overrides": overrides(a)})
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    sample = sbs_data.sample_text()
    tpw = len(tok.encode(" " + sample, add_special_tokens=False)) / len(sample.split())
    data = work / f"data-{a.rows}"
    if not (data / "train.jsonl").is_file():
        sbs_data.write_text(data, a.rows, a.batch_size, tokens_per_word=tpw)
    rows = rows_of(folder, data, vocab)
    lengths = sorted(len(r) for r, _ in rows)
    batches, plan, chosen = deciding_batches(rows, a.batch_size)
    chosen = chosen[-a.last:] if a.last else chosen[:a.first] if a.first else chosen
    print(f"{len(rows)} rows: median {lengths[len(lengths) // 2]}, max {lengths[-1]} tokens; "
          f"{len(batches)} batches; plan {plan.shapes}; {len(chosen)} deciding batches", flush=True)
    a.steps = a.warmup = 0
    res = {"device": str(mx.default_device()), "config": overrides(a), "dtype": a.dtype, "plan": plan.shapes,
           "head": a.head, "lora": a.lora,
           "median": lengths[len(lengths) // 2], "max": lengths[-1], "tools": {}}
    for tool in a.tools.split(","):
        gc.collect()
        mx.clear_cache()
        res["tools"][tool] = out = []
        cm = ours_tool(folder, a, buckets=plan) if tool == "ours" else mlx_lm_tool(folder, a)
        with cm as (run, _):
            measure(run, [rows[i] for i in chosen[0]])  # the optimizer state exists from here on
            for b in chosen:
                rb = [rows[i] for i in b]
                rec = {"longest": max(len(r) for r, _ in rb), "supervised": sum(len(r) - p for r, p in rb)}
                rec |= measure(run, rb)
                out.append(rec)
                print(f"  {tool:7} longest {rec['longest']:4} sup {rec['supervised']:5} "
                      f"positions {'x'.join(map(str, rec['positions'])):>8} K {rec.get('supervised_k', '-')!s:>5} "
                      f"step peak {rec['step_gb']:.4f} GB (held {rec['held_gb']:.3f})  {rec['two_steps_s']} s",
                      flush=True)
        del run
    if {"ours", "mlx_lm"} <= set(res["tools"]):
        print(f"{'longest':>7} {'sup':>5} {'ours GB':>8} {'mlx_lm GB':>9} {'ratio':>6}")
        for o, m in zip(res["tools"]["ours"], res["tools"]["mlx_lm"]):
            print(f"{o['longest']:>7} {o['supervised']:>5} {o['step_gb']:>8.4f} {m['step_gb']:>9.4f} "
                  f"{o['step_gb'] / m['step_gb']:>6.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
