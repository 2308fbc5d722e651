"""Side by side: our CLI and the peers' trainers on the same work, timed from command to saved adapter.

    python benchmarks/side_by_side.py --setup cpu-text --repeats 3 --out runs/sbs
    python benchmarks/side_by_side.py --setup vlm,text --size real --rows 1000 --repeats 2 --out $OUT

Every run is one process, started exactly as a user types it (`finetune-app train ...`,
`python -m mlx_lm lora ...`, `python -m mlx_vlm.train ...`), under benchmarks/peak_probe.py, which
runs the tool unchanged and reads `mx.get_peak_memory()` from process start at exit (same code for
every tool). Tools alternate within a repeat (the order flips each repeat). Per run:

  wall_s        fork to exit: imports, load, data preparation, compilation, training, final save
  cache         cold: the tool's MLX kernel caches were emptied first (MLX_PTX_CACHE_DIR and the CUDA
                driver's CUDA_CACHE_PATH on CUDA; TMPDIR, where MLX's CPU back-end builds compiled
                kernels); warm: the same caches, already used by an earlier run of the same tool. Not
                emptied: Python's bytecode (pip compiles it at install time, so a user's first run has
                it too) and the OS page cache (the model files stay in memory after the build)
  memory        MLX peak (peak_probe, from process start); CUDA: NVML, the process's own used memory
                (sampled every 50 ms, peak) and the device's used memory above the idle baseline; every
                device: max RSS from os.wait4
  first step    ours: the FirstStep event in metrics.jsonl (seconds since the process started);
                every tool: arrival of its first train-report line (and that report's step)
  MFU           FLOPs of the work each tool does (benchmarks/sbs_flops.py: LM-only and total, LM head
                at the positions the tool computes it, tower passes as the tool makes them) against
                an n^3 matmul measured in this script: over the wall time (what a user gets) and over
                the steady state (first to last train report)

The same hyperparameters for every tool: LoRA rank 16, alpha 16 (scale 1), dropout 0 on every
q/k/v/o/gate/up/down projection of the language model, AdamW without weight decay, constant
learning rate without warm-up, no gradient clipping (mlx_lm lora, mlx-lm-lora and mlx_vlm.train's
SFT do not clip; ours clips the norm at 1.0 by default, so it gets --grad-clip none), batch size,
max length 2048 (every row fits: the tools differ on longer rows, ours skips them, the peers
truncate; a warning says when one does not), completion-only loss, seed 0, one validation batch
where a tool insists on validating (mlx_lm and mlx-lm-lora at step 1 and at the end, ours and
mlx_vlm at the end), no periodic evaluation or checkpoints, each tool's own final save. A fixed
amount of data: epochs (ours and mlx_vlm.train take --epochs; mlx_lm and mlx-lm-lora take --iters =
ceil(rows / batch) * epochs; mlx_vlm.train counts only complete batches, so rows should be a
multiple of the batch: a warning says when not). Output: one `RUN {json}` line per run (also in
OUT/runs.jsonl) and, per setup, a table with ratios and paired ratios (`SUMMARY {json}`).

mlx-tune (tool `mlx_tune`, text setups) has no command line: benchmarks/sbs_mlx_tune.py is the user's
script (its SFTTrainer over mlx-lm's own loop, the same work, --steps = the --iters above), run with
the interpreter of --mlx-tune-python (a venv: its datasets<4 is older than mlx-vlm 0.7.10 accepts)
and --mlx-tune-site on its path only (the GPU machine: benchmarks/sbs_gpu_c.sh builds that folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import sbs_data  # noqa: E402
import sbs_flops  # noqa: E402

HUGE = 10**9
PROBE = [sys.executable, str(HERE / "peak_probe.py")]

# Real configurations (random weights): overrides for finetune_app.testing.tiny_models.build_tiny_model.
QWEN2_VL_2B = {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
               "intermediate_size": 8960, "vocab_size": 151936, "max_position_embeddings": 32768,
               "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
               "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4},
               "preprocessor_config": {"min_pixels": 3136, "max_pixels": 200704}}
LLAMA_3B = {"hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
            "head_dim": 128, "intermediate_size": 8192, "vocab_size": 128256, "max_position_embeddings": 131072,
            "tie_word_embeddings": True, "rope_theta": 500000.0}
# FastViTHD as mlx-vlm 0.7.10 builds it for a config.json without tower lists (Apple's FastVLM-0.5B):
# 125M parameters, 1024 px -> 16x16 = 256 features of width 3072 (tests/test_sbs_fastvlm_config.py checks it
# against mlx_vlm.models.fastvlm.config.VisionConfig).
FASTVITHD = {"image_size": 1024, "patch_size": 64, "layers": [2, 12, 24, 4, 2], "embed_dims": [96, 192, 384, 768, 1536],
             "mlp_ratios": [4, 4, 4, 4, 4], "downsamples": [True] * 5, "pos_embs_shapes": [None, None, None, [7, 7], [7, 7]],
             "token_mixers": ["repmixer", "repmixer", "repmixer", "attention", "attention"], "repmixer_kernel_size": 3,
             "down_patch_size": 7, "down_stride": 2, "cls_ratio": 2.0, "num_classes": 1000, "projection_dim": 768,
             "hidden_size": 1024, "intermediate_size": 3072, "layer_scale_init_value": 1e-5}
# Apple's FastVLM-0.5B (llava_qwen2): the Qwen2-0.5B LM, the mlp2x_gelu projector from 3072, FastViTHD.
FASTVLM_05B = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
               "intermediate_size": 4864, "vocab_size": 151936, "max_position_embeddings": 32768,
               "rope_theta": 1000000.0, "mm_hidden_size": 3072, "vision_config": FASTVITHD}
SMALL_TEXT = {"hidden_size": 256, "intermediate_size": 1024, "head_dim": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 4}

SETUPS = {  # family, data kind, (overrides for --size real, for --size tiny), default tools, epochs
    "vlm": ("qwen2_vl", "vlm", (QWEN2_VL_2B, {}), ["ours", "mlx_vlm-best"], 1),
    "text": ("llama", "text", (LLAMA_3B, SMALL_TEXT), ["ours", "mlx_lm", "mlx_lm_lora"], 1),
    "fastvlm": ("fastvlm", "vlm", (FASTVLM_05B, {}), ["ours", "ours-nocache", "ours-nocompile"], 3),
    "cpu-text": ("llama", "text", (SMALL_TEXT, SMALL_TEXT), ["ours", "mlx_lm"], 1),
}
TOOL_EXTRA = {"ours-nocache": ["--no-cache-vision"], "ours-nocompile": ["--no-compile"], "ours-pack": ["--pack"],
              "mlx_vlm-best": ["--pad-to-multiple", "1"], "mlx_vlm-default": []}
LM_REPORT = re.compile(r"Iter (\d+): Train loss|^\s*(\d+)\s+\d+\.\d+")  # mlx-lm: old text / its table's train row
LORA_REPORT = re.compile(r"Iter (\d+): (?:Train )?loss")  # mlx-lm-lora 5.10: "Iter 5: loss 6.936, lr ..."
REPORT_RE = {"ours": re.compile(r"^step (\d+)/"), "mlx_lm": LM_REPORT, "mlx_lm_lora": LORA_REPORT, "mlx_tune": LM_REPORT,
             "mlx_vlm": re.compile(r"Training \(iteration (\d+)\)")}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ------------------------------------------------------------------------------------------------
# Children: facts about the data (our encoder) and the matmul peak, each in its own process
# ------------------------------------------------------------------------------------------------

def child_info(spec: dict) -> None:
    """Per-row real length, supervised tokens and image patches, counted by our encoder."""
    import numpy as np

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.models import load_base
    from finetune_app.core.training.prepare import prepare_examples

    base = load_base(spec["model"], lazy=True)
    data = prepare_examples(TrainConfig(model=spec["model"], data=spec["data"], output="-"), base,
                            Encoder(base, completion_only=True))

    def patches(ex):
        g = ex.images.get("image_grid_thw") if ex.images else None
        return int(np.prod(np.asarray(g), axis=-1).sum()) if g is not None else 0

    rows = [{"length": int(e.model_length), "supervised": int(e.n_targets), "patches": patches(e),
             "images": int(e.n_images or 0)} for e in data.train]
    extra = {}
    if hasattr(base.model, "mm_projector"):  # FastViTHD: its convolutions counted on one picture (lazily: nothing runs)
        import mlx.core as mx
        from fastvlm_micro import tower_profile

        ex = next((e for e in data.train if e.images.get("pixel_values") is not None), None)
        if ex is not None:
            shape = (1,) + tuple(np.asarray(ex.images["pixel_values"]).shape[-3:])
            extra["conv_image_flops"] = tower_profile(base.model, mx.zeros(shape), sync=False)["flop"]
    print("INFO " + json.dumps({"rows": rows, "n_valid": len(data.valid), **extra}))


def child_build(spec: dict) -> None:
    """A random-weight model of the family with the config overrides, cast to the dtype."""
    import mlx.core as mx

    from finetune_app.testing.tiny_models import build_tiny_model

    model = Path(spec["dest"])
    build_tiny_model(spec["family"], model, image_size=spec.get("image_size"), **spec["overrides"])
    if spec["dtype"] != "float32":
        dt = getattr(mx, spec["dtype"])
        for f in model.glob("*.safetensors"):
            w = mx.load(str(f))
            mx.save_safetensors(str(f), {k: v.astype(dt) if mx.issubdtype(v.dtype, mx.floating) else v
                                         for k, v in w.items()}, metadata={"format": "mlx"})
        cfg = json.loads((model / "config.json").read_text())
        cfg["torch_dtype"] = spec["dtype"]
        (model / "config.json").write_text(json.dumps(cfg, indent=2))
    print("BUILD " + json.dumps({"model": str(model)}))


def child_peak(spec: dict) -> None:
    import mlx.core as mx

    n, dtype = spec["size"], getattr(mx, spec["dtype"])
    tflops = sbs_flops.matmul_peak(n, dtype)
    print("PEAK " + json.dumps({"tflops": tflops, "size": n, "dtype": spec["dtype"],
                                "device": str(mx.default_device())}))


def child(kind: str, spec: dict, env: dict) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), f"--child-{kind}", json.dumps(spec)],
                         capture_output=True, text=True, env=env, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith(kind.upper() + " ")), None)
    if out.returncode or not line:
        raise RuntimeError(f"{kind} child failed (rc {out.returncode}): {out.stderr[-1500:]}")
    return json.loads(line.split(" ", 1)[1])


# ------------------------------------------------------------------------------------------------
# Device memory: NVML of the process (pynvml, else nvidia-smi), sampled while it runs
# ------------------------------------------------------------------------------------------------

class Nvml:
    def __init__(self):
        self.kind = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv, self.handles = pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.kind = "pynvml" if self.handles else None
        except Exception:  # noqa: BLE001 (no NVML library, no driver: try nvidia-smi)
            if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
                self.kind = "nvidia-smi"

    def sample(self) -> tuple[dict[int, int], int]:
        """({pid: used bytes}, device used bytes summed over GPUs)."""
        if self.kind == "pynvml":
            procs, used = {}, 0
            for h in self.handles:
                for p in self.nv.nvmlDeviceGetComputeRunningProcesses(h):
                    procs[p.pid] = procs.get(p.pid, 0) + (p.usedGpuMemory or 0)
                used += self.nv.nvmlDeviceGetMemoryInfo(h).used
            return procs, used
        q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True).stdout
        procs = {}
        for line in q.splitlines():
            if "," in line:
                pid, mib = line.split(",")
                procs[int(pid)] = procs.get(int(pid), 0) + int(float(mib)) * 2**20
        g = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True).stdout
        return procs, sum(int(float(x)) for x in g.split()) * 2**20


def run_timed(cmd: list[str], env: dict, log: Path, nvml: Nvml | None) -> dict:
    """Run one command; stdout+stderr lines timestamped on arrival; wall, wait4's max RSS, NVML peaks."""
    base_used = nvml.sample()[1] if nvml and nvml.kind else 0
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
    lines: list[tuple[float, str]] = []
    peaks = {"pid": 0, "used": 0}
    done = threading.Event()

    def read():
        for line in p.stdout:
            lines.append((time.perf_counter() - t0, ANSI.sub("", line).rstrip("\n")))

    def poll():
        while not done.is_set():
            try:
                procs, used = nvml.sample()
                peaks["pid"] = max(peaks["pid"], procs.get(p.pid, 0))
                peaks["used"] = max(peaks["used"], used - base_used)
            except Exception:  # noqa: BLE001 (a failed sample is skipped, not fatal)
                pass
            done.wait(0.05 if nvml.kind == "pynvml" else 0.3)

    threads = [threading.Thread(target=read, daemon=True)]
    if nvml and nvml.kind:
        threads.append(threading.Thread(target=poll, daemon=True))
    for t in threads:
        t.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    for t in threads:
        t.join(timeout=5)
    log.write_text("".join(f"{t:9.3f} {x}\n" for t, x in lines))
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out = {"wall_s": round(wall, 2), "rc": os.waitstatus_to_exitcode(status), "max_rss_gb": rss / 1e9, "lines": lines}
    if nvml and nvml.kind:
        out.update(nvml_process_peak_gb=peaks["pid"] / 1e9 or None, nvml_device_used_peak_gb=peaks["used"] / 1e9,
                   nvml_via=nvml.kind)
    return out


