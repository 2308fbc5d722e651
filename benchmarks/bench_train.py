"""Training throughput, side by side: our engine vs `python -m mlx_vlm.train` and `mlx_lm lora`.

Not part of the test suite. Every run is a subprocess (ours too), so timings, peak memory and max
RSS are measured the same way for every tool. Same model folder, same train/valid JSONL files
(one folder both tools read), same steps, batch, learning rate (constant), AdamW without weight
decay, no gradient clipping, LoRA rank/alpha/dropout on every linear layer of the language
model, completion-only loss, same seed, no evaluation or saving inside the timed steps.

    python benchmarks/bench_train.py                      # all CPU setups, 2 repeats
    python benchmarks/bench_train.py --setup qwen2_vl --repeats 3 --steps 200
    python benchmarks/bench_train.py --setup text --family llama \
        --config-overrides '{"hidden_size": 2048, "num_hidden_layers": 16, ...}' --dtype bfloat16 \
        --seq-len 512 --measure-peak --device-note "H100 80GB"
    python benchmarks/bench_train.py --setup qwen2_vl --model /path/to/model --image-size 448

Setups:
  qwen2_vl  tiny Qwen2-VL, demo shapes: ours | mlx_vlm.train defaults | mlx_vlm.train --pad-to-multiple 1
  fastvlm   tiny FastVLM, frozen tower, --epochs (3): ours (feature cache) | ours (no cache) | mlx_vlm.train
            (which cannot train FastVLM: its error is recorded)
  text      tiny Llama, demo instructions: ours | mlx_lm lora (--mask-prompt, compiled step)

Per run it prints one JSON line (prefix "RUN "), per setup a table of medians and the ratios
ours/theirs (prefix "SUMMARY " for the JSON form). Metrics:
  ex/s, sup tok/s   steady state: from the report after --warmup-steps to the last report before the
                    final step, timed by the harness from the arrival of the tools' report lines
                    (one clock, one method for all tools); supervised tokens/s = examples/s x the
                    mean supervised tokens per training example, counted from the data by our
                    encoder (both tools supervise the same tokens; checked against their counts)
  e2e ex/s          all steps / wall time of the whole training phase (first step to last report,
                    compilation and warm-up included, evaluation excluded)
  self ex/s         what the tool itself reports (mlx-vlm's and mlx-lm's exclude data loading)
  peak GB           mx.get_peak_memory() as each tool reports it; RSS GB: the process's max RSS
  train loss        the tool's own last reported train loss (mean over its last report window)
  val loss          the same metric for every adapter: our loader + the SFT objective on the library path, mean over all
                    supervised tokens of the validation split
  MFU               achieved model FLOP/s / peak FLOP/s (see flops_per_example()), with --measure-peak
                    or --peak-tflops
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
HUGE = 10**9
FASTVLM_ERROR_HINT = "mlx_vlm.train cannot train FastVLM (BatchNorm in train mode, logits/targets misaligned)"


def now() -> float:
    return time.monotonic()  # CLOCK_MONOTONIC: the same clock in the harness and its children


def emit_json(obj) -> None:
    sys.stdout.write("BENCH " + json.dumps(obj) + "\n")
    sys.stdout.flush()


# =================================================================================================
# Children (each run is `python bench_train.py --child-KIND SPEC.json`)
# =================================================================================================

def child_ours(spec: dict) -> None:
    """Our engine, exactly as the CLI runs it (Trainer + TrainConfig), reporting events as JSON."""
    sys.path.insert(0, str(REPO))
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.events import (
        StateChanged,
        TrainReport,
        ValReport,
        to_dict,
    )
    from finetune_app.core.training.trainer import Trainer

    def listener(ev):
        if isinstance(ev, TrainReport):
            emit_json({"ev": "train", "t": now(), **to_dict(ev)})
        elif isinstance(ev, ValReport):
            emit_json({"ev": "val", "t": now(), **to_dict(ev)})
        elif isinstance(ev, StateChanged):
            emit_json({"ev": "state", "t": now(), "state": ev.state, "reason": ev.reason})

    cfg = TrainConfig.from_dict(spec["config"])
    result = Trainer(cfg, listeners=[listener]).run()
    emit_json({"ev": "done", "t": now(), "status": result.status, "final_loss": result.final_loss,
               "final_val_loss": result.final_val_loss})


def child_mlx_lm(spec: dict) -> None:
    """`mlx_lm lora` through its own main(); only a reporting callback is added (it prints the
    metrics the CLI computes anyway: peak memory is not in its console output)."""
    from mlx_lm import lora
    from mlx_lm.tuner.trainer import TrainingCallback

    class Callback(TrainingCallback):
        def on_train_loss_report(self, info):
            emit_json({"ev": "train", "t": now(), **{k: float(v) for k, v in info.items()}})

        def on_val_loss_report(self, info):
            emit_json({"ev": "val", "t": now(), **{k: float(v) for k, v in info.items()}})

    original_train = lora.train

    def train(*a, **k):
        emit_json({"ev": "state", "state": "started", "t": now()})
        return original_train(*a, **k)

    lora.get_reporting_callbacks = lambda *a, **k: Callback()  # run() asks it for the callback
    lora.train = train
    sys.argv = ["mlx_lm.lora"] + spec["argv"]
    lora.main()
    emit_json({"ev": "done", "t": now()})


def child_mlx_vlm(spec: dict) -> None:
    """`python -m mlx_vlm.train` after our loading patches (core/patches) (only for the tiny FastVLM, whose
    configurable tower mlx-vlm cannot load by itself), so what gets recorded is its training error."""
    import runpy

    sys.path.insert(0, str(REPO))
    from finetune_app.core import patches

    patches.apply()
    sys.argv = ["mlx_vlm.train"] + spec["argv"]
    runpy.run_module("mlx_vlm.train", run_name="__main__", alter_sys=True)


def child_eval(spec: dict) -> None:
    """Mean validation token loss of an adapter, the same way for every tool's adapter."""
    sys.path.insert(0, str(REPO))
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.families import family_for
    from finetune_app.core.models import load_base
    from finetune_app.core.training.objectives import sft
    from finetune_app.core.training.prepare import prepare_examples

    base = load_base(spec["model"])
    adapters.load_into(base, spec["adapter"])
    n_lora = sum(v.size for k, v in tree_flatten(base.model.parameters()) if "lora_" in k)
    enc = Encoder(base, completion_only=True)  # the family gives FastVLM's features per image
    cfg = TrainConfig(model=spec["model"], data=spec["data"], output="-", seed=spec.get("seed", 0))
    data = prepare_examples(cfg, base, enc)
    family = family_for(base)  # not started: the library's own forward, for every tool's adapter
    total, count, bs = 0.0, 0, spec["batch_size"]
    for start in range(0, len(data.valid), bs):
        s, n, _ = sft.loss(base.model, family, family.plan(data.valid[start:start + bs]))
        mx.eval(s, n)
        total, count = total + s.item(), count + int(n.item())
    emit_json({"ev": "eval", "val_loss": total / max(count, 1), "val_tokens": count, "lora_params": int(n_lora)})


