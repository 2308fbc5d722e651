"""TrainConfig: every engine setting in one dataclass, with presets, validation and TOML I/O.

The GUI form, the CLI flags and the run folder's `train_config.toml` are all views of this.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from finetune_app.core import atomic
from finetune_app.core.errors import ConfigError
from finetune_app.core.serving import SERVE_TARGETS

FINE_TUNE_TYPES = ("lora", "dora", "full")
SCHEDULES = ("constant", "cosine", "linear")
TRACKERS = ("tensorboard", "wandb", "mlflow")
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion", "adagrad", "rmsprop", "adadelta", "adamax")


@dataclass
class TrainConfig:
    """What to train and how. Help texts are plain words: the GUI shows them as tooltips."""

    model: str = field(default="", metadata={"help": "Base model: a Hugging Face id or a local folder."})
    data: str = field(default="", metadata={"help": "Dataset file or folder."})
    output: str = field(default="", metadata={"help": "Run folder: adapter, checkpoints and metrics go here."})

    fine_tune_type: str = field(default="lora", metadata={"help": "lora: small adapter (recommended); dora: LoRA with a learned magnitude; full: every weight."})
    lora_rank: int = field(default=16, metadata={"help": "Adapter size. Higher learns more but uses more memory."})
    lora_alpha: float = field(default=16.0, metadata={"help": "Adapter strength; the update is scaled by alpha / rank."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Randomly drops adapter inputs while training (0 to 0.5) to fight over-fitting."})
    lora_targets: list[str] | None = field(default=None, metadata={"help": "Layer names to adapt (e.g. q_proj, v_proj). Empty: every attention and MLP projection of the language model."})
    quantize_bits: int | None = field(default=None, metadata={"help": "QLoRA: quantize the frozen base to 4 or 8 bits to save memory."})
    quantize_group_size: int = field(default=64, metadata={"help": "Quantization group size (32, 64 or 128)."})
    quantize_vision: bool = field(default=False, metadata={"help": "Also quantize the vision tower (off: it stays in full precision)."})
    train_vision: bool = field(default=False, metadata={"help": "Also adapt the vision tower (slower; rarely needed)."})
    train_projector: bool = field(default=False, metadata={"help": "Also train the vision-to-language projector."})

    optimizer: str = field(default="adamw", metadata={"help": "Optimizer. AdamW suits almost every run."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Step size. Too high makes the loss jump; too low learns nothing."})
    weight_decay: float = field(default=0.0, metadata={"help": "Pulls weights towards zero (AdamW)."})
    lr_schedule: str = field(default="cosine", metadata={"help": "How the learning rate changes: constant, cosine or linear decay."})
    warmup_steps: int = field(default=0, metadata={"help": "Steps over which the learning rate ramps up from zero."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final learning rate as a fraction of the peak (cosine/linear)."})

    iters: int | None = field(default=None, metadata={"help": "Optimizer steps to train. Leave empty to use epochs."})
    epochs: float | None = field(default=None, metadata={"help": "Passes over the training split (used when steps are not given)."})
    batch_size: int = field(default=4, metadata={"help": "Examples per step. Larger is smoother but needs more memory."})
    grad_accumulation: int = field(default=1, metadata={"help": "Micro-batches summed per optimizer step (a larger effective batch without the memory)."})
    grad_clip: float | None = field(default=1.0, metadata={"help": "Caps the gradient norm to keep training stable. Empty: no cap."})
    grad_checkpoint: bool = field(default=False, metadata={"help": "Recompute activations instead of storing them: less memory, about 30% slower."})
    max_length: int = field(default=2048, metadata={"help": "Longest sequence in tokens (image tokens included). Longer rows are skipped and reported."})
    completion_only: bool = field(default=True, metadata={"help": "Learn only the answers, not the prompts or image tokens."})
    serve_target: str = field(default="auto", metadata={"help": "Where the model will run: the prompt layout and image processing are trained exactly as that runtime does them. auto: mlx-vlm for vision-language models, mlx-lm for text; mlx-swift: Apple's FastVLM app."})
    image_size: int | None = field(default=None, metadata={"help": "Resize images so their longer side is at most this many pixels before the model's own processing. Empty: the model's own size."})

    valid_fraction: float = field(default=0.1, metadata={"help": "Share of rows held out for validation when the dataset has no validation split."})
    steps_per_eval: int = field(default=50, metadata={"help": "Compute the validation loss every this many steps."})
    val_batches: int | None = field(default=None, metadata={"help": "Validation batches per evaluation. Empty: the whole split."})
    steps_per_report: int = field(default=10, metadata={"help": "Report training metrics every this many steps."})
    save_every: int = field(default=100, metadata={"help": "Write a resumable checkpoint every this many steps."})
    keep_checkpoints: int = field(default=3, metadata={"help": "How many recent checkpoints to keep."})
    sample_count: int = field(default=3, metadata={"help": "Validation items captioned at each evaluation, so you see them improve."})
    sample_max_tokens: int = field(default=32, metadata={"help": "Longest sample generation, in tokens."})
    seed: int = field(default=0, metadata={"help": "Random seed: the same seed gives the same run."})
    data_format: str | None = field(default=None, metadata={"help": "Dataset format (detected automatically when empty)."})
    strict_data: bool = field(default=False, metadata={"help": "Refuse to start when any row has a problem (default: skip bad rows)."})
    compile: bool = field(default=True, metadata={"help": "Compile the training step where the model allows it (faster)."})
    cache_vision: bool = field(default=True, metadata={"help": "Compute a frozen vision tower's features once per image and reuse them every epoch (same results, faster)."})
    report_to: list[str] | None = field(default=None, metadata={"help": "Also log the run's metrics and settings to these trackers: any of tensorboard, wandb, mlflow (each needs its extra, e.g. pip install \"finetune-app[tensorboard]\"). Empty: off."})

    # ---- derived -------------------------------------------------------------------------
    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str | None = None) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown setting(s): {', '.join(unknown)}.",
                f"Valid settings are: {', '.join(sorted(known))}.", file=source)
        cfg = cls(**{k: v for k, v in data.items()})
        return cfg

    @staticmethod
    def help(name: str) -> str:
        return next(f.metadata.get("help", "") for f in fields(TrainConfig) if f.name == name)

    # ---- validation ----------------------------------------------------------------------
    def problems(self) -> dict[str, str]:
        """Every invalid value, by field name, with a plain-words reason (empty: all valid)."""
        p: dict[str, str] = {}

        def check(name, ok, reason):
            if name not in p and not ok:
                p[name] = reason

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check("fine_tune_type", self.fine_tune_type in FINE_TUNE_TYPES, f"must be one of {', '.join(FINE_TUNE_TYPES)}")
        check("lora_rank", is_int(self.lora_rank) and 1 <= self.lora_rank <= 1024, "must be a whole number from 1 to 1024")
        check("lora_alpha", is_num(self.lora_alpha) and self.lora_alpha > 0, "must be a positive number")
        check("lora_dropout", is_num(self.lora_dropout) and 0 <= self.lora_dropout < 1, "must be at least 0 and below 1")
        check("lora_targets", self.lora_targets is None or (isinstance(self.lora_targets, list) and all(isinstance(t, str) and t for t in self.lora_targets)), "must be a list of layer names")
        check("quantize_bits", self.quantize_bits in (None, 4, 8), "must be 4, 8 or empty")
        check("quantize_group_size", self.quantize_group_size in (32, 64, 128), "must be 32, 64 or 128")
        check("quantize_bits", not (self.quantize_bits and self.fine_tune_type == "full"), "a full fine-tune needs full-precision weights; leave quantization empty or use LoRA")
        check("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}")
        check("learning_rate", is_num(self.learning_rate) and 0 < self.learning_rate <= 1, "must be a positive number no larger than 1 (typical: 1e-5 to 1e-3)")
        check("weight_decay", is_num(self.weight_decay) and 0 <= self.weight_decay < 1, "must be at least 0 and below 1")
        check("lr_schedule", self.lr_schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}")
        check("warmup_steps", is_int(self.warmup_steps) and self.warmup_steps >= 0, "must be a whole number, 0 or more")
        check("min_lr_ratio", is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "must be between 0 and 1")
        check("iters", self.iters is None or (is_int(self.iters) and self.iters >= 1), "must be a whole number, 1 or more")
        check("epochs", self.epochs is None or (is_num(self.epochs) and self.epochs > 0), "must be a positive number")
        check("batch_size", is_int(self.batch_size) and 1 <= self.batch_size <= 4096, "must be a whole number from 1 to 4096")
        check("grad_accumulation", is_int(self.grad_accumulation) and self.grad_accumulation >= 1, "must be a whole number, 1 or more")
        check("grad_clip", self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip > 0), "must be a positive number or empty")
        check("max_length", is_int(self.max_length) and self.max_length >= 8, "must be a whole number, 8 or more")
        check("serve_target", self.serve_target in SERVE_TARGETS, f"must be one of {', '.join(SERVE_TARGETS)}")
        check("image_size", self.image_size is None or (is_int(self.image_size) and self.image_size >= 16), "must be 16 pixels or more, or empty")
        check("valid_fraction", is_num(self.valid_fraction) and 0 <= self.valid_fraction < 1, "must be at least 0 and below 1")
        for name in ("steps_per_eval", "steps_per_report", "save_every", "keep_checkpoints"):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= 1, "must be a whole number, 1 or more")
        check("val_batches", self.val_batches is None or (is_int(self.val_batches) and self.val_batches >= 1), "must be a whole number, 1 or more, or empty")
        check("sample_count", is_int(self.sample_count) and self.sample_count >= 0, "must be a whole number, 0 or more")
        check("sample_max_tokens", is_int(self.sample_max_tokens) and self.sample_max_tokens >= 1, "must be a whole number, 1 or more")
        check("seed", is_int(self.seed) and self.seed >= 0, "must be a whole number, 0 or more")
        check("report_to", self.report_to is None or (isinstance(self.report_to, list) and all(t in TRACKERS for t in self.report_to)),
              f"must be a list of trackers, any of {', '.join(TRACKERS)}")
        if ("warmup_steps" not in p and "iters" not in p and self.warmup_steps and self.iters
                and self.warmup_steps >= self.iters):
            p["warmup_steps"] = f"must be fewer than the training steps ({self.iters})"
        return p

    def validate(self, *, need_paths: bool = True) -> "TrainConfig":
        """Raise one ConfigError listing every invalid value and how to fix it."""
        p = self.problems()
        if need_paths:
            for name, what in (("model", "a base model (hub id or folder)"), ("data", "a dataset file or folder"), ("output", "a run folder")):
                if not getattr(self, name):
                    p[name] = f"is missing: give {what}"
        if p:
            lines = "; ".join(f"{k} {v} (got {getattr(self, k)!r})" for k, v in p.items())
            raise ConfigError(f"Invalid settings: {lines}.", "Correct these values and start again.", field=next(iter(p)))
        return self

    # ---- TOML ----------------------------------------------------------------------------
    def to_toml(self) -> str:
        lines = ["# Finetune training configuration", ""]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                lines.append(f"# {f.name} = (not set)")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        return atomic.write_text(path, self.to_toml())

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Config file not found: {path}.", "Check the path passed with --config.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Config file {path} is not valid TOML: {exc}.", "Fix the syntax (key = value per line).", file=path) from None
        except UnicodeDecodeError:
            raise ConfigError(f"Config file {path} is not UTF-8 text.", "Save it as UTF-8.", file=path) from None
        return cls.from_dict(data, source=str(path))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


# Presets: only the fields they set; everything else keeps the user's (or default) value.
PRESETS: dict[str, dict] = {
    "quick test": dict(fine_tune_type="lora", lora_rank=8, lora_alpha=16.0, learning_rate=1e-3, iters=50,
                       epochs=None, batch_size=2, steps_per_eval=25, steps_per_report=5, save_every=25,
                       lr_schedule="constant", warmup_steps=0),
    "balanced": dict(fine_tune_type="lora", lora_rank=16, lora_alpha=16.0, learning_rate=1e-3, iters=None,
                     epochs=3.0, batch_size=4, steps_per_eval=50, steps_per_report=10, save_every=100,
                     lr_schedule="cosine", warmup_steps=0),
    "quality": dict(fine_tune_type="lora", lora_rank=32, lora_alpha=32.0, learning_rate=5e-4, iters=None,
                    epochs=5.0, batch_size=8, steps_per_eval=100, steps_per_report=10, save_every=200,
                    lr_schedule="cosine", warmup_steps=20),
}
DEFAULT_PRESET = "balanced"


def apply_preset(config: TrainConfig, name: str) -> TrainConfig:
    try:
        return config.replace(**PRESETS[name])
    except KeyError:
        raise ConfigError(f"Unknown preset '{name}'.", f"Choose one of: {', '.join(PRESETS)}.") from None