# ------------------------------------------------------------------------------------------------
# Tools
# ------------------------------------------------------------------------------------------------

def tool_argv(tool: str, model: Path, data: Path, out: Path, a, steps: int, epochs: int) -> list[str]:
    common_lr = ["--learning-rate", str(a.lr), "--batch-size", str(a.batch_size), "--seed", "0"]
    if tool.startswith("ours"):
        return PROBE + ["--entry", "finetune_app.cli:main", "train", "--model", str(model), "--data", str(data),
                        "--output", str(out), "--epochs", str(epochs), *common_lr, "--optimizer", "adamw",
                        "--lr-schedule", "constant", "--warmup-steps", "0", "--weight-decay", "0", "--grad-clip", "none",
                        "--lora-rank", str(a.rank), "--lora-alpha", str(float(a.rank)), "--lora-dropout", "0",
                        "--max-length", str(a.max_length), "--steps-per-eval", str(HUGE), "--val-batches", "1",
                        "--save-every", str(HUGE), "--sample-count", "0", "--steps-per-report", str(a.report_every),
                        "--quiet"] + TOOL_EXTRA.get(tool, [])
    if tool.startswith("mlx_vlm"):
        return PROBE + ["-m", "mlx_vlm.train", "--model", str(model), "--data", str(data), "--epochs", str(epochs),
                        *common_lr, "--optimizer", "adamw", "--weight-decay", "0", "--lora-rank", str(a.rank),
                        "--lora-alpha", str(float(a.rank)), "--lora-dropout", "0", "--train-on-completions",
                        "--steps-per-report", str(a.report_every), "--steps-per-eval", str(HUGE),
                        "--steps-per-save", str(HUGE), "--val-batches", "1", "--max-seq-length", str(a.max_length),
                        "--output-path", str(out)] + TOOL_EXTRA.get(tool, []) + a.mlx_vlm_flags.split()
    if tool == "mlx_tune":  # a Python API: benchmarks/sbs_mlx_tune.py is the user's script
        return [a.mlx_tune_python, str(HERE / "peak_probe.py"), "-m", "sbs_mlx_tune", "--model", str(model),
                "--data", str(data), "--output", str(out), "--steps", str(steps), "--batch-size", str(a.batch_size),
                "--lr", str(a.lr), "--rank", str(a.rank), "--max-length", str(a.max_length),
                "--report-every", str(a.report_every), "--seed", "0"]
    import yaml

    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump({"lora_parameters": {"rank": a.rank, "scale": 1.0, "dropout": 0.0},
                                   "optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decay": 0.0}},
                                   **({"fuse": False} if tool == "mlx_lm_lora" else {})}))
    head = ["-m", "mlx_lm", "lora"] if tool == "mlx_lm" else ["-m", "mlx_lm_lora.train"]
    return PROBE + head + ["--model", str(model), "--train", "--data", str(data), "--iters", str(steps), *common_lr,
                           "--num-layers", "-1", "--mask-prompt", "--steps-per-report", str(a.report_every),
                           "--steps-per-eval", str(HUGE), "--save-every", str(HUGE), "--val-batches", "1",
                           "--max-seq-length", str(a.max_length), "--adapter-path", str(out), "-c", str(cfg)]