def child_info(spec: dict) -> None:
    """Parameter counts and per-example token statistics of the data, from our encoder."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    from mlx.utils import tree_flatten

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.models import load_base
    from finetune_app.core.training.prepare import prepare_examples

    base = load_base(spec["model"], lazy=True)
    params = dict(tree_flatten(base.model.parameters()))
    cfg = base.config
    tied = bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))
    vision_roots = ("vision_tower", "vision_model", "visual", "mm_projector", "multi_modal_projector")
    n_vision = sum(v.size for k, v in params.items() if k.split(".")[0] in vision_roots)
    n_embed = sum(v.size for k, v in params.items() if k.endswith("embed_tokens.weight"))
    n_lm = sum(v.size for k, v in params.items() if k.split(".")[0] not in vision_roots)
    n_lm_matmul = n_lm - (0 if tied else n_embed)  # an untied embedding is a lookup, not a matmul
    enc = Encoder(base, completion_only=True)
    data = prepare_examples(TrainConfig(model=spec["model"], data=spec["data"], output="-"), base, enc)

    def patches(ex):
        g = ex.images.get("image_grid_thw")
        return int(np.prod(g, axis=-1).sum()) if g is not None else 0

    tr = data.train
    emit_json({"ev": "info", "params_total": int(sum(v.size for v in params.values())),
               "params_lm": int(n_lm), "params_lm_matmul": int(n_lm_matmul), "params_vision": int(n_vision),
               "dtype": str(next(iter(params.values())).dtype).replace("mlx.core.", ""),
               "n_train": len(tr), "n_valid": len(data.valid),
               "mean_len": float(np.mean([e.model_length for e in tr])),
               "mean_supervised": float(np.mean([e.n_targets for e in tr])),
               "mean_patches": float(np.mean([patches(e) for e in tr])),
               "max_len": int(max(e.model_length for e in tr))})


def child_load(spec: dict) -> None:
    """Load a model fully (weights evaluated) through our loader: does a big config load at all?"""
    sys.path.insert(0, str(REPO))
    import resource

    import mlx.core as mx
    from mlx.utils import tree_flatten

    from finetune_app.core.models import load_base

    t0 = time.perf_counter()
    base = load_base(spec["model"])
    params = tree_flatten(base.model.parameters())
    mx.eval([v for _, v in params])
    emit_json({"ev": "load", "seconds": time.perf_counter() - t0, "params": int(sum(v.size for _, v in params)),
               "gb": sum(v.nbytes for _, v in params) / 1e9, "dtype": str(params[0][1].dtype).replace("mlx.core.", ""),
               "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9})


def child_peak(spec: dict) -> None:
    """Peak matmul rate: an n x n x n matmul in `dtype`, best of several timed runs."""
    import mlx.core as mx

    n, dtype = spec["size"], getattr(mx, spec["dtype"])
    a = mx.random.normal((n, n)).astype(dtype)
    b = mx.random.normal((n, n)).astype(dtype)
    mx.eval(a, b)
    mx.eval(a @ b)  # warm-up
    best = float("inf")
    for _ in range(spec.get("reps", 5)):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t0)
    emit_json({"ev": "peak", "tflops": 2 * n**3 / best / 1e12, "size": n, "dtype": spec["dtype"],
               "seconds": best, "device": str(mx.default_device())})


CHILDREN = {"--child-ours": child_ours, "--child-mlx-lm": child_mlx_lm, "--child-mlx-vlm": child_mlx_vlm, "--child-eval": child_eval,
            "--child-info": child_info, "--child-peak": child_peak, "--child-load": child_load}


# =================================================================================================
# Running a child and reading what it prints
# =================================================================================================

def run_child(cmd: list[str], log: Path, timeout: float | None = None) -> dict:
    """Run a command, timestamping each stdout line on arrival; returns lines, rc, max RSS."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = now()
    load0 = os.getloadavg()[0]
    with open(log, "w") as errf:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True, env=env, cwd=str(log.parent))
        lines = []
        for line in p.stdout:
            lines.append((now(), line.rstrip("\n")))
            if timeout and now() - t0 > timeout:
                p.kill()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    log.with_suffix(".out").write_text("".join(f"{t - t0:9.3f} {x}\n" for t, x in lines))
    err_tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()][-3:]
    return {"lines": lines, "rc": p.returncode, "wall": now() - t0, "t_start": t0,
            "max_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # Linux: kilobytes
            "load_start": load0, "load_end": os.getloadavg()[0], "stderr_tail": err_tail}


