"""How long and how big a run is, computed in one place: the trainer's step count, the settings
form's "≈ N steps" and its memory estimate all come from here, so they cannot disagree.

No MLX: the form asks before any model is loaded (sizes come from the model's config.json).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from finetune_app.core.config import DEFAULT_EPOCHS, TrainConfig


# ---- steps -------------------------------------------------------------------------------------

def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: `iters` when given, else epochs (DEFAULT_EPOCHS when neither is
    set) of `batches_per_epoch` micro-batches, `grad_accumulation` per step."""
    if config.iters:
        return config.iters
    per_epoch = max(1, math.ceil(batches_per_epoch / max(1, config.grad_accumulation)))
    return max(1, math.ceil((config.epochs or DEFAULT_EPOCHS) * per_epoch))


def total_steps_for_rows(config: TrainConfig, train_rows: int | None) -> int | None:
    """The same before the data is tokenised (the form): batches of `batch_size` rows. None when it
    cannot be told yet (no dataset, or a batch size that is not a positive whole number)."""
    if config.iters:
        return config.iters
    batch = config.batch_size
    if not train_rows or not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        return None
    return total_steps(config, math.ceil(train_rows / batch))


# ---- memory ------------------------------------------------------------------------------------

def model_sizes(model_config: dict) -> dict:
    """The sizes the memory estimate needs, from config.json (VLMs nest them under text_config;
    `vision`: the tower's, when there is one)."""
    text = model_config.get("text_config") or {}

    def get(*names, default=None):
        for n in names:
            for c in (model_config, text):
                if isinstance(c, dict) and c.get(n) is not None:
                    return c[n]
        return default

    def size(*names, default):
        return int(_one_size(get(*names), default))

    hidden = size("hidden_size", "d_model", default=1024)
    heads = size("num_attention_heads", default=max(1, hidden // 64))
    kv_heads = size("num_key_value_heads", default=heads)
    head_dim = size("head_dim", default=max(1, hidden // max(1, heads)))
    out = {"hidden_size": hidden, "num_layers": size("num_hidden_layers", "n_layers", default=24),
           "intermediate_size": size("intermediate_size", default=4 * hidden),
           "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
           "vocab_size": size("vocab_size", default=32000)}
    v = model_config.get("vision_config")
    if isinstance(v, dict):
        out["vision"] = {"width": int(_one_size(v.get("embed_dim") or v.get("embed_dims") or v.get("hidden_size"), 1024)),
                         "heads": int(_one_size(v.get("num_heads") or v.get("num_attention_heads"), 16)),
                         "mlp_ratio": float(_one_size(v.get("mlp_ratio"), 4)),
                         "patch_width": int(_one_size(v.get("in_channels"), 3) * _one_size(v.get("temporal_patch_size"), 1)
                                            * _one_size(v.get("patch_size"), 14) ** 2)}
    return out


def _one_size(value, default):
    """A tower size from config.json: per-stage lists (FastViT, Florence-2's DaViT) give their largest;
    anything that is not a number gives the default (the estimate must never stop a model loading)."""
    if isinstance(value, (list, tuple)):
        value = max((x for x in value if isinstance(x, (int, float)) and not isinstance(x, bool)), default=None)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else default


PROCESS_OVERHEAD = 0.5e9  # bytes outside MLX's allocations: Python, the libraries, the tokenizer
# SFT switches to chunks when the logits of a micro-batch (supervised positions x vocabulary)
# exceed `logits_budget()` values, which value_and_grad holds about three times over (logits, their
# softmax, its gradient). Below it the plain head is one matmul and faster (the chunked one computes
# the logits twice); above it the logits are what limits the batch size and row length, and chunks
# of this many values bound them. At least 2^26 values (e.g. 442 supervised positions at Qwen's
# 151,936 columns: all a 16 GB Mac gets), else LOGITS_FRACTION of the device's memory: an H200's
# 141 GB takes ~3,600 positions at Llama-3's 128,256 columns in one matmul where 2^26 chunked every
# Alpaca batch above 523 (#16).
LOGITS_BUDGET = 1 << 26
LOGITS_FRACTION = 0.02  # of the device's memory, for the three copies of the logits (2-byte values)
# SFT with a frozen head (LoRA) runs the fused head (`chunked_ce.fused_ce_sum`) in chunks of
# FUSED_VALUES logits (130 positions at 128,256 columns); each chunk holds its logits and their
# softmax-minus-onehot (two [chunk, V] arrays in the model's dtype), and MLX, which allocates an
# op's output when it queues it, has a few chunks alive at once (textmem: ~0.32 GB at 128k columns
# in bf16, i.e. ~5 chunks).
FUSED_VALUES = 1 << 24
FUSED_LIVE_CHUNKS = 5

# The decoder's activations (#16 plannerfit; benchmarks/planner_probe.py, docs/performance.md). Per
# token and layer, the values a LoRA step keeps for its backward pass, counted from mlx-lm's Llama /
# Qwen2 layer with LoRA on every projection and a frozen base (so a matmul keeps its input only for
# LoRA's A): hidden-wide, the layer's input and its norm, the queries, the attention output (o_proj's
# input), the residual and its norm (6); kv-wide, keys and values (2); intermediate-wide, gate, up,
# the gate's sigmoid (compiled SwiGLU) and their product (down's input) (4).
KEPT_HIDDEN, KEPT_KV, KEPT_INTER = 6, 2, 4
# Once per token besides the layers: the embedding output, the final norm's input and output and the
# hidden-state gradient (4 hidden-wide), and the backward pass of one layer at a time (the gradients
# of gate, up and their product: 3 intermediate-wide).
ONCE_HIDDEN, ONCE_INTER = 4, 3
# Measured against those counts on this CPU (MLX's peak of the compiled step, 16 probes: Llama- and
# Qwen2-shaped, 1-6 layers, hidden 256-1024, fp32 and bf16): the peak holds 1.14x the kept count and
# 1.76x the once count (MLX queues up to 10 ops ahead of the device, and allocates each op's output
# when it queues it, so a few intermediates of the next ops are alive beside what the graph keeps).
KEPT_MEASURED, ONCE_MEASURED = 1.15, 1.8
# Attention (MLX's SDPA off CUDA's fused kernels: the CPU and Metal in training, and CUDA at a length
# that is not a multiple of 128): the [B, heads, L, L] scores in the model's dtype, about one copy
# kept per layer (1.29 measured) plus the backward's recomputation of one layer (0.56 measured; 3.4
# for an SDPA alone, whose peak shares the one kept).
SCORES_PER_LAYER, SCORES_ONCE = 1.3, 0.6


def logits_budget(memory: int | None = None) -> int:
    """Logits values (supervised positions x vocabulary) SFT computes in one matmul on a device of
    `memory` bytes (default: this process's device)."""
    if memory is None:
        from finetune_app.core.training.memory import device_memory

        memory = device_memory()
    return max(LOGITS_BUDGET, int(memory * LOGITS_FRACTION / 6))


def deep_queue() -> bool:
    """Whether this process trains on an accelerator (CUDA, Metal), where MLX queues far more ops ahead
    of the device (~200) than on the CPU the refit was measured on (~10), so more intermediates are
    alive at once. Without MLX (the form on a machine without it): assume a Mac's GPU."""
    try:
        import mlx.core as mx

        return mx.default_device() != mx.cpu
    except ImportError:
        return True


def peak_bytes(parameters: int, *, dtype_bytes: float = 2.0, quantize_bits: int | None = None,
               trainable_params: int = 0, batch_size: int = 1, seq_len: int = 512, hidden_size: int = 1024,
               num_layers: int = 24, heads: int = 16, vocab_size: int = 32000, supervised: float = 1.0,
               grad_checkpoint: bool = False, fused_head: bool = False, intermediate_size: int | None = None,
               kv_width: int | None = None) -> float:
    """MLX's peak memory of a training step (what `mx.get_peak_memory()` reports), in bytes.

    Weights at their storage width; trainable params with a gradient and two Adam moments (fp32,
    16 bytes each); per token and layer the values the backward pass keeps (KEPT_*; only the layer
    input with gradient checkpointing, plus one layer recomputed), per token the values outside
    the layers (ONCE_*); the attention scores (SCORES_*); the logits of the supervised positions (`supervised`: their share of the
    tokens) three times (logits, softmax, gradient), bounded by SFT's chunked head (`fused_head`:
    by the fused one's live chunks). Checked against MLX's peak: benchmarks/planner_probe.py."""
    inter = intermediate_size or 4 * hidden_size
    kv = hidden_size if kv_width is None else kv_width
    tokens = batch_size * seq_len
    layer = KEPT_HIDDEN * hidden_size + KEPT_KV * kv + KEPT_INTER * inter
    once = ONCE_HIDDEN * hidden_size + ONCE_INTER * inter
    kept = num_layers * hidden_size + layer if grad_checkpoint else num_layers * layer
    act_bytes = tokens * (KEPT_MEASURED * kept + ONCE_MEASURED * once) * dtype_bytes
    if deep_queue():  # the refit is CPU-measured: keep the previous, H200-checked term as a floor there
        act_bytes = max(act_bytes, tokens * num_layers * (2 if grad_checkpoint else 34) * hidden_size * dtype_bytes)
    copies = (1 if grad_checkpoint else SCORES_PER_LAYER * num_layers) + SCORES_ONCE
    attn_bytes = batch_size * heads * seq_len ** 2 * dtype_bytes * copies
    positions = tokens * supervised
    logits_bytes = min(positions * vocab_size, logits_budget()) * dtype_bytes * 3  # in the model's dtype
    if fused_head:  # two [chunk, V] arrays per live chunk, and the [K, D] hidden states and their gradient
        rows = max(1, FUSED_VALUES // vocab_size)
        chunk = rows // 128 * 128 if rows > 128 else rows
        logits_bytes = (min(positions, FUSED_LIVE_CHUNKS * chunk) * vocab_size * 2
                        + 2 * positions * hidden_size) * dtype_bytes
    return weights_and_state_bytes(parameters, dtype_bytes, quantize_bits, trainable_params) + act_bytes + attn_bytes + logits_bytes


def weights_and_state_bytes(parameters: int, dtype_bytes: float, quantize_bits: int | None, trainable: int) -> float:
    """Weights at their storage width, and the trainable params with a gradient and two Adam moments
    (fp32, 16 bytes each): what stays resident through a step."""
    return parameters * (quantize_bits / 8 if quantize_bits else dtype_bytes) + trainable * 16


def vision_bytes(sizes: dict, images: "ImageLoad", dtype_bytes: float) -> tuple[float, float]:
    """A VLM's picture terms: (bytes resident through the step, bytes of the tower's forward pass).
    Resident: the cached features (merged rows x the width they are stored at). The tower (frozen, no gradient)
    holds one layer at a time: its input pixels (float32), per patch the stream, q/k/v, the attention
    output and the MLP's two mlp_ratio-wide arrays, and per picture its [heads, p, p] scores."""
    cached = images.cached * (images.cached_width or sizes.get("hidden_size", 1024)) * dtype_bytes
    v = sizes.get("vision")
    if not images.tower or not v or not images.patches:
        return cached, 0.0
    patches = sum(images.patches)
    per_patch = (6 + 2 * v["mlp_ratio"]) * v["width"] * dtype_bytes + v["patch_width"] * 4
    scores = TOWER_SCORES * v["heads"] * sum(p * p for p in images.patches) * dtype_bytes
    return cached, patches * per_patch + scores


TOWER_SCORES = 2  # [heads, p, p] copies per picture in the tower's forward: scores and softmax (measured 2.1)


def memory_gb(parameters: int, **kwargs) -> float:
    """Rough memory of a LoRA run in GB: `peak_bytes` plus the process's own overhead."""
    return (peak_bytes(parameters, **kwargs) + PROCESS_OVERHEAD) / 1e9


@dataclass(frozen=True)
class ImageLoad:
    """A VLM batch's pictures, for the estimate: `patches` per picture (the tower's input rows, before
    the merge), `cached` merged feature rows resident in the feature cache (the run's pictures, each
    `cached_width` values), and whether the step runs the tower (`tower`: the first epoch, or no cache)."""
    patches: tuple = ()
    cached: int = 0
    tower: bool = True
    cached_width: int = 0  # values a cached row holds; 0: the LM's width (FastVLM caches before its projector)


def run_memory_gb(config: TrainConfig, *, parameters: int, dtype: str, quantization: str, sizes: dict,
                  seq_len: int, supervised: float = 1.0, overhead: bool = True, images: ImageLoad | None = None) -> float:
    """`memory_gb` for this config on a model described by `describe()` (parameters, dtype,
    quantization text like "4-bit (group 64)") and `model_sizes()`. Settings that are not valid
    yet fall back to their defaults, so the form can estimate while a person types.
    `overhead=False`: MLX's peak alone (what `mx.get_peak_memory()` measures). `images`: a VLM
    batch's pictures (`seq_len` then counts their tokens); the first epoch's tower runs before the
    step's backward pass, so the peak is the larger of the two."""
    dtype_bytes = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}.get(dtype, 2.0)
    m = re.match(r"(\d+)-bit", quantization or "")
    bits = config.quantize_bits or (int(m.group(1)) if m else None)
    batch = config.batch_size if _positive_int(config.batch_size) else 1
    batch, seq_len = batch * sequences_per_example(config), sequence_length(config, seq_len)  # pairs, GRPO groups
    rank = config.lora_rank if _positive_int(config.lora_rank) else 16
    h, inter = sizes.get("hidden_size", 1024), sizes.get("intermediate_size", 4096)
    layers = sizes.get("num_layers", 24)
    kv = sizes.get("kv_heads", 1) * sizes.get("head_dim", 64)
    # LoRA A and B of q, k, v, o and the MLP's gate, up, down projections, per layer
    per_layer = rank * (2 * h + 2 * (h + kv) + 2 * h + 2 * (h + inter) + (inter + h))
    trainable = parameters if config.fine_tune_type == "full" else per_layer * layers
    peak = peak_bytes(parameters, dtype_bytes=dtype_bytes, quantize_bits=bits, trainable_params=trainable,
                      batch_size=batch, seq_len=seq_len, hidden_size=h, num_layers=layers,
                      heads=sizes.get("heads", max(1, h // 64)), vocab_size=sizes.get("vocab_size", 32000),
                      supervised=supervised, grad_checkpoint=bool(config.grad_checkpoint),
                      fused_head=config.objective == "sft" and config.fine_tune_type != "full",
                      intermediate_size=inter, kv_width=kv)
    if images is not None:
        resident, tower = vision_bytes(sizes, images, dtype_bytes)
        peak = max(peak, weights_and_state_bytes(parameters, dtype_bytes, bits, trainable) + tower) + resident
    return (peak + (PROCESS_OVERHEAD if overhead else 0)) / 1e9 + generation_gb(config, sizes, batch, seq_len)



# ---- preference pairs and GRPO groups (issue 17; begin) -------------------------------------------
PAIR_OBJECTIVES = ("dpo", "ipo", "orpo")


def sequences_per_example(config: TrainConfig) -> int:
    """Sequences one training example puts through the model: a preference pair (DPO, IPO, ORPO)
    two, chosen and rejected; a GRPO prompt its G sampled answers; an SFT row one."""
    if config.objective in PAIR_OBJECTIVES:
        return 2
    if config.objective == "grpo":
        return config.grpo_group_size if _positive_int(config.grpo_group_size) else 4
    return 1


def sequence_length(config: TrainConfig, seq_len: int) -> int:
    """A GRPO sequence is the prompt plus up to grpo_max_tokens sampled tokens."""
    if config.objective == "grpo":
        return seq_len + (config.grpo_max_tokens if _positive_int(config.grpo_max_tokens) else 64)
    return seq_len


def generation_gb(config: TrainConfig, sizes: dict, sequences: int, seq_len: int) -> float:
    """GRPO samples its answers first: the KV cache of `sequences` sequences (keys and values of
    every layer, two bytes each); nothing for the other objectives."""
    if config.objective != "grpo":
        return 0.0
    kv = sizes.get("kv_heads", 1) * sizes.get("head_dim", 64)
    return sequences * seq_len * sizes.get("num_layers", 24) * 2 * kv * 2 / 1e9


def sequences_text(config: TrainConfig, examples: int) -> str:
    """What `examples` training examples amount to for the objective (the form and `data check`)."""
    k = sequences_per_example(config)
    if config.objective in PAIR_OBJECTIVES:
        return f"{examples:,} pairs = {examples * k:,} sequences (chosen and rejected)"
    if config.objective == "grpo":
        return (f"{examples:,} prompts × {k} sampled answers = {examples * k:,} sequences, "
                f"each answer sampled first (up to {sequence_length(config, 0)} new tokens)")
    return f"{examples:,} sequences"
# ---- preference pairs and GRPO groups (issue 17; end) ---------------------------------------------


# ---- will it fit ---------------------------------------------------------------------------------

FIT_SHARE = 0.8  # of the memory budget a run may plan for: the form says "would swap" from 80% of RAM


@dataclass
class Fit:
    """The estimate against the device's memory, with the largest batch / longest row that fit."""
    need_gb: float
    have_gb: float
    batch_size: int
    seq_len: int
    largest_batch: int  # at seq_len (0: not even batch 1)
    longest_row: int  # tokens, at batch_size (0: not even a short row)

    @property
    def fits(self) -> bool:
        return self.need_gb <= FIT_SHARE * self.have_gb

    def verdict(self) -> str:
        head = (f"Fits: about {self.need_gb:.2f} GB of {self.have_gb:.1f} GB" if self.fits else
                f"Will not fit: about {self.need_gb:.2f} GB needed, {self.have_gb:.1f} GB available")
        limits = (f"largest batch at {self.seq_len:,} tokens: {self.largest_batch}; longest row at batch "
                  f"{self.batch_size}: {self.longest_row:,} tokens")
        return f"{head} ({limits})."

    def to_dict(self) -> dict:
        return {"fits": self.fits, "need_gb": round(self.need_gb, 3), "have_gb": round(self.have_gb, 3),
                "batch_size": self.batch_size, "seq_len": self.seq_len, "largest_batch": self.largest_batch,
                "longest_row": self.longest_row}


def will_it_fit(config: TrainConfig, *, budget_bytes: int, seq_len: int, **model) -> Fit:
    """`run_memory_gb` (with `model`: parameters, dtype, quantization, sizes) against a memory
    budget (`training.memory.fit_budget()`: Metal's recommended working set, a GPU's memory, RAM)."""
    limit = FIT_SHARE * budget_bytes / 1e9
    batch = config.batch_size if _positive_int(config.batch_size) else 1

    def need(b, n):
        return run_memory_gb(config.replace(batch_size=b), seq_len=n, **model)

    def largest(lo, hi, ok):  # the largest x in [lo, hi] with ok(x), ok monotone; lo - 1 if none
        while lo <= hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if ok(mid) else (lo, mid - 1)
        return hi

    return Fit(need_gb=need(batch, seq_len), have_gb=budget_bytes / 1e9, batch_size=batch, seq_len=seq_len,
               largest_batch=max(0, largest(1, 4096, lambda b: need(b, seq_len) <= limit)),
               longest_row=max(0, largest(1, 1 << 20, lambda n: need(batch, n) <= limit)))


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def folder_parameters(model_dir) -> tuple[int, str, str]:
    """(parameters, dtype, quantization) of a model folder from config.json and its safetensors
    headers alone (no MLX, nothing loaded): what `data check --model` estimates with."""
    import json
    import struct
    from pathlib import Path

    folder = Path(model_dir).expanduser()
    counts: dict[str, int] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, t in header.items():
            if name != "__metadata__":
                counts[t["dtype"]] = counts.get(t["dtype"], 0) + math.prod(t["shape"])
    config = json.loads((folder / "config.json").read_text())
    q = config.get("quantization") or {}
    bits = q.get("bits") if isinstance(q, dict) else None
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    floats = {names[k]: v for k, v in counts.items() if k in names}
    dtype = max(floats, key=floats.get) if floats else "bfloat16"
    packed = counts.get("U32", 0) * (32 // bits) if bits else 0  # 4-bit: 8 weights per uint32
    params = sum(floats.values()) + packed
    return params, dtype, (f"{bits}-bit" if bits else "")