def tool_env(tool: str, cache: Path, a) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    extra = ([str(HERE)] + ([a.mlx_tune_site] if a.mlx_tune_site else [])) if tool == "mlx_tune" else []
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + extra + ([a.peers_site] if a.peers_site else [])
                                        + [x for x in [os.environ.get("PYTHONPATH")] if x])
    for d in ("tmp", "ptx", "cuda"):
        (cache / d).mkdir(parents=True, exist_ok=True)
    env.update(TMPDIR=str(cache / "tmp"), MLX_PTX_CACHE_DIR=str(cache / "ptx"), CUDA_CACHE_PATH=str(cache / "cuda"))
    if tool == "mlx_lm_lora":
        env["PEAK_PROBE_SHIM"] = "device_info"
    return env


def adapter_saved(out: Path) -> bool:
    return out.is_file() or any(out.glob("*.safetensors")) if out.exists() else False


def first_report(tool: str, lines) -> tuple[float | None, int | None, float | None, int | None]:
    """(time, step) of the first and of the last train-report line."""
    rx = REPORT_RE["ours" if tool.startswith("ours") else "mlx_vlm" if tool.startswith("mlx_vlm") else tool]
    hits = [(t, int(next(g for g in m.groups() if g))) for t, x in lines for m in [rx.search(x)] if m]
    if not hits:
        return None, None, None, None
    return hits[0][0], hits[0][1], hits[-1][0], hits[-1][1]