def bench_events(lines) -> list[dict]:
    out = []
    for t, line in lines:
        if line.startswith("BENCH "):
            ev = json.loads(line[6:])
            ev["arrival"] = t
            out.append(ev)
    return out


def parse_mlx_vlm(lines) -> list[dict]:
    """mlx_vlm.train prints 'Training (iteration N):' then lines of name=value pairs."""
    events, cur = [], None
    for t, line in lines:
        s = line.strip()
        if s.startswith(("Training (iteration", "Validation (iteration")):
            if cur:
                events.append(cur)
            cur = {"ev": "train" if s.startswith("Training") else "val",
                   "iteration": int(s.split("iteration")[1].strip(" ):")), "arrival": t}
            continue
        if cur is None:
            continue
        if "=" not in s:
            events.append(cur)
            cur = None
            continue
        for pair in s.split(", "):
            if "=" in pair:
                k, v = pair.split("=", 1)
                try:
                    cur[k.strip()] = float(v.replace(",", ""))
                except ValueError:
                    cur[k.strip()] = v
        cur["arrival"] = t  # the block's last line
    if cur:
        events.append(cur)
    return events


# =================================================================================================
# Data and models
# =================================================================================================

FILLER = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "small", "model", "learns", "to", "read", "long", "sentences", "about", "colours", "shapes", "numbers", "and", "cities"]


def lengthen(text: str, n_words: int) -> str:
    words = [FILLER[i % len(FILLER)] for i in range(max(0, n_words))]
    return text + (" " + " ".join(words) if words else "")


def tokens_per_filler_word(model: Path) -> float:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model))
        return max(0.25, len(tok.encode(" " + " ".join(FILLER), add_special_tokens=False)) / len(FILLER))
    except (OSError, ValueError, ImportError):
        return 1.0


def make_data(kind: str, dest: Path, args, model: Path | None = None) -> Path:
    """One folder that both tools read: train.jsonl / valid.jsonl in the {"messages": [...]} chat
    layout (+ "images" relative to the folder for VLMs). `--seq-len` pads prompts and answers
    with filler words towards that many tokens (words per token measured with the model's
    tokenizer; answers get --answer-fraction of it)."""
    from finetune_app.core.data.demo import (
        make_instruction_dataset,
        make_shapes_dataset,
    )

    n_train, n_valid = args.n_train, args.n_valid
    dest.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "valid": []}
    if kind == "vlm":
        import csv

        src = make_shapes_dataset(dest / "_shapes", n_train=n_train, n_valid=n_valid,
                                  size=args.image_size, seed=args.seed, overwrite=True)
        shutil.rmtree(dest / "images", ignore_errors=True)
        shutil.move(str(src / "images"), str(dest / "images"))
        with open(src / "captions.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                rows[r["split"]].append({"images": ["images/" + r["filename"]], "messages": [
                    {"role": "user", "content": "Describe this image."},
                    {"role": "assistant", "content": r["caption"]}]})
        shutil.rmtree(src, ignore_errors=True)
    else:
        src = make_instruction_dataset(dest / "_instr", n=n_train, n_valid=n_valid, seed=args.seed, overwrite=True)
        for split in ("train", "valid"):
            for line in (src / f"{split}.jsonl").read_text().splitlines():
                r = json.loads(line)
                user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
                rows[split].append({"messages": [{"role": "user", "content": user},
                                                 {"role": "assistant", "content": r["output"]}]})
        shutil.rmtree(src, ignore_errors=True)
    if args.seq_len:
        per_word = tokens_per_filler_word(model) if model else 1.0
        for split_rows in rows.values():
            for r in split_rows:
                extra = int(max(0, args.seq_len - 40) / per_word)  # in words
                a = int(extra * args.answer_fraction)
                r["messages"][0]["content"] = lengthen(r["messages"][0]["content"], extra - a)
                r["messages"][1]["content"] = lengthen(r["messages"][1]["content"], a)
    for split, rs in rows.items():
        (dest / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return dest


def to_dtype(model_dir: Path, dtype: str) -> None:
    """Cast a built model's floating weights (e.g. to bfloat16, as real checkpoints ship)."""
    import mlx.core as mx

    f = model_dir / "model.safetensors"
    w = mx.load(str(f))
    w = {k: (v.astype(getattr(mx, dtype)) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in w.items()}
    mx.save_safetensors(str(f), w, metadata={"format": "mlx"})
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["torch_dtype"] = dtype
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))


