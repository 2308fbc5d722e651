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
    """The sizes the memory estimate needs, from config.json (VLMs nest them under text_config)."""
    text = model_config.get("text_config") or {}

    def get(*names, default=None):
        for n in names:
            for c in (model_config, text):
                if isinstance(c, dict) and c.get(n) is not None:
                    return c[n]
        return default

    hidden = int(get("hidden_size", "d_model", default=1024))
    heads = int(get("num_attention_heads", default=max(1, hidden // 64)))
    kv_heads = int(get("num_key_value_heads", default=heads))
    head_dim = int(get("head_dim", default=max(1, hidden // max(1, heads))))
    return {"hidden_size": hidden, "num_layers": int(get("num_hidden_layers", "n_layers", default=24)),
            "intermediate_size": int(get("intermediate_size", default=4 * hidden)),
            "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "vocab_size": int(get("vocab_size", default=32000))}


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
# FUSED_VALUES logits (130 positions at 128,256 columns): a few chunks' logits are live at most (MLX
# allocates an op's output when it queues it, ops ahead of the device; measured on the CPU).
FUSED_VALUES = 1 << 24
# live bytes per logit while the chunks are few: fitted on the tiny fp32 Llamas (tests/test_estimates_fit.py:
# 4 over-predicted their peak by 17-21%, 2 by 13%) and near textmem's 3B-vocabulary figure (0.33 GB of
# head for 246M logits at the longest Alpaca batch: ~1.4 bytes a logit, capped by FUSED_HEAD_BYTES)
FUSED_BYTES_PER_LOGIT = 2
FUSED_HEAD_BYTES = 11 * FUSED_VALUES * 4


def logits_budget(memory: int | None = None) -> int:
    """Logits values (supervised positions x vocabulary) SFT computes in one matmul on a device of
    `memory` bytes (default: this process's device)."""
    if memory is None:
        from finetune_app.core.training.memory import device_memory

        memory = device_memory()
    return max(LOGITS_BUDGET, int(memory * LOGITS_FRACTION / 6))


def peak_bytes(parameters: int, *, dtype_bytes: float = 2.0, quantize_bits: int | None = None,
               trainable_params: int = 0, batch_size: int = 1, seq_len: int = 512, hidden_size: int = 1024,
               num_layers: int = 24, heads: int = 16, vocab_size: int = 32000, supervised: float = 1.0,
               grad_checkpoint: bool = False, fused_head: bool = False) -> float:
    """MLX's peak memory of a training step (what `mx.get_peak_memory()` reports), in bytes.

    Weights at their storage width; trainable params with a gradient and two Adam moments (fp32,
    16 bytes each); per token and layer about 34 x hidden values kept for the backward pass (only
    the layer input with gradient checkpointing); attention scores (batch x heads x L²) about
    1.5 copies per layer plus one in flight (the backward pass of unfused attention); the logits
    of the supervised positions (`supervised`: their share of the tokens) three times (logits,
    softmax, gradient), bounded by SFT's chunked head (`fused_head`: by the fused one's chunks).
    Fitted on tiny Llamas on the CPU (tests/test_estimates_fit.py); checked on the GPU with `benchmarks`' `predicted_vs_measured`."""
    weight_bytes = parameters * (quantize_bits / 8 if quantize_bits else dtype_bytes)
    state_bytes = trainable_params * 16
    tokens = batch_size * seq_len
    per_token_layer = (2 if grad_checkpoint else 34) * hidden_size * dtype_bytes
    act_bytes = tokens * num_layers * per_token_layer
    attn_layers = 1 if grad_checkpoint else 1.5 * num_layers + 1
    attn_bytes = batch_size * heads * seq_len ** 2 * dtype_bytes * attn_layers
    logits_bytes = min(tokens * supervised * vocab_size, logits_budget()) * dtype_bytes * 3  # in the model's dtype
    if fused_head:  # FUSED_BYTES_PER_LOGIT while the chunks are few, at most FUSED_HEAD_BYTES
        logits_bytes = min(tokens * supervised * vocab_size * FUSED_BYTES_PER_LOGIT, FUSED_HEAD_BYTES)
    return weight_bytes + state_bytes + act_bytes + attn_bytes + logits_bytes


def memory_gb(parameters: int, **kwargs) -> float:
    """Rough memory of a LoRA run in GB: `peak_bytes` plus the process's own overhead."""
    return (peak_bytes(parameters, **kwargs) + PROCESS_OVERHEAD) / 1e9


def run_memory_gb(config: TrainConfig, *, parameters: int, dtype: str, quantization: str, sizes: dict,
                  seq_len: int, supervised: float = 1.0, overhead: bool = True) -> float:
    """`memory_gb` for this config on a model described by `describe()` (parameters, dtype,
    quantization text like "4-bit (group 64)") and `model_sizes()`. Settings that are not valid
    yet fall back to their defaults, so the form can estimate while a person types.
    `overhead=False`: MLX's peak alone (what `mx.get_peak_memory()` measures)."""
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
                      fused_head=config.objective == "sft" and config.fine_tune_type != "full")
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