def ours_step_times(out: Path) -> list[list]:
    """[step, seconds per step over its report window] from ours' metrics.jsonl: the phases of a run
    (fastvlm: epoch 1 fills the cache, later epochs read it; the uncached tools run the tower every step)."""
    f = out / "metrics.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []
    return [[r["step"], round(r["step_time"], 5)] for r in rows if r.get("kind") == "train" and "step_time" in r]


def ours_first_step(out: Path) -> float | None:
    f = out / "metrics.jsonl"
    if not f.is_file():
        return None
    for line in f.read_text().splitlines():
        if '"first_step"' in line:
            return json.loads(line).get("seconds_since_process_start")
    return None


# ------------------------------------------------------------------------------------------------
# One setup
# ------------------------------------------------------------------------------------------------

def build(setup: str, a, work: Path) -> tuple[Path, Path, dict]:
    """Model folder and data folder (reused when they exist), and the FLOP counts."""
    family, kind, (real, tiny), _, _ = SETUPS[setup]
    size = a.size
    over = json.loads(a.config_overrides) if a.config_overrides else (real if size == "real" else tiny)
    wdir = work / f"{setup}-{size}"
    model = wdir / "model"
    spec = {"family": family, "dest": str(model), "overrides": over, "dtype": a.dtype}
    if family == "fastvlm":  # the tower and the processor at --image-size (1024 px: 256 features per picture)
        vis = {**over.get("vision_config", {}), "image_size": a.image_size}
        spec.update(overrides={**over, "vision_config": vis}, image_size=a.image_size)
        model = wdir / f"model-{a.image_size}px"
    if not (model / "config.json").is_file():  # in a child: the harness itself holds no device memory
        print(f"[{setup}] building {family} ({size}, {a.dtype}) in {model} ...", flush=True)
        t0 = time.perf_counter()
        child("build", {**spec, "dest": str(model)},
              dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [x for x in [os.environ.get("PYTHONPATH")] if x])))
        print(f"[{setup}] built in {time.perf_counter() - t0:.1f} s", flush=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    sample = sbs_data.sample_text()
    tpw = len(tok.encode(" " + sample, add_special_tokens=False)) / len(sample.split())
    rows = a.rows or (40 if setup == "fastvlm" else 64)
    data = wdir / (f"data-{rows}-{a.image_size}" + (f"-x{a.length_scale:g}" if a.length_scale != 1 else ""))
    if not (data / "train.jsonl").is_file():
        if kind == "vlm":
            sbs_data.write_vlm(data, rows, a.batch_size, a.image_size, tokens_per_word=tpw)
        else:
            sbs_data.write_text(data, rows, a.batch_size, tokens_per_word=tpw / a.length_scale)
    return model, data, {"tokens_per_word": tpw, "overrides": over}


def run_setup(setup: str, a, work: Path, out_dir: Path, peak: dict | None, nvml: Nvml | None) -> list[dict]:
    _, kind, _, default_tools, default_epochs = SETUPS[setup]
    tools = a.tools.split(",") if a.tools else default_tools
    epochs = a.epochs or default_epochs
    model, data, meta = build(setup, a, work)
    base_env = tool_env("info", work / "cache-info", a)
    info = child("info", {"model": str(model), "data": str(data)}, base_env)
    rows = info["rows"]
    steps = math.ceil(len(rows) / a.batch_size) * epochs
    counts = sbs_flops.model_counts(model, a.rank)
    counts["conv_image_flops"] = info.get("conv_image_flops")
    L = [r["length"] for r in rows]
    S = [r["supervised"] for r in rows]
    print(f"[{setup}] {model}: {len(rows)} rows, length median {statistics.median(L)} (max {max(L)}), supervised "
          f"median {statistics.median(S)} (mean {statistics.mean(S):.1f}); {epochs} epoch(s) = {steps} steps of "
          f"{a.batch_size}; tokens/word {meta['tokens_per_word']:.2f}; tools {tools}", flush=True)
    if max(L) > a.max_length:
        print(f"[{setup}] WARNING: {sum(x > a.max_length for x in L)} rows are longer than --max-length "
              f"{a.max_length}: ours skips them, the peers truncate them (not the same work)", flush=True)
    if len(rows) % a.batch_size and any(t.startswith("mlx_vlm") for t in tools):
        print(f"[{setup}] WARNING: {len(rows)} rows are not a multiple of the batch {a.batch_size}: mlx_vlm.train "
              "counts only complete batches, the others ceil(rows / batch) steps (not the same work)", flush=True)
    results = []
    for rep in range(a.repeats):
        order = tools if rep % 2 == 0 else tools[::-1]
        for tool in order:
            cache = out_dir / "cache" / setup / tool
            cold = not cache.exists() or (a.cold and rep == 0)
            if cold:
                shutil.rmtree(cache, ignore_errors=True)
            run_out = out_dir / "runs" / f"{setup}-{tool}-r{rep}"
            shutil.rmtree(run_out, ignore_errors=True)
            run_out.parent.mkdir(parents=True, exist_ok=True)
            env = tool_env(tool, cache, a)
            probe = run_out.parent / f"{run_out.name}.probe.json"
            probe.unlink(missing_ok=True)
            env["PEAK_PROBE_OUT"] = str(probe)
            cmd = tool_argv(tool, model, data, run_out, a, steps, epochs)
            load = os.getloadavg()[0]
            print(f"[{setup} r{rep}] {tool} ({'cold' if cold else 'warm'}, load {load:.1f}) ...", end=" ", flush=True)
            res = run_timed(cmd, env, out_dir / "runs" / f"{run_out.name}.log", nvml)
            lines = res.pop("lines")
            t_first, s_first, t_last, s_last = first_report(tool, lines)
            row = {"setup": setup, "tool": tool, "repeat": rep, "cache": "cold" if cold else "warm", **res,
                   "adapter_saved": adapter_saved(run_out), "rows": len(rows), "epochs": epochs, "steps": steps,
                   "batch_size": a.batch_size, "first_report_s": t_first, "first_report_step": s_first,
                   "load1_start": load, "load1_end": os.getloadavg()[0]}
            if probe.is_file():
                row.update(json.loads(probe.read_text()))
            if tool.startswith("ours"):
                row["first_step_s"] = ours_first_step(run_out)
                row["step_times"] = ours_step_times(run_out)
            head_at = "supervised" if tool.startswith("ours") else "all"
            passes = 1 if tool in ("ours", "ours-nocompile", "ours-pack") else epochs
            fl = sbs_flops.run_flops(counts, rows, epochs, head_at, passes if kind == "vlm" else 0)
            row.update(fl)
            if peak and row["rc"] == 0:
                row["mfu_lm_wall"] = fl["flops_lm"] / row["wall_s"] / (peak["tflops"] * 1e12)
                if fl["flops_total"] is not None:
                    row["mfu_total_wall"] = fl["flops_total"] / row["wall_s"] / (peak["tflops"] * 1e12)
                if t_first is not None and s_last and s_last > s_first and t_last > t_first:
                    rate = (s_last - s_first) / (t_last - t_first)  # steps/s between the first and last report
                    row["mfu_lm_steady"] = fl["flops_lm"] / steps * rate / (peak["tflops"] * 1e12)
            if row["rc"] != 0 or not row["adapter_saved"]:
                row["error"] = " | ".join(x for _, x in lines[-4:])[-600:]
            row.update(command=" ".join(cmd), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       device=a.device_note, size=a.size, model=str(model), tokens_per_word=meta["tokens_per_word"],
                       peak_tflops=peak["tflops"] if peak else None)
            print(f"wall {row['wall_s']:.1f} s, rc {row['rc']}, MLX peak {fmt(row.get('mlx_peak_gb'))} GB, "
                  f"RSS {row['max_rss_gb']:.2f} GB" + (f", NVML {fmt(row.get('nvml_process_peak_gb'))} GB" if nvml and nvml.kind else ""),
                  flush=True)
            print("RUN " + json.dumps(row), flush=True)
            with open(out_dir / "runs.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            results.append(row)
            if not a.keep:
                shutil.rmtree(run_out, ignore_errors=True)
    summarise(setup, results)
    return results


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------

def fmt(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def med(rows, key):
    xs = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(xs) if xs else None


COLS = [("wall_s", "wall s", 1), ("first_step_s", "1st step s", 1), ("first_report_s", "1st report s", 1),
        ("mlx_peak_gb", "MLX peak GB", 3), ("nvml_process_peak_gb", "NVML proc GB", 2),
        ("nvml_device_used_peak_gb", "NVML dev GB", 2), ("max_rss_gb", "max RSS GB", 3),
        ("mfu_lm_wall", "MFU LM wall", 3), ("mfu_lm_steady", "MFU LM steady", 3), ("mfu_total_wall", "MFU tot wall", 3)]


def summarise(setup: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if r["rc"] == 0 and r["adapter_saved"]]
    tools = list(dict.fromkeys(r["tool"] for r in runs))
    print(f"\n--- {setup}: medians ({runs[0]['rows']} rows, {runs[0]['epochs']} epoch(s), {runs[0]['steps']} steps)")
    print(f"{'tool':<16}{'cache':<6}{'n':>3}" + "".join(f"{lab:>14}" for _, lab, _ in COLS))
    table = {}
    for tool in tools:
        for cache in ("cold", "warm"):
            rs = [r for r in ok if r["tool"] == tool and r["cache"] == cache]
            if rs:
                table[f"{tool}/{cache}"] = m = {k: med(rs, k) for k, _, _ in COLS} | {"n": len(rs)}
                print(f"{tool:<16}{cache:<6}{len(rs):>3}" + "".join(f"{fmt(m[k], nd):>14}" for k, _, nd in COLS))
        bad = [r for r in runs if r["tool"] == tool and r not in ok]
        if bad:
            print(f"{tool:<16} FAILED {len(bad)} run(s): {bad[0].get('error', '')[-300:]}")
    ratios = {}
    for tool in tools:
        if tool == "ours":
            continue
        for cache in ("cold", "warm"):
            o, t = table.get(f"ours/{cache}"), table.get(f"{tool}/{cache}")
            if not o or not t:
                continue
            pairs = [round(b["wall_s"] / x["wall_s"], 3) for x in ok for b in ok if x["tool"] == "ours" and b["tool"] == tool
                     and x["repeat"] == b["repeat"] and x["cache"] == b["cache"] == cache]
            r = {"speedup_wall": t["wall_s"] / o["wall_s"], "paired_speedup_wall": pairs,
                 **{f"mem_{k}": (o[k] / t[k]) if o.get(k) and t.get(k) else None
                    for k in ("mlx_peak_gb", "nvml_process_peak_gb", "max_rss_gb")}}
            ratios[f"{tool}/{cache}"] = r
            print(f"ours vs {tool:<15} {cache}: wall x{r['speedup_wall']:.2f} (theirs/ours; paired {pairs}); memory "
                  f"ours/theirs: MLX peak {fmt(r['mem_mlx_peak_gb'])}, NVML {fmt(r['mem_nvml_process_peak_gb'])}, "
                  f"RSS {fmt(r['mem_max_rss_gb'])}")
    if setup == "cpu-text" and "mlx_lm/warm" in ratios:
        r = ratios["mlx_lm/warm"]
        verdict = r["speedup_wall"] >= 1.5 and (r["mem_max_rss_gb"] or 9) <= 1.0
        print(f"#16 CPU done-when (ours >= x1.5 mlx_lm lora wall, max RSS no higher): {'MET' if verdict else 'NOT MET'}")
    if setup == "fastvlm":
        fastvlm_phases(ok, ratios)
    summary = {"setup": setup, "medians": table, "ratios": ratios}
    print("SUMMARY " + json.dumps(summary), flush=True)
    return summary


def phases(run: dict) -> dict:
    """From ours' `step_times` windows: seconds per step in epoch 1 (the first window left out: it
    holds the traces) and after it, and the run's fixed cost F = wall - the steps' time."""
    n = math.ceil(run["rows"] / run["batch_size"])
    wins, prev = [], 0
    for step, dt in run.get("step_times") or []:
        wins.append((prev, step, dt))
        prev = step
    first = [dt for a, b, dt in wins[1:] if b <= n]
    later = [dt for a, b, dt in wins if a >= n]
    spent = sum((b - a) * dt for a, b, dt in wins)
    return {"epoch1_step_s": statistics.median(first) if first else None,
            "later_step_s": statistics.median(later) if later else None,
            "fixed_s": run["wall_s"] - spent if wins and wins[-1][1] == run["steps"] else None}


def fastvlm_phases(ok: list[dict], ratios: dict) -> None:
    """#16: FastVLM's 3-epoch wall, cached (`ours`) vs uncached (`ours-nocache`), warm; and the phases
    that bound it: T (tower per step) = u - c, c (cached step), F; ceiling 3(T + c) / (T + 3c)."""
    from fastvlm_micro import ceiling

    for cache in ("warm", "cold"):
        o = [phases(r) for r in ok if r["tool"] == "ours" and r["cache"] == cache]
        u = [phases(r) for r in ok if r["tool"] == "ours-nocache" and r["cache"] == cache]
        if not o or not u:
            continue
        pick = lambda rs, k: statistics.median([r[k] for r in rs if r[k] is not None] or [float("nan")])  # noqa: E731
        c, u1, e1 = pick(o, "later_step_s"), pick(u, "later_step_s"), pick(o, "epoch1_step_s")
        T = u1 - c
        ph = {"c_s": c, "u_s": u1, "fill_step_s": e1, "T_s": T, "F_ours_s": pick(o, "fixed_s"),
              "F_nocache_s": pick(u, "fixed_s"), "ceiling": ceiling(T, c)}
        r = ratios.get(f"ours-nocache/{cache}", {})
        r["phases"] = ph
        print(f"fastvlm phases ({cache}): c {c * 1e3:.1f} ms, u {u1 * 1e3:.1f} ms, epoch-1 step {e1 * 1e3:.1f} ms, "
              f"T = u - c {T * 1e3:.1f} ms (T/c {T / c:.2f}); F ours {ph['F_ours_s']:.1f} s, nocache "
              f"{ph['F_nocache_s']:.1f} s; ceiling at any row count x{fmt(ph['ceiling'])}")
        if cache == "warm" and "speedup_wall" in r:
            print(f"#16 FastVLM done-when (ours-nocache / ours warm wall >= x2.0): x{r['speedup_wall']:.2f} "
                  f"{'MET' if r['speedup_wall'] >= 2.0 else 'NOT MET'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", default="cpu-text", help="comma-separated: " + ", ".join(SETUPS))
    p.add_argument("--size", choices=("tiny", "real"), default=None, help="model sizes (default: real on CUDA, tiny else)")
    p.add_argument("--config-overrides", default=None, help="JSON for build_tiny_model instead of the size's preset")
    p.add_argument("--dtype", default=None, help="cast the built weights (default: bfloat16 on CUDA, float32 else)")
    p.add_argument("--rows", type=int, default=None, help="training rows / images (default 64; fastvlm 40)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 1; fastvlm 3)")
    p.add_argument("--image-size", type=int, default=None, help="generated image side, px (default 448; fastvlm 1024)")
    p.add_argument("--length-scale", type=float, default=1.0,
                   help="text rows: multiply Alpaca's lengths (e.g. 15 for rows of ~2k tokens)")
    p.add_argument("--max-length", type=int, default=2048, help="every tool's max sequence length")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--report-every", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="runs per tool; the first of each tool is cold")
    p.add_argument("--no-cold", dest="cold", action="store_false",
                   help="keep caches left in --out by an earlier invocation (all runs warm)")
    p.add_argument("--tools", default=None, help="comma-separated, instead of the setup's: ours, ours-nocache, "
                   "ours-nocompile, ours-pack, mlx_lm, mlx_lm_lora, mlx_tune (text), mlx_vlm-best, mlx_vlm-default")
    p.add_argument("--mlx-vlm-flags", default="", help="extra flags for every mlx_vlm.train run (e.g. --compile)")
    p.add_argument("--peers-site", default=None, help="a folder with extra peer packages (pip install --target)")
    p.add_argument("--mlx-tune-python", default=os.environ.get("MLX_TUNE_PYTHON", sys.executable),
                   help="the interpreter that has mlx-tune (a venv: it needs datasets<4, which mlx-vlm 0.7.10 "
                   "does not accept; default $MLX_TUNE_PYTHON, else this one)")
    p.add_argument("--mlx-tune-site", default=None,
                   help="a folder with mlx-tune and its dependencies (pip install --target), on the path of "
                   "mlx_tune runs only")
    p.add_argument("--peak", choices=("measure", "none"), default="measure")
    p.add_argument("--device-note", default=None)
    p.add_argument("--work", default=None, help="models and data (reused across invocations; default OUT/work)")
    p.add_argument("--out", required=True, help="runs.jsonl, logs and caches go here")
    p.add_argument("--keep", action="store_true", help="keep the run folders (adapters)")
    a = p.parse_args(argv)
    out_dir = Path(a.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(a.work).resolve() if a.work else out_dir / "work"
    nvml = Nvml()
    cuda = nvml.kind is not None
    a.size = a.size or ("real" if cuda else "tiny")
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.device_note = a.device_note or (f"CUDA ({nvml.kind})" if cuda else f"CPU {platform.machine()} {os.cpu_count()} cores")
    print(f"side_by_side {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} on {a.device_note}; "
          f"sizes {a.size}, {a.dtype}; out {out_dir}", flush=True)
    peak = None
    if a.peak == "measure":
        spec = {"size": 8192, "dtype": "bfloat16"} if cuda else {"size": 1024, "dtype": "float32"}
        peak = child("peak", spec, tool_env("peak", out_dir / "cache" / "peak", a))
        print(f"matmul peak: {peak['tflops']:.2f} TFLOP/s ({peak['dtype']} {peak['size']}^3 on {peak['device']})", flush=True)
    for setup in a.setup.split(","):
        s = argparse.Namespace(**vars(a))
        s.image_size = a.image_size or (1024 if setup == "fastvlm" else 448)
        run_setup(setup.strip(), s, work, out_dir, peak, nvml if cuda else None)
    return 0


if __name__ == "__main__":
    children = {"--child-info": child_info, "--child-peak": child_peak, "--child-build": child_build}
    if len(sys.argv) == 3 and sys.argv[1] in children:
        children[sys.argv[1]](json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