def make_model(family: str, dest: Path, args) -> Path:
    if args.model:
        return Path(args.model).resolve()
    sys.path.insert(0, str(REPO))
    from finetune_app.testing.tiny_models import build_tiny_model

    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    path = build_tiny_model(args.family or family, dest, **overrides)
    if args.dtype and args.dtype != "float32":
        to_dtype(path, args.dtype)
    return path


# =================================================================================================
# Tools: commands and result extraction
# =================================================================================================

def ours_config(model: Path, data: Path, out: Path, args, setup: dict, cache_vision: bool = True) -> dict:
    cfg = {"model": str(model), "data": str(data), "output": str(out), "fine_tune_type": "lora",
               "lora_rank": args.rank, "lora_alpha": float(args.alpha), "lora_dropout": float(args.dropout),
               "optimizer": "adamw", "learning_rate": args.lr, "weight_decay": 0.0, "lr_schedule": "constant",
               "warmup_steps": 0, "grad_clip": None, "batch_size": args.batch_size, "grad_accumulation": 1,
               "max_length": args.max_seq_length, "completion_only": True, "steps_per_eval": HUGE,
               "steps_per_report": args.report_every, "save_every": HUGE, "keep_checkpoints": 1, "sample_count": 0,
               "seed": args.seed, "cache_vision": cache_vision}
    if setup.get("epochs"):
        cfg.update(iters=None, epochs=float(setup["epochs"]))
    else:
        cfg.update(iters=setup["steps"], epochs=None)
    return cfg


def mlx_vlm_argv(model: Path, data: Path, out: Path, args, setup: dict, extra: list[str]) -> list[str]:
    argv = ["--model", str(model), "--data", str(data), "--batch-size", str(args.batch_size),
            "--learning-rate", str(args.lr), "--optimizer", "adamw", "--weight-decay", "0",
            "--lora-rank", str(args.rank), "--lora-alpha", str(args.alpha), "--lora-dropout", str(args.dropout),
            "--train-on-completions", "--seed", str(args.seed), "--steps-per-report", str(args.report_every),
            "--steps-per-eval", str(HUGE), "--steps-per-save", str(HUGE), "--val-batches", "-1",
            "--max-seq-length", str(args.max_seq_length), "--output-path", str(out)]
    argv += ["--epochs", str(int(setup["epochs"]))] if setup.get("epochs") else ["--iters", str(setup["steps"])]
    return argv + extra


def mlx_lm_argv(model: Path, data: Path, out: Path, args, setup: dict) -> list[str]:
    import yaml

    cfg = out.parent / (out.name + "-config.yaml")
    cfg.write_text(yaml.safe_dump({
        "lora_parameters": {"rank": args.rank, "scale": args.alpha / args.rank, "dropout": float(args.dropout)},
        "optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decay": 0.0}}}))
    return ["--model", str(model), "--train", "--data", str(data), "--iters", str(setup["steps"]),
            "--batch-size", str(args.batch_size), "--learning-rate", str(args.lr), "--num-layers", "-1",
            "--mask-prompt", "--steps-per-report", str(args.report_every), "--steps-per-eval", str(HUGE),
            "--save-every", str(HUGE), "--val-batches", "-1", "--max-seq-length", str(args.max_seq_length),
            "--seed", str(args.seed), "--adapter-path", str(out), "-c", str(cfg)]


def steady(points: list[tuple[int, float]], warmup: int, total: int) -> tuple[int, float] | None:
    """(steps, seconds) between the first report at/after `warmup` and the last report before `total`
    (the last window can hold a tool's final evaluation); falls back to the final report."""
    pts = sorted(points)
    start = next((p for p in pts if p[0] >= warmup), None)
    inner = [p for p in pts if p[0] < total]
    end = inner[-1] if inner and start and inner[-1][0] > start[0] else (pts[-1] if pts else None)
    if not start or not end or end[0] <= start[0]:
        return None
    return end[0] - start[0], end[1] - start[1]


