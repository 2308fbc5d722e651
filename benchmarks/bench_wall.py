"""Process wall time from command to saved adapter, and the process's max RSS (os.wait4), for one
epoch of variable-length text rows: `finetune-app train` vs `python -m mlx_lm lora`, alternated.

    python benchmarks/bench_wall.py --rows 200 --batch-size 8 --repeats 2 [--hidden 256 --layers 4]

Same tiny random-weight Llama (finetune_app.testing.tiny_models), same data folder
(train.jsonl / valid.jsonl, chat rows, Alpaca-shaped lengths from bench_packing.write_rows), same
LoRA rank/scale on every layer, AdamW, the same learning rate, completion-only loss for both
(mlx_lm: --mask-prompt), one epoch (mlx_lm: iters = ceil(rows / batch)), no periodic evaluation
or checkpoints; each tool's own final save. Wall time is from fork to exit of the whole command:
imports, load, data preparation, compilation, training, save. CPU here; the same script runs on
a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_packing import write_rows  # noqa: E402

HUGE = 10**6


def timed(argv: list[str], log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # macOS: bytes, Linux: KiB
    return {"wall_s": wall, "max_rss_mb": rss / 2**20, "exit": os.waitstatus_to_exitcode(status)}


def main() -> None:
    from finetune_app.testing.tiny_models import build_tiny_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--hidden", type=int, default=0)
    p.add_argument("--layers", type=int, default=0)
    p.add_argument("--work")
    p.add_argument("--json-out")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-wall-"))
    over = {}
    if args.hidden:
        over.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden, head_dim=args.hidden // 4,
                    num_attention_heads=4, num_key_value_heads=2)
    if args.layers:
        over["num_hidden_layers"] = args.layers
    model = build_tiny_model("llama", work / "model", **over)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_rows(data / "train.jsonl", args.rows, seed=0)
    write_rows(data / "valid.jsonl", 8, seed=1)
    iters = math.ceil(args.rows / args.batch_size)
    import yaml

    (work / "mlx_lm.yaml").write_text(yaml.safe_dump({
        "lora_parameters": {"rank": args.rank, "scale": 1.0, "dropout": 0.0},
        "optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decay": 0.0}}}))
    lines = []
    for r in range(args.repeats):
        for tool in ("ours", "mlx_lm") if r % 2 == 0 else ("mlx_lm", "ours"):
            out = work / f"{tool}-{r}"
            if tool == "ours":
                argv = [sys.executable, "-c", "import sys; from finetune_app.cli import main; sys.exit(main())",
                        "train", "--model", str(model), "--data", str(data), "--output", str(out),
                        "--epochs", "1", "--batch-size", str(args.batch_size), "--learning-rate", str(args.lr),
                        "--lora-rank", str(args.rank), "--lora-alpha", str(float(args.rank)),
                        "--steps-per-eval", str(HUGE), "--save-every", str(HUGE), "--sample-count", "0",
                        "--steps-per-report", "5", "--seed", "0"]
                adapter = out / "adapters.safetensors"
            else:
                argv = [sys.executable, "-m", "mlx_lm", "lora", "--model", str(model), "--train", "--data", str(data),
                        "--iters", str(iters), "--batch-size", str(args.batch_size), "--learning-rate", str(args.lr),
                        "--num-layers", "-1", "--mask-prompt", "--steps-per-report", "5",
                        "--steps-per-eval", str(HUGE), "--save-every", str(HUGE), "--val-batches", "-1",
                        "--seed", "0", "--adapter-path", str(out), "-c", str(work / "mlx_lm.yaml")]
                adapter = out / "adapters.safetensors"
            res = timed(argv, work / f"{tool}-{r}.log")
            line = {"repeat": r, "tool": tool, **res, "adapter_saved": adapter.is_file(), "rows": args.rows,
                    "batch_size": args.batch_size, "steps": iters}
            if tool == "ours":
                first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                         if '"first_step"' in x] if (out / "metrics.jsonl").is_file() else []
                line["first_step_s"] = first[0]["seconds_since_process_start"] if first else None
            print(json.dumps(line), flush=True)
            lines.append(line)
    med = {}
    for tool in ("ours", "mlx_lm"):
        ok = [x for x in lines if x["tool"] == tool and x["exit"] == 0 and x["adapter_saved"]]
        walls = sorted(x["wall_s"] for x in ok)
        rss = sorted(x["max_rss_mb"] for x in ok)
        if walls:
            med[tool] = (walls[len(walls) // 2], rss[len(rss) // 2])
            print(f"{tool}: median wall {med[tool][0]:.1f} s, max RSS {med[tool][1]:.0f} MB ({len(ok)} runs)")
    if len(med) == 2:
        print(f"wall ratio mlx_lm/ours = x{med['mlx_lm'][0] / med['ours'][0]:.2f}; "
              f"RSS ours/mlx_lm = {med['ours'][1] / med['mlx_lm'][1]:.2f}")
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)


if __name__ == "__main__":
    main()
