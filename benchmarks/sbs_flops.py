"""Model FLOPs of the work each tool actually does, for MFU in side_by_side.py.

Counted from the model folder (config.json, the safetensors headers: no weights loaded) and each
training row's real token counts (padding is not useful work and is not counted). LoRA on a frozen
base, per token of a row of L real tokens with S supervised:

  body     4 * N_body            frozen matmul weights of the LM layers: forward 2N + the input
                                 gradient 2N (no weight gradient); the first layer's input gradient is
                                 counted too (nothing needs it: a small overcount)
  LoRA     6 * N_lora            adapters on every q/k/v/o/gate/up/down projection: forward, input
                                 and weight gradients; N_lora = rank * (in + out) per projection
  attention 12 * layers * d * L  QK^T and PV (non-causal, as the kernels compute), forward + 2x backward
  LM head  4 * vocab * hidden    at the positions the tool computes it: ours at the supervised ones
                                 (S per row), mlx-lm / mlx-vlm at all L positions

The vision tower is frozen and runs forward only: 2 * N_vision per patch (the merger / projector at
the merged tokens) + 4 * depth * d_v * P^2 attention per image, times the passes the tool makes over
each image (mlx-vlm and ours uncached: every epoch; ours cached: once). "LM-only" leaves the tower
out, "total" includes it. FastVLM's tower is convolutional: FLOPs do not follow from its parameter
count, so its total is None.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

VISION_ROOTS = ("vision_tower", "vision_model", "visual", "mm_projector", "multi_modal_projector")
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def weight_shapes(model: Path) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors headers (8-byte length + JSON), no data read."""
    shapes = {}
    for f in sorted(Path(model).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            head = json.loads(fh.read(n))
        shapes.update({k: v["shape"] for k, v in head.items() if k != "__metadata__"})
    return shapes


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def model_counts(model: Path, rank: int) -> dict:
    """Parameter counts the FLOP formula needs, from config.json and the weight shapes."""
    cfg = json.loads((Path(model) / "config.json").read_text())
    text = {**cfg, **cfg.get("text_config", {})}
    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or hidden // heads
    body = lora = vision = merger = 0
    for k, shape in weight_shapes(model).items():
        if len(shape) < 2 or not k.endswith("weight"):
            continue  # norms and biases: not matmuls
        parts = k.split(".")
        if parts[0] in VISION_ROOTS or (parts[0] == "model" and len(parts) > 1 and parts[1] in VISION_ROOTS):
            if "merger" in k or "mm_projector" in k or "multi_modal_projector" in k:
                merger += _prod(shape)
            else:
                vision += _prod(shape)
        elif "embed_tokens" in k or "lm_head" in k:
            continue
        else:
            body += _prod(shape)
            if parts[-2] in PROJ and len(shape) == 2:
                lora += rank * (shape[0] + shape[1])
    vcfg = cfg.get("vision_config", {})
    conv_tower = cfg.get("model_type") in ("fastvlm", "llava_qwen2") or "mm_hidden_size" in cfg
    return {"hidden": hidden, "layers": layers, "attn_dim": heads * head_dim, "vocab": text["vocab_size"],
            "n_body": body, "n_lora": lora, "n_vision": vision, "n_merger": merger,
            "vision_depth": vcfg.get("depth", 0), "vision_dim": vcfg.get("embed_dim", 0),
            "merge": (vcfg.get("spatial_merge_size", 2) ** 2) if vcfg else 1, "conv_tower": conv_tower}


def lm_flops(c: dict, length: int, head_positions: int) -> float:
    """One training pass over one row (forward + backward) of the language model."""
    return (4 * c["n_body"] * length + 6 * c["n_lora"] * length + 12 * c["layers"] * c["attn_dim"] * length**2
            + 4 * c["vocab"] * c["hidden"] * head_positions)


def tower_flops(c: dict, patches: int, images: int = 0) -> float | None:
    """One forward pass of the frozen tower over one row's patches; a convolutional tower (FastViTHD:
    no patches) over its `images`, at `c["conv_image_flops"]` each when counted (else None)."""
    if c["conv_tower"]:
        return images * c["conv_image_flops"] if images and c.get("conv_image_flops") else (0.0 if not images else None)
    if not patches:
        return 0.0
    return (2 * c["n_vision"] * patches + 2 * c["n_merger"] * patches / c["merge"]
            + 4 * c["vision_depth"] * c["vision_dim"] * patches**2)


def run_flops(c: dict, rows: list[dict], epochs: float, head_at: str, tower_passes: float) -> dict:
    """FLOPs of a whole run. rows: {"length", "supervised", "patches"}; head_at: "supervised" | "all";
    tower_passes: how often the tower runs over each image in the run."""
    lm = sum(lm_flops(c, r["length"], r["supervised"] if head_at == "supervised" else r["length"]) for r in rows)
    towers = [tower_flops(c, r.get("patches", 0), r.get("images", 0)) for r in rows]
    tower = None if any(t is None for t in towers) else sum(towers) * tower_passes
    lm *= epochs
    return {"flops_lm": lm, "flops_total": None if tower is None else lm + tower, "flops_tower": tower}


def matmul_peak(n: int, dtype) -> float:
    """TFLOP/s of an n x n x n matmul in `dtype` on MLX's default device, best of 5: the peak each
    harness divides by (measured in the process that runs the tools, the same way everywhere)."""
    import time

    import mlx.core as mx

    a, b = mx.random.normal((n, n)).astype(dtype), mx.random.normal((n, n)).astype(dtype)
    mx.eval(a, b, a @ b)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12