def extract(tool: str, res: dict, args, total_steps: int) -> dict:
    """Common metrics from one run's output."""
    bs = args.batch_size
    out = {"rc": res["rc"], "process_wall_s": round(res["wall"], 2), "max_rss_gb": round(res["max_rss_gb"], 3),
           "load1_start": res["load_start"], "load1_end": res["load_end"]}
    if tool.startswith("mlx_vlm"):
        evs = parse_mlx_vlm(res["lines"])
        train = [e for e in evs if e["ev"] == "train"]
        val = [e for e in evs if e["ev"] == "val"]
        if not train:
            return out
        last = train[-1]
        # their per-window compute time (data loading excluded): steps / iterations_per_second
        windows = []
        prev = 0
        for e in train:
            n = e["iteration"] - prev
            windows.append((e["iteration"], n, n / e["iterations_per_second"]))
            prev = e["iteration"]
        out.update(train_loss=last.get("train_loss"), peak_mem_gb=last.get("peak_memory"),
                   their_val_loss=val[-1].get("val_loss") if val else None,
                   train_phase_s=last.get("elapsed_time"),
                   their_supervised_tokens=sum(e.get("train_num_tokens", 0) for e in train),
                   their_processed_tokens=sum(e.get("train_num_processed_tokens", 0) for e in train),
                   their_padded_tokens=sum(e.get("train_num_padded_tokens", 0) for e in train))
        arrivals = [(e["iteration"], e["arrival"]) for e in train]
    else:
        evs = bench_events(res["lines"])
        train = [e for e in evs if e["ev"] == "train"]
        val = [e for e in evs if e["ev"] == "val"]
        start = next((e for e in evs if e["ev"] == "state" and e["state"] == "started"), None)
        if not train:
            return out
        last = train[-1]
        key_step = "step" if tool.startswith("ours") else "iteration"
        steps = [int(e[key_step]) for e in train]
        if tool.startswith("ours"):
            windows, prev = [], 0
            for s, e in zip(steps, train):
                windows.append((s, s - prev, e["step_time"] * (s - prev)))
                prev = s
            out.update(train_loss=last["loss"], peak_mem_gb=last["peak_memory_gb"],
                       their_val_loss=val[-1]["val_loss"] if val else None,
                       their_supervised_tokens=last["trained_tokens"])
        else:  # mlx_lm: iterations_per_second = steps_per_report / compute time (no data loading)
            windows, prev = [], 0
            for s, e in zip(steps, train):
                windows.append((s, s - prev, (s - prev) / e["iterations_per_second"]))
                prev = s
            out.update(train_loss=last["train_loss"], peak_mem_gb=last.get("peak_memory"),
                       their_val_loss=val[-1]["val_loss"] if val else None,
                       their_supervised_tokens=last.get("trained_tokens"))
        # whole training phase: start of training to the last report, evaluations excluded
        val_in_phase = sum(e.get("val_time", e.get("seconds", 0.0)) for e in val if e["t"] <= last["t"])
        if start:
            out["train_phase_s"] = last["t"] - start["t"] - val_in_phase
        arrivals = [(s, e["arrival"]) for s, e in zip(steps, train)]
    st = steady(arrivals, args.warmup_steps, total_steps)
    if st:
        out["steady_steps"], out["steady_s"] = st
        out["ex_per_s"] = st[0] * bs / st[1]
    self_w = [w for w in windows if w[0] - w[1] >= args.warmup_steps and w[0] < total_steps] or windows[1:] or windows
    if self_w:
        out["self_ex_per_s"] = sum(w[1] for w in self_w) * bs / sum(w[2] for w in self_w)
    if out.get("train_phase_s"):
        out["e2e_ex_per_s"] = total_steps * bs / out["train_phase_s"]
    out["steps"] = int(last.get("step", last.get("iteration", 0)))
    return out


# =================================================================================================
# The benchmark
# =================================================================================================

def flops_per_example(info: dict, vision_runs: bool) -> float:
    """Model FLOPs of one training example (LoRA, frozen base):
    language model: 4 * N_lm * tokens (forward 2N + backward input-gradients 2N through the frozen
    weights; their weight gradients are not computed) + 6 * N_lora * tokens (adapters: forward,
    input and weight gradients); frozen vision tower (when it runs): 2 * N_vision * patches
    (forward only). N_lm counts matmul weights (an untied input embedding is a lookup). Attention's
    sequence-squared terms are left out (small at these lengths)."""
    tokens = info["mean_len"]
    f = 4 * info["params_lm_matmul"] * tokens + 6 * info.get("lora_params", 0) * tokens
    if vision_runs:
        f += 2 * info["params_vision"] * info.get("mean_patches", 0)
    return f


SETUP_DEFAULTS = {  # used where the flag is not given
    "qwen2_vl": {"n_train": 300, "n_valid": 60, "report_every": 10, "warmup_steps": 10},
    # FastVLM's tower sees 1024 px (256 features per image): a few rows keep three epochs short here
    "fastvlm": {"n_train": 40, "n_valid": 8, "report_every": 5, "warmup_steps": 5},
    "text": {"n_train": 240, "n_valid": 30, "report_every": 10, "warmup_steps": 10},
}


def setups(args) -> dict:
    return {
        "qwen2_vl": {"kind": "vlm", "family": "qwen2_vl", "steps": args.steps,
                         "tools": ["ours", "mlx_vlm-default", "mlx_vlm-best"]},
        "fastvlm": {"kind": "vlm", "family": "fastvlm", "epochs": args.epochs,
                        "tools": ["ours", "ours-nocache", "mlx_vlm-default"]},
        "text": {"kind": "text", "family": "llama", "steps": args.steps, "tools": ["ours", "mlx_lm"]},
    }


def tool_cmd(tool: str, model: Path, data: Path, out: Path, args, setup: dict) -> list[str]:
    me = [sys.executable, str(Path(__file__).resolve())]
    spec_file = out.parent / (out.name + "-spec.json")
    if tool.startswith("ours"):
        spec_file.write_text(json.dumps({"config": ours_config(model, data, out, args, setup,
                                                                cache_vision=tool != "ours-nocache")}))
        return me + ["--child-ours", str(spec_file)]
    if tool == "mlx_lm":
        spec_file.write_text(json.dumps({"argv": mlx_lm_argv(model, data, out, args, setup)}))
        return me + ["--child-mlx-lm", str(spec_file)]
    extra = ["--pad-to-multiple", "1"] if tool == "mlx_vlm-best" else []
    if setup["family"] == "fastvlm" and not args.model:
        spec_file.write_text(json.dumps({"argv": mlx_vlm_argv(model, data, out, args, setup, extra)}))
        return me + ["--child-mlx-vlm", str(spec_file)]
    return [sys.executable, "-m", "mlx_vlm.train"] + mlx_vlm_argv(model, data, out, args, setup, extra)


