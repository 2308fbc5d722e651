"""How long and how big a run is, computed in one place: the trainer's step count, the settings
form's "≈ N steps" and its memory estimate all come from here, so they cannot disagree.

No MLX: the form asks before any model is loaded (sizes come from the model's config.json).
"""

from __future__ import annotations

import math
import re

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
            "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim}


def memory_gb(parameters: int, *, dtype_bytes: float = 2.0, quantize_bits: int | None = None,
              trainable_params: int = 0, batch_size: int = 1, seq_len: int = 512,
              hidden_size: int = 1024, num_layers: int = 24, grad_checkpoint: bool = False) -> float:
    """Rough peak memory of a LoRA run: weights + trainable state + activations.

    Weights at their storage width; trainable params in fp32 with two Adam moments and a gradient
    (16 bytes each); activations about 34 values per token per layer per hidden unit (attention and
    MLP intermediates), two bytes each, or only the layer inputs with gradient checkpointing."""
    weight_bytes = parameters * (quantize_bits / 8 if quantize_bits else dtype_bytes)
    state_bytes = trainable_params * 16
    per_token_layer = (2 if grad_checkpoint else 34) * hidden_size * 2
    act_bytes = batch_size * seq_len * num_layers * per_token_layer
    overhead = 0.5e9
    return (weight_bytes + state_bytes + act_bytes + overhead) / 1e9


def run_memory_gb(config: TrainConfig, *, parameters: int, dtype: str, quantization: str, sizes: dict,
                  seq_len: int) -> float:
    """`memory_gb` for this config on a model described by `describe()` (parameters, dtype,
    quantization text like "4-bit (group 64)") and `model_sizes()`. Settings that are not valid
    yet fall back to their defaults, so the form can estimate while a person types."""
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
    return memory_gb(parameters, dtype_bytes=dtype_bytes, quantize_bits=bits, trainable_params=trainable,
                     batch_size=batch, seq_len=seq_len, hidden_size=h, num_layers=layers,
                     grad_checkpoint=bool(config.grad_checkpoint)) + generation_gb(config, sizes, batch, seq_len)


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


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
