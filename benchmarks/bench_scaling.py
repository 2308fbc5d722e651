"""Data-parallel scaling of our engine: 1 process vs N processes over MLX's distributed backend.

    python benchmarks/bench_scaling.py --family qwen2_vl --config-overrides "$Q2B" --dtype bfloat16 \
        --image-size 448 --steps 40 --batch-size 16 --gpus 2 --json-out scaling.jsonl

Both runs train the same model on the same data with the same *global* batch; the N-process run
is started with `mlx.launch --backend nccl` on a CUDA machine (ring elsewhere), each rank on its
own GPU. Steady-state examples/s comes from the engine's own reports (metrics.jsonl), excluding the
first report (compilation, warm-up). Scaling efficiency = (examples/s with N) / (N x examples/s
with 1). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_data, make_model  # noqa: E402


def launcher() -> list[str]:
    """`mlx.launch`, or the same entry point through Python where the script is not on PATH."""
    import shutil

    if shutil.which("mlx.launch"):
        return ["mlx.launch"]
    return [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; "
            "sys.argv[0] = 'mlx.launch'; sys.exit(main())"]


def steady(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"][1:]
    return {"examples_per_second": statistics.median(r["examples_per_second"] for r in train),
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in train),
            "peak_memory_gb": max(r["peak_memory_gb"] for r in train),
            "final_loss": train[-1]["loss"], "reports": len(train)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="qwen2_vl")
    p.add_argument("--model", default=None)
    p.add_argument("--config-overrides", default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-valid", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=0)
    p.add_argument("--answer-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--backend", default=None, help="nccl on CUDA, ring otherwise")
    p.add_argument("--work", default=None)
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    import mlx.core as mx

    backend = args.backend or ("nccl" if mx.cuda.is_available() else "ring")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scaling-"))
    kind = "text" if args.family in ("llama", "qwen2", "qwen3") else "vlm"
    model = make_model(args.family, work / "model", args)
    data = make_data(kind, work / "data", args, model)
    common = ["train", "--model", str(model), "--data", str(data), "--iters", str(args.steps),
              "--batch-size", str(args.batch_size), "--steps-per-report", "5", "--steps-per-eval", "1000000",
              "--save-every", "1000000", "--sample-count", "0", "--quiet", "--lr-schedule", "constant"]
    env = dict(os.environ, FINETUNE_RECORD_RUNS="0")
    results = {}
    for n in (1, args.gpus):
        out = work / f"run-{n}"
        cmd = [sys.executable, "-m", "finetune_app", *common, "--output", str(out)]
        if n > 1:
            cmd = [*launcher(), "--backend", backend, "-n", str(n), "--", *cmd]
        run_env = dict(env, CUDA_VISIBLE_DEVICES="0") if n == 1 and backend == "nccl" else env
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
        if r.returncode != 0 or not (out / "metrics.jsonl").exists():
            print(r.stdout[-4000:], r.stderr[-4000:])
            return 1
        results[n] = {"processes": n, "wall_s": round(time.time() - t0, 1), **steady(out)}
        print(json.dumps(results[n]), flush=True)
    one, many = results[1]["examples_per_second"], results[args.gpus]["examples_per_second"]
    summary = {"family": args.family, "backend": backend, "global_batch": args.batch_size, "steps": args.steps,
               "speedup": round(many / one, 3), "efficiency": round(many / (args.gpus * one), 3),
               "loss_1": results[1]["final_loss"], f"loss_{args.gpus}": results[args.gpus]["final_loss"],
               "date": time.strftime("%Y-%m-%d"), "runs": results}
    print("SUMMARY " + json.dumps(summary), flush=True)
    if args.json_out:
        with open(args.json_out, "a") as fh:
            fh.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