def call(kind: str, spec: dict, log: Path) -> dict:
    f = log.parent / (log.stem + "-spec.json")
    f.write_text(json.dumps(spec))
    res = run_child([sys.executable, str(Path(__file__).resolve()), f"--child-{kind}", str(f)], log)
    evs = bench_events(res["lines"])
    if res["rc"] != 0 or not evs:
        raise RuntimeError(f"{kind} child failed (rc {res['rc']}): {res['stderr_tail']}")
    return evs[-1]


def git_state() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def median(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}" if abs(x) < 1e5 else f"{x:.3g}"
    return str(x)


def run_setup(name: str, setup: dict, args, work: Path, peak: dict | None) -> dict:
    args = argparse.Namespace(**vars(args))
    for k, v in SETUP_DEFAULTS[name].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    wdir = work / name
    wdir.mkdir(parents=True, exist_ok=True)
    print(f"\n=== {name}: building model and data in {wdir}", flush=True)
    model = make_model(setup["family"], wdir / "model", args)
    data = make_data(setup["kind"], wdir / "data", args, model)
    info = call("info", {"model": str(model), "data": str(data)}, wdir / "info.log")
    info.pop("ev", None)
    info.pop("arrival", None)
    if setup.get("epochs"):
        total_steps = int(-(-info["n_train"] // args.batch_size) * setup["epochs"])
    else:
        total_steps = setup["steps"]
    print(f"model {model} ({info['params_total']:,} params, LM {info['params_lm']:,}, vision {info['params_vision']:,}, "
          f"{info['dtype']}); {info['n_train']} train / {info['n_valid']} valid rows, mean length "
          f"{info['mean_len']:.1f} tokens, {info['mean_supervised']:.1f} supervised; {total_steps} steps", flush=True)
    if args.dry_run:  # check a config (build, load, tokenise) without training
        if args.dry_run_load:
            ev = call("load", {"model": str(model)}, wdir / "load.log")
            print(f"loaded non-lazily in {ev['seconds']:.1f} s: {ev['params']:,} parameters, {ev['gb']:.2f} GB of weights "
                  f"({ev['dtype']}), max RSS of the loading process {ev['rss_gb']:.2f} GB", flush=True)
        for tool in setup["tools"]:
            print(f"{tool}: " + " ".join(tool_cmd(tool, model, data, wdir / f"{tool}-r0", args, setup)))
        print("DRYRUN " + json.dumps({"setup": name, "model": str(model), "info": info, "total_steps": total_steps}))
        return {"setup": name, "info": info}
    runs = []
    failed_once: set[str] = set()
    for rep in range(args.repeats):
        for tool in setup["tools"]:
            if tool in failed_once:
                continue
            out = wdir / f"{tool}-r{rep}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = tool_cmd(tool, model, data, out, args, setup)
            print(f"[{name} r{rep}] {tool}: load {os.getloadavg()[0]:.2f} ...", end=" ", flush=True)
            res = run_child(cmd, wdir / f"{tool}-r{rep}.log", timeout=args.run_timeout)
            m = extract(tool, res, args, total_steps)
            row = {"setup": name, "tool": tool, "repeat": rep, "command": " ".join(cmd), **m}
            if res["rc"] != 0 or "ex_per_s" not in m:
                row["error"] = " | ".join(res["stderr_tail"])[-400:]
                failed_once.add(tool)  # a tool that cannot run this setup is not retried
                print(f"FAILED rc={res['rc']}: {row['error'][-200:]}", flush=True)
            else:
                adapter = out if out.is_dir() else out.parent
                try:
                    ev = call("eval", {"model": str(model), "adapter": str(adapter), "data": str(data),
                                       "batch_size": args.batch_size, "seed": args.seed}, wdir / f"{tool}-r{rep}-eval.log")
                    row["val_loss"] = ev["val_loss"]
                    info.setdefault("lora_params", ev["lora_params"])
                except RuntimeError as exc:
                    row["val_loss_error"] = str(exc)[-300:]
                row["sup_tok_per_s"] = row["ex_per_s"] * info["mean_supervised"]
                row["tok_per_s"] = row["ex_per_s"] * info["mean_len"]
                row["flops_per_example"] = flops_per_example(info, vision_runs=tool != "ours" or setup["family"] != "fastvlm")
                row["model_tflops"] = row["ex_per_s"] * row["flops_per_example"] / 1e12
                if peak:
                    row["mfu"] = row["model_tflops"] / peak["tflops"]
                print(f"{row['ex_per_s']:.2f} ex/s, {row['sup_tok_per_s']:.0f} sup tok/s, peak {fmt(row.get('peak_mem_gb'), 3)} GB, "
                      f"val {fmt(row.get('val_loss'), 4)} (load {res['load_end']:.2f})", flush=True)
            row.update(date=datetime.date.today().isoformat(), device_note=args.device_note, total_steps=total_steps,
                       git=git_state(),
                       warmup_steps=args.warmup_steps, report_every=args.report_every,
                       batch_size=args.batch_size, model=str(model), info=info)
            runs.append(row)
            print("RUN " + json.dumps(row), flush=True)
            if args.json_out:
                with open(args.json_out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    return summarise(name, setup, runs, info, total_steps, args)


COLS = [("ex_per_s", "ex/s", 2), ("sup_tok_per_s", "sup tok/s", 0), ("e2e_ex_per_s", "e2e ex/s", 2),
        ("self_ex_per_s", "self ex/s", 2), ("peak_mem_gb", "peak GB", 4), ("max_rss_gb", "RSS GB", 2),
        ("train_loss", "train loss", 4), ("val_loss", "val loss", 4), ("mfu", "MFU", 4),
        ("load1_end", "load1", 2)]


def summarise(name, setup, runs, info, total_steps, args) -> dict:
    by_tool = {}
    for tool in setup["tools"]:
        rs = [r for r in runs if r["tool"] == tool]
        ok = [r for r in rs if "ex_per_s" in r]
        med = {k: median([r.get(k) for r in ok]) for k, _, _ in COLS}
        med.update(n=len(ok), ex_per_s_all=[round(r["ex_per_s"], 3) for r in ok],
                   error=next((r.get("error") for r in rs if r.get("error")), None))
        by_tool[tool] = med
    print(f"\n--- {name}: medians over {args.repeats} repeat(s), {total_steps} steps, batch {args.batch_size}")
    head = f"{'tool':<16}" + "".join(f"{label:>12}" for _, label, _ in COLS)
    print(head)
    for tool, med in by_tool.items():
        if med["n"] == 0:
            print(f"{tool:<16}  failed: {(med['error'] or '')[-150:]}")
            continue
        print(f"{tool:<16}" + "".join(f"{fmt(med[k], nd):>12}" for k, _, nd in COLS))
    ratios = {}
    ours = by_tool.get("ours")
    for tool, med in by_tool.items():
        if tool == "ours" or not ours or med["n"] == 0 or ours["n"] == 0:
            continue
        r = {k: (ours[k] / med[k]) if ours.get(k) and med.get(k) else None
             for k in ("ex_per_s", "sup_tok_per_s", "e2e_ex_per_s", "peak_mem_gb", "max_rss_gb")}
        # paired: ours in repeat i over theirs in repeat i (neighbouring runs share the machine's load)
        pairs = [(a["ex_per_s"], b["ex_per_s"]) for a in runs for b in runs
                 if a["tool"] == "ours" and b["tool"] == tool and a["repeat"] == b["repeat"]
                 and "ex_per_s" in a and "ex_per_s" in b]
        r["paired_ex_per_s"] = [round(x / y, 3) for x, y in pairs]
        r["paired_median"] = median(r["paired_ex_per_s"])
        ratios[f"ours/{tool}"] = r
        print(f"ratio ours/{tool:<14} ex/s x{fmt(r['ex_per_s'])} (paired per repeat: {r['paired_ex_per_s']}, "
              f"median x{fmt(r['paired_median'])})  e2e x{fmt(r['e2e_ex_per_s'])}  "
              f"peak mem x{fmt(r['peak_mem_gb'])}  RSS x{fmt(r['max_rss_gb'])}")
    summary = {"setup": name, "total_steps": total_steps, "warmup_steps": args.warmup_steps, "batch_size": args.batch_size, "repeats": args.repeats,
               "info": info, "medians": by_tool, "ratios": ratios, "date": (runs[0].get("date") if runs else None) or datetime.date.today().isoformat(),
               "device_note": args.device_note}
    print("SUMMARY " + json.dumps(summary), flush=True)
    return summary


def plot(summaries: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries), 3.6), squeeze=False)
    for ax, s in zip(axes[0], summaries):
        tools = [t for t, m in s["medians"].items()]
        vals = [s["medians"][t]["ex_per_s"] or 0 for t in tools]
        spreads = [s["medians"][t]["ex_per_s_all"] for t in tools]
        colors = ["#2c7fb8" if t.startswith("ours") else "#bbbbbb" for t in tools]
        ax.bar(range(len(tools)), vals, color=colors)
        for i, (t, sp) in enumerate(zip(tools, spreads)):
            ax.plot([i] * len(sp), sp, "k.", ms=4)
            if not sp:
                ax.text(i, 0, "cannot\ntrain", ha="center", va="bottom", fontsize=8)
            r = (s["ratios"].get(f"ours/{t}") or {}).get("ex_per_s")
            if r:
                ax.text(i, max([vals[i]] + sp) * 1.02, f"ours x{r:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(tools)))
        ax.set_xticklabels([t.replace("-", "\n") for t in tools], fontsize=8)
        ax.set_title(f"{s['setup']} ({s['total_steps']} steps, batch {s['batch_size']})", fontsize=9)
        ax.set_ylabel("examples / s (steady state)")
    fig.suptitle(f"Training throughput, {summaries[0]['date']}, {summaries[0]['device_note']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", default="qwen2_vl,text,fastvlm", help="comma-separated: qwen2_vl, fastvlm, text")
    p.add_argument("--repeats", type=int, default=2, help="runs per tool, alternating tools")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (qwen2_vl, text)")
    p.add_argument("--epochs", type=int, default=3, help="epochs (fastvlm)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--report-every", type=int, default=None, help="report interval, both tools (default per setup)")
    p.add_argument("--warmup-steps", type=int, default=None, help="steps excluded from the steady-state rate (default: one report)")
    p.add_argument("--n-train", type=int, default=None, help="training rows (default per setup: SETUP_DEFAULTS)")
    p.add_argument("--n-valid", type=int, default=None, help="validation rows (default per setup)")
    p.add_argument("--image-size", type=int, default=64, help="side of the generated demo images (px)")
    p.add_argument("--seq-len", type=int, default=None, help="pad rows with filler words towards this many tokens")
    p.add_argument("--answer-fraction", type=float, default=0.25, help="share of --seq-len padding that goes into answers")
    p.add_argument("--model", default=None, help="use this model folder instead of building one (one setup at a time)")
    p.add_argument("--family", default=None, help="family to build (default: the setup's)")
    p.add_argument("--config-overrides", default=None, help="JSON deep-merged into the built config.json "
                   "(\"preprocessor_config\": {...} goes to the image processor)")
    p.add_argument("--dtype", default=None, help="cast the built model's weights (e.g. bfloat16)")
    p.add_argument("--device-note", default=None, help="describes the machine in the output (default: platform)")
    p.add_argument("--measure-peak", action="store_true", help="time an n^3 matmul for the MFU denominator")
    p.add_argument("--peak-size", type=int, default=8192)
    p.add_argument("--peak-dtype", default="bfloat16")
    p.add_argument("--peak-tflops", type=float, default=None, help="known peak TFLOP/s (instead of measuring)")
    p.add_argument("--dry-run", action="store_true", help="build the model and data, count, print the commands; no training")
    p.add_argument("--dry-run-load", action="store_true", help="with --dry-run: also load the model fully once")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="keep run folders")
    p.add_argument("--json-out", default=None, help="append one JSON line per run to this file")
    p.add_argument("--plot", default=None, help="write a bar chart (PNG) of the medians here (matplotlib)")
    p.add_argument("--report-from", nargs="+", default=None, metavar="JSONL",
                   help="only summarise (and --plot) the run rows of earlier --json-out files")
    p.add_argument("--plot-from", nargs="+", default=None, metavar="FILE",
                   help="only plot: read the SUMMARY lines of earlier outputs (needs --plot)")
    p.add_argument("--run-timeout", type=float, default=None, help="kill a run after this many seconds")
    args = p.parse_args(argv)
    if args.report_from:
        rows = []
        for i, f in enumerate(args.report_from):  # repeats of different files stay apart (pairing)
            for line in Path(f).read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    r["repeat"] += 100 * i
                    rows.append(r)
        summaries = []
        for name in dict.fromkeys(r["setup"] for r in rows):
            rs = [r for r in rows if r["setup"] == name]
            tools = list(dict.fromkeys(r["tool"] for r in rs))
            a = argparse.Namespace(**vars(args))
            a.repeats, a.batch_size = len({r["repeat"] for r in rs}), rs[0]["batch_size"]
            a.device_note = rs[0].get("device_note")
            a.warmup_steps = rs[0].get("warmup_steps")
            info = next((r["info"] for r in rs if "lora_params" in r.get("info", {})), rs[0]["info"])
            summaries.append(summarise(name, {"tools": tools}, rs, info, rs[0]["total_steps"], a))
        if args.plot:
            plot(summaries, args.plot)
        return 0
    if args.plot_from:
        summaries = [json.loads(line[8:]) for f in args.plot_from for line in Path(f).read_text().splitlines()
                     if line.startswith("SUMMARY ")]
        plot(summaries, args.plot or "perf.png")
        return 0
    if args.device_note is None:
        args.device_note = f"{platform.machine()} {os.cpu_count()} cores ({platform.processor() or platform.system()})"
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    names = [s.strip() for s in args.setup.split(",") if s.strip()]
    all_setups = setups(args)
    unknown = [n for n in names if n not in all_setups]
    if unknown:
        p.error(f"unknown setup(s) {unknown}; choose from {list(all_setups)}")
    print(f"bench_train {datetime.datetime.now().isoformat(timespec='seconds')} on {args.device_note}; "
          f"work {work}; load average {os.getloadavg()}", flush=True)
    peak = None
    if args.peak_tflops:
        peak = {"tflops": args.peak_tflops, "measured": False}
    elif args.measure_peak:
        peak = call("peak", {"size": args.peak_size, "dtype": args.peak_dtype}, work / "peak.log")
        print(f"peak: {peak['tflops']:.3f} TFLOP/s ({peak['dtype']} {peak['size']}^3 matmul on {peak['device']})", flush=True)
    try:
        summaries = [run_setup(n, all_setups[n], args, work, peak) for n in names]
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.plot and summaries and not args.dry_run:
        plot(summaries, args.plot)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] in CHILDREN:
        CHILDREN[sys.argv[1]](json.loads(Path(sys.argv[2]).read_text()))
        sys.exit(0)
    sys.exit(main())
