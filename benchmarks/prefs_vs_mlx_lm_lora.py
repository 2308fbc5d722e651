"""Our DPO against mlx-lm-lora's (`python -m mlx_lm_lora.train --train-mode dpo`) on the same tiny
random-weight Llama, the same text preference data (finetune_app/testing/preference_tasks.py's
format task: "[word]" preferred over other wrappings), steps, batch, learning rate, LoRA rank and
scale, beta (0.1, both defaults) and all layers adapted; each validates one batch (mlx-lm-lora at its
first and last step, ours at the last). Both run as commands; reported: seconds
from the command to the saved adapter, pairs/s over that time, the child's peak RSS, and held-out
preference accuracy of each adapter scored the same way, through mlx-lm's own
`load(model, adapter_path)` + chat template + one forward per answer. Not a test: it prints a table.

mlx-lm-lora is not one of the project's dependencies: install it into a scratch folder and name it

    pip install --no-deps --target /tmp/mlx-lm-lora mlx-lm-lora      # (5.10.2 measured)
    PYTHONPATH=. python benchmarks/prefs_vs_mlx_lm_lora.py --mlx-lm-lora /tmp/mlx-lm-lora [--iters 60]

Shim (documented, only in mlx-lm-lora's child process): every mlx-lm-lora trainer starts with
`mx.set_wired_limit(mx.device_info()["max_recommended_working_set_size"])`, a key only Metal's
device_info has (MLX on CPU: {'architecture', 'device_name'}), so it stops with a KeyError off a
Mac. The child adds the key (the machine's RAM) before running mlx-lm-lora's own `train` module
unchanged; set_wired_limit itself is accepted on CPU. Its `fuse` (default true) is switched off
by its config file, so it saves the adapter as we do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from finetune_app.testing.preference_tasks import make_format_preferences
from finetune_app.testing.tiny_models import build_tiny_model

SHIM = """
import os, runpy, sys
sys.path.insert(0, {target!r})
import mlx.core as mx
_device_info = mx.device_info
def device_info():
    info = dict(_device_info())
    info.setdefault("max_recommended_working_set_size", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return info
mx.device_info = device_info
sys.argv = ["mlx_lm_lora.train", *{argv!r}]
runpy.run_module("mlx_lm_lora.train", run_name="__main__")
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and this child's own peak RSS (MB, from wait4's rusage)."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            sys.exit(f"{cmd[:4]} failed:\n{err.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def runtime_preference_accuracy(model_dir, adapter, data_dir, split: str = "valid") -> float:
    """Held-out preference accuracy through mlx-lm's own path: `mlx_lm.load(base, adapter_path)`,
    the tokenizer's chat template, one forward per answer; log p(chosen) > log p(rejected)."""
    import mlx.core as mx
    import mlx_lm
    import numpy as np

    model, tok = mlx_lm.load(str(model_dir), adapter_path=str(adapter) if adapter else None)
    model.eval()
    right, rows = 0, [json.loads(line) for line in (Path(data_dir) / f"{split}.jsonl").read_text().splitlines()]
    for row in rows:
        user = [{"role": "user", "content": row["prompt"]}]
        start = len(tok.apply_chat_template(user, add_generation_prompt=True))
        scores = []
        for side in ("chosen", "rejected"):
            ids = tok.apply_chat_template(user + [{"role": "assistant", "content": row[side]}])
            logits = model(mx.array([ids]))[0].astype(mx.float32)
            lp = np.asarray(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
            scores.append(sum(lp[t - 1, ids[t]] for t in range(start, len(ids))))
        right += scores[0] > scores[1]
    return right / max(1, len(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlx-lm-lora", required=True, help="folder mlx-lm-lora was installed into (pip --target)")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="prefs-lm-lora-bench-"))
    model = build_tiny_model("llama", root / "model", seed=0)
    data = make_format_preferences(root / "format")
    config = root / "mlx-lm-lora.yaml"  # JSON is YAML: no fusing, the same LoRA as ours (scale = alpha / rank = 1)
    config.write_text(json.dumps({"fuse": False, "lora_parameters": {"rank": args.rank, "scale": 1.0, "dropout": 0.0}}))
    ours_dir, theirs_dir = root / "ours", root / "theirs"
    runs = {
        "ours": [sys.executable, "-m", "finetune_app", "train", "--model", str(model), "--data", str(data),
                 "--output", str(ours_dir), "--objective", "dpo", "--beta", "0.1", "--lr-schedule", "constant",
                 "--iters", str(args.iters), "--batch-size", str(args.batch_size), "--learning-rate",
                 str(args.learning_rate), "--lora-rank", str(args.rank), "--lora-alpha", str(args.rank),
                 "--steps-per-eval", "100000", "--val-batches", "1", "--save-every", "100000", "--sample-count", "0",
                 "--seed", "0", "--quiet"],
        "mlx-lm-lora": [sys.executable, "-c", SHIM.format(target=str(Path(args.mlx_lm_lora).resolve()), argv=[
            "--model", str(model), "--train", "--train-mode", "dpo", "--data", str(data), "--adapter-path",
            str(theirs_dir), "--iters", str(args.iters), "--batch-size", str(args.batch_size), "--learning-rate",
            str(args.learning_rate), "--beta", "0.1", "--num-layers", "-1", "--steps-per-eval", "100000", "--val-batches", "1",
            "--save-every", "100000", "--seed", "0", "--config", str(config)])],
    }
    base_acc = runtime_preference_accuracy(model, None, data)
    print(f"base model: held-out preference accuracy {base_acc:.3f} ({args.iters} steps of {args.batch_size} pairs)")
    print("| trainer | command to adapter (s) | pairs/s | peak RSS (MB) | held-out preference accuracy |")
    print("|---|---:|---:|---:|---:|")
    for name, cmd in runs.items():
        seconds, rss = timed(cmd)
        acc = runtime_preference_accuracy(model, ours_dir if name == "ours" else theirs_dir, data)
        print(f"| {name} | {seconds:.1f} | {args.iters * args.batch_size / seconds:.2f} | {rss:.0f} | {acc:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
