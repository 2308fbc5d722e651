"""TrainConfig: every engine setting in one dataclass, with presets, validation and TOML I/O.

Each field is declared once, with `setting(...)`: its default, CLI flag, form label, group,
choices, placeholder and help. The CLI parser (cli/train.py) and the settings form
(ui/hyperparams.py) are generated from `settings()`; the run folder's `train_config.toml` is
`to_toml()`. Adding a setting is one `setting(...)` line here (plus its check in `problems()`
when it has a range).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

from finetune_app.core import atomic
from finetune_app.core.errors import ConfigError
from finetune_app.core.scoring import EVAL_METRICS
from finetune_app.core.serving import SERVE_TARGETS

FINE_TUNE_TYPES = ("lora", "dora", "full")
SCHEDULES = ("constant", "cosine", "linear")
TRACKERS = ("tensorboard", "wandb", "mlflow")
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion", "adagrad", "rmsprop", "adadelta", "adamax")
QUANT_GROUPS = (32, 64, 128)
FINE_TUNE_CHOICES = (("LORA", "lora"), ("DORA", "dora"), ("Full fine-tune", "full"))
DEFAULT_EPOCHS = 3.0  # when neither steps nor epochs are given (CLI, form, engine: estimates.total_steps)

# The settings form's groups, in its order. RUN: the paths, set outside the groups (the run folder at
# the top of the form, the model and the dataset with the model picker and the dataset browser).
RUN, ADAPTER, LENGTH, RATE, MEMORY, PROGRESS, DATA = (
    "Run", "Adapter", "Length of training", "Learning rate", "Memory and speed", "Checking progress", "Data")
OBJECTIVE = "What it learns"
GROUPS = (ADAPTER, OBJECTIVE, LENGTH, RATE, MEMORY, PROGRESS, DATA)
# sft: imitate the answers; dpo / ipo / orpo: prefer "chosen" over "rejected" answers (pairs);
# grpo: sample answers and reinforce the ones a verifiable reward scores well
OBJECTIVES = ("sft", "dpo", "ipo", "orpo", "grpo")
OBJECTIVE_CHOICES = (("Imitate the answers (SFT)", "sft"), ("Prefer chosen answers (DPO)", "dpo"),
                     ("Prefer chosen answers, bounded (IPO)", "ipo"),
                     ("Answers + preference, no reference (ORPO)", "orpo"),
                     ("Reinforce rewarded answers (GRPO)", "grpo"))
REFERENCE_OBJECTIVES = ("dpo", "ipo")  # the reference model is the base with the adapter switched off
GRPO = "Reward training (GRPO)"
GROUPS += (GRPO,)


def setting(default, *, group: str, label: str, help: str, choices=None, placeholder: str = "",
            flag: str | None = None):
    """A TrainConfig field with its whole declaration. `choices`: values, (label, value) pairs, or
    a function returning them (asked when a form is built); `flag` defaults to --the-name (a bool
    that defaults to on: --no-the-name)."""
    return field(default=default, metadata={"group": group, "label": label, "help": help, "choices": choices,
                                            "placeholder": placeholder, "flag": flag})


SERVE_TARGET_CHOICES = (("Automatic (mlx-vlm / mlx-lm)", "auto"), ("mlx-vlm (Python)", "mlx-vlm"),
                        ("mlx-lm (Python)", "mlx-lm"), ("Apple's FastVLM app (mlx-swift)", "mlx-swift"),
                        ("mlx-swift-lm (MLXVLM / MLXLLM)", "mlx-swift-lm"))


def data_format_choices() -> tuple:
    from finetune_app.core.data.formats import FORMATS

    return (("Detect automatically", None),) + tuple((n, n) for n in FORMATS if n != "template")


@dataclass(frozen=True)
class Setting:
    """One TrainConfig field as the CLI and the form see it."""

    name: str
    kind: type  # bool, int, float, str or list (of str)
    optional: bool  # None is a valid value (an empty field, a flag not given)
    default: object
    group: str
    label: str
    help: str
    flag: str
    placeholder: str
    _choices: object = None

    @property
    def choices(self) -> tuple[tuple[str, object], ...]:
        """(label, value) pairs, or () for a free value."""
        c = self._choices() if callable(self._choices) else (self._choices or ())
        return tuple(x if isinstance(x, tuple) else (str(x), x) for x in c)


@cache
def settings() -> tuple[Setting, ...]:
    """Every setting, in declaration order (the form's order)."""
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in fields(TrainConfig):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = type(None) in typing.get_args(hint)
        base = args[0] if optional else hint
        kind = list if typing.get_origin(base) is list else base
        md = f.metadata  # a field declared without setting(): shown in an "Other" group (tests say to declare it)
        flag = md.get("flag") or ("--no-" if kind is bool and f.default else "--") + f.name.replace("_", "-")
        out.append(Setting(f.name, kind, optional, f.default, md.get("group", "Other"),
                           md.get("label", f.name.replace("_", " ").capitalize()), md.get("help", ""), flag,
                           md.get("placeholder", ""), md.get("choices")))
    return tuple(out)


def setting_of(name: str) -> Setting:
    return next(s for s in settings() if s.name == name)


def is_unset(value) -> bool:
    """"" or "none" (any case): how a flag or a TOML file says "not set" (None) for an optional
    setting; TOML has no null, and a setting whose default is not None needs a way to say it."""
    return isinstance(value, str) and value.strip().lower() in ("", "none")


@dataclass
class TrainConfig:
    """What to train and how: each field is one `setting(...)`, the whole declaration of that
    setting. Help texts are plain words: the GUI shows them as tooltips."""

    model: str = setting("", group=RUN, label="Base model",
                         help="Base model: a Hugging Face id or a local folder.")
    data: str = setting("", group=RUN, label="Dataset", help="Dataset file or folder.")
    output: str = setting("", group=RUN, label="Run folder", placeholder="a new folder under the app's runs",
                          help="Run folder: adapter, checkpoints and metrics go here.")

    fine_tune_type: str = setting("lora", group=ADAPTER, label="Method", choices=FINE_TUNE_CHOICES,
                                  help="lora: small adapter (recommended); dora: LoRA with a learned magnitude; full: every weight.")
    lora_rank: int = setting(16, group=ADAPTER, label="Adapter size (rank)",
                             help="Adapter size. Higher learns more but uses more memory.")
    lora_alpha: float = setting(16.0, group=ADAPTER, label="Adapter strength (alpha)",
                                help="Adapter strength; the update is scaled by alpha / rank.")
    lora_dropout: float = setting(0.0, group=ADAPTER, label="Adapter dropout",
                                  help="Randomly drops adapter inputs while training (0 to 0.5) to fight over-fitting.")
    lora_targets: list[str] | None = setting(None, group=ADAPTER, label="Layers to adapt",
                                             placeholder="all projections",
                                             help="Layer names to adapt (e.g. q_proj, v_proj). Empty: every attention and MLP projection of the language model.")
    train_vision: bool = setting(False, group=ADAPTER, label="Also adapt the vision tower",
                                 help="Also adapt the vision tower (slower; rarely needed).")
    train_projector: bool = setting(False, group=ADAPTER, label="Also train the projector",
                                    help="Also train the vision-to-language projector.")

    # ---- objective (issue 17) ----
    objective: str = setting("sft", group=OBJECTIVE, label="Objective", choices=OBJECTIVE_CHOICES,
                             help="What the run learns. sft: the answers; dpo / ipo: to prefer each row's 'chosen' "
                                  "answer over its 'rejected' one, relative to the base model; orpo: the chosen "
                                  "answers plus the preference, no reference model; grpo: answers sampled by the "
                                  "model itself, reinforced by a reward.")
    beta: float = setting(0.1, group=OBJECTIVE, label="Preference strength (beta)",
                          help="DPO: how far the adapter may move from the base (smaller: further; typical 0.1); "
                               "IPO: the regularisation (the target margin is 1/(2 beta)); ORPO: the weight of the "
                               "preference term beside the answers' loss (lambda). Not used by SFT.")
    # ---- end objective ----
    iters: int | None = setting(None, group=LENGTH, label="Steps", placeholder="from epochs",
                                help="Optimizer steps to train. Leave empty to use epochs.")
    epochs: float | None = setting(None, group=LENGTH, label="Epochs",
                                   placeholder=f"{DEFAULT_EPOCHS:g} when steps are empty",
                                   help="Passes over the training split (used when steps are not given).")
    batch_size: int = setting(4, group=LENGTH, label="Batch size",
                              help="Examples per step. Larger is smoother but needs more memory.")
    grad_accumulation: int = setting(1, group=LENGTH, label="Accumulate batches",
                                     help="Micro-batches summed per optimizer step (a larger effective batch without the memory).")

    optimizer: str = setting("adamw", group=RATE, label="Optimizer", choices=OPTIMIZERS,
                             help="Optimizer. AdamW suits almost every run.")
    learning_rate: float = setting(1e-3, group=RATE, label="Learning rate",
                                   help="Step size. Too high makes the loss jump; too low learns nothing.")
    lr_schedule: str = setting("cosine", group=RATE, label="Schedule", choices=SCHEDULES,
                               help="How the learning rate changes: constant, cosine or linear decay.")
    warmup_steps: int = setting(0, group=RATE, label="Warm-up steps",
                                help="Steps over which the learning rate ramps up from zero.")
    min_lr_ratio: float = setting(0.0, group=RATE, label="Final rate (fraction)",
                                  help="Final learning rate as a fraction of the peak (cosine/linear).")
    weight_decay: float = setting(0.0, group=RATE, label="Weight decay",
                                  help="Pulls weights towards zero (AdamW).")
    grad_clip: float | None = setting(1.0, group=RATE, label="Gradient cap", placeholder="no cap",
                                      help="Caps the gradient norm to keep training stable. Empty or none: no cap.")

    max_length: int = setting(2048, group=MEMORY, label="Max length (tokens)",
                              help="Longest sequence in tokens (image tokens included). Longer rows are skipped and reported.")
    image_size: int | None = setting(None, group=MEMORY, label="Image size limit (px)", placeholder="model's own",
                                     help="Resize images so their longer side is at most this many pixels before the model's own processing. Empty: the model's own size.")
    quantize_bits: int | None = setting(None, group=MEMORY, label="Quantize the base (QLoRA)",
                                        choices=(("No", None), ("4-bit", 4), ("8-bit", 8)),
                                        help="QLoRA: quantize the frozen base to 4 or 8 bits to save memory.")
    quantize_group_size: int = setting(64, group=MEMORY, label="Quantization group", choices=QUANT_GROUPS,
                                       help="Quantization group size (32, 64 or 128).")
    quantize_vision: bool = setting(False, group=MEMORY, label="Quantize the vision tower too",
                                    help="Also quantize the vision tower (off: it stays in full precision).")
    grad_checkpoint: bool = setting(False, group=MEMORY, label="Save memory (recompute)",
                                    help="Recompute activations instead of storing them: less memory, about 30% slower.")
    compile: bool = setting(True, group=MEMORY, label="Compile the step",
                            help="Compile the training step where the model allows it (faster).")
    # ---- packing (#16) ----
    pack: bool = setting(False, group=MEMORY, label="Pack short rows together",
                         help="Put several short examples in one row of the step (each sees only itself): "
                              "less padding when a batch mixes long and short rows. Same results.")
    # ---- end packing ----
    cache_vision: bool = setting(True, group=MEMORY, label="Reuse picture features",
                                 help="Compute a frozen vision tower's features once per image and reuse them every epoch (same results, faster).")

    valid_fraction: float = setting(0.1, group=PROGRESS, label="Held out for validation",
                                    help="Share of rows held out for validation when the dataset has no validation split.")
    steps_per_eval: int = setting(50, group=PROGRESS, label="Validate every (steps)",
                                  help="Compute the validation loss every this many steps.")
    val_batches: int | None = setting(None, group=PROGRESS, label="Validation batches", placeholder="whole split",
                                      help="Validation batches per evaluation. Empty: the whole split.")
    steps_per_report: int = setting(10, group=PROGRESS, label="Report every (steps)",
                                    help="Report training metrics every this many steps.")
    sample_count: int = setting(3, group=PROGRESS, label="Sample captions",
                                help="Validation items captioned at each evaluation, so you see them improve.")
    sample_max_tokens: int = setting(32, group=PROGRESS, label="Sample length (tokens)",
                                     help="Longest sample generation, in tokens.")
    save_every: int = setting(100, group=PROGRESS, label="Checkpoint every (steps)",
                              help="Write a resumable checkpoint every this many steps.")
    keep_checkpoints: int = setting(3, group=PROGRESS, label="Checkpoints kept",
                                    help="How many recent checkpoints to keep.")
    report_to: list[str] | None = setting(None, group=PROGRESS, label="Log to trackers",
                                          placeholder="off (tensorboard, wandb, mlflow)",
                                          help="Also log the run's metrics and settings to these trackers: any of tensorboard, wandb, mlflow (each needs its extra, e.g. pip install \"finetune-app[tensorboard]\"). Empty: off.")
    # evaluation during training (issue 19): scores of generations at each evaluation, best checkpoint by one
    eval_metrics: list[str] | None = setting(None, group=PROGRESS, label="Scores at each validation",
                                             placeholder=f"off ({', '.join(EVAL_METRICS[:4])}, ...)",
                                             help=f"At each validation, also generate answers for some validation rows and score them: any of {', '.join(EVAL_METRICS)} (accuracy: over the labels found in the answers). Empty: off.")
    eval_samples: int = setting(16, group=PROGRESS, label="Rows scored",
                                help="Validation rows generated and scored at each validation (the first of the split), when scores are on.")
    best_by: str = setting("val_loss", group=PROGRESS, label="Best checkpoint by", choices=("val_loss",) + EVAL_METRICS,
                           help="How the best checkpoint (kept and marked in the run folder) is chosen: the lowest validation loss, or the highest of a score in 'Scores at each validation'.")

    serve_target: str = setting("auto", group=DATA, label="Where it will run", choices=SERVE_TARGET_CHOICES,
                                help="Where the model will run: the prompt layout and image processing are trained "
                                     "exactly as that runtime does them. auto: mlx-vlm for vision-language models, "
                                     "mlx-lm for text; mlx-swift: Apple's FastVLM app.")
    completion_only: bool = setting(True, group=DATA, label="Learn only the answers",
                                    help="Learn only the answers, not the prompts or image tokens.")
    data_format: str | None = setting(None, group=DATA, label="Dataset format", choices=data_format_choices,
                                      help="Dataset format (detected automatically when empty).")
    strict_data: bool = setting(False, group=DATA, label="Refuse rows with problems",
                                help="Refuse to start when any row has a problem (default: skip bad rows).")
    seed: int = setting(0, group=DATA, label="Random seed", help="Random seed: the same seed gives the same run.")

    # ---- GRPO (objective "grpo") ----
    grpo_group_size: int = setting(4, group=GRPO, label="Answers per prompt (G)",
                                   help="GRPO: answers sampled per prompt; each is scored against the group's mean.")
    grpo_beta: float = setting(0.04, group=GRPO, label="Stay close to the base (beta)",
                               help="GRPO: weight of the KL penalty to the base model (adapter off); 0: none.")
    grpo_clip: float = setting(0.2, group=GRPO, label="Ratio clip (epsilon)",
                               help="GRPO: the probability ratio to the sampling policy is clipped to 1 +/- this.")
    grpo_max_tokens: int = setting(64, group=GRPO, label="Answer length (tokens)",
                                   help="GRPO: longest sampled answer, in tokens.")
    grpo_temperature: float = setting(1.0, group=GRPO, label="Sampling temperature",
                                      help="GRPO: temperature of the sampled answers (above 0: varied answers to compare).")
    grpo_rewards: str = setting("match", group=GRPO, label="Rewards", placeholder="match:1.0,json:0.5,length:20-80:0.2",
                                help="GRPO: weighted sum of rewards, e.g. match:1.0,json:0.5,length:20-80:0.2. Terms: "
                                     "match, normalized (match ignoring case and punctuation), regex:PATTERN, "
                                     "json[:schema.json], length:MIN-MAX (characters).")
    # ---- end GRPO ------------------------------------------------------------------------------

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
        optional = {s.name for s in settings() if s.optional}
        return cls(**{k: None if k in optional and is_unset(v) else v for k, v in data.items()})

    @staticmethod
    def help(name: str) -> str:
        return setting_of(name).help

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
        check("grad_clip", self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip > 0), "must be a positive number, or \"none\" (or empty) for no cap")
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
        check("objective", self.objective in OBJECTIVES, f"must be one of {', '.join(OBJECTIVES)}")
        check("beta", is_num(self.beta) and self.beta > 0, "must be a positive number (typical: 0.1)")
        check("objective", not (self.objective in REFERENCE_OBJECTIVES and self.fine_tune_type == "full"),
              "needs an adapter (LoRA or DoRA): its reference model is the base with the adapter switched off")
        check("objective", not (self.objective in REFERENCE_OBJECTIVES and self.train_projector),
              "cannot train the projector: its reference model is the base with the adapter switched off, "
              "and a trained projector would move the reference too")
        check("report_to", self.report_to is None or (isinstance(self.report_to, list) and all(t in TRACKERS for t in self.report_to)),
              f"must be a list of trackers, any of {', '.join(TRACKERS)}")
        check("eval_metrics", self.eval_metrics is None or (isinstance(self.eval_metrics, list) and all(m in EVAL_METRICS for m in self.eval_metrics)),
              f"must be a list of scores, any of {', '.join(EVAL_METRICS)}")
        check("eval_samples", is_int(self.eval_samples) and self.eval_samples >= 1, "must be a whole number, 1 or more")
        check("best_by", self.best_by == "val_loss" or self.best_by in (self.eval_metrics or ()),
              f"must be val_loss or one of the scores in eval_metrics ({', '.join(self.eval_metrics or ()) or 'none chosen'})")
        # ---- GRPO ----
        check("grpo_group_size", is_int(self.grpo_group_size) and 2 <= self.grpo_group_size <= 256, "must be a whole number from 2 to 256 (answers are compared within a group)")
        check("grpo_beta", is_num(self.grpo_beta) and self.grpo_beta >= 0, "must be 0 or more")
        check("grpo_clip", is_num(self.grpo_clip) and 0 < self.grpo_clip < 1, "must be above 0 and below 1")
        check("grpo_max_tokens", is_int(self.grpo_max_tokens) and self.grpo_max_tokens >= 1, "must be a whole number, 1 or more")
        check("grpo_temperature", is_num(self.grpo_temperature) and 0 < self.grpo_temperature <= 10, "must be above 0 and at most 10")
        if self.objective == "grpo" and isinstance(self.grpo_rewards, str):
            from finetune_app.core import rewards

            try:
                rewards.parse(self.grpo_rewards, base_dir=rewards.data_dir(self.data))
            except ConfigError as exc:
                p["grpo_rewards"] = exc.problem.rstrip(".")
        check("grpo_rewards", isinstance(self.grpo_rewards, str), "must be a reward spec such as match:1.0")
        # ---- end GRPO ----
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
            if value is None and f.default is not None:  # e.g. grad_clip: None must not read back as the default
                lines.append(f'{f.name} = "none"')
            elif value is None:
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
# Supervised presets say objective="sft", so choosing one after a preference preset goes back to SFT.
# The preference and reward presets use the far smaller learning rates those objectives want with
# LoRA (TRL's and mlx-lm-lora's DPO/GRPO examples use 5e-6 to 5e-5): at SFT's 1e-3 the policy runs
# away from the reference within a few steps.
PRESETS: dict[str, dict] = {
    "quick test": dict(objective="sft", fine_tune_type="lora", lora_rank=8, lora_alpha=16.0, learning_rate=1e-3,
                       iters=50, epochs=None, batch_size=2, steps_per_eval=25, steps_per_report=5, save_every=25,
                       lr_schedule="constant", warmup_steps=0),
    "balanced": dict(objective="sft", fine_tune_type="lora", lora_rank=16, lora_alpha=16.0, learning_rate=1e-3,
                     iters=None, epochs=3.0, batch_size=4, steps_per_eval=50, steps_per_report=10, save_every=100,
                     lr_schedule="cosine", warmup_steps=0),
    "quality": dict(objective="sft", fine_tune_type="lora", lora_rank=32, lora_alpha=32.0, learning_rate=5e-4,
                    iters=None, epochs=5.0, batch_size=8, steps_per_eval=100, steps_per_report=10, save_every=200,
                    lr_schedule="cosine", warmup_steps=20),
    "preference": dict(objective="dpo", beta=0.1, fine_tune_type="lora", lora_rank=16, lora_alpha=16.0,
                       learning_rate=5e-5, iters=None, epochs=2.0, batch_size=4, steps_per_eval=50,
                       steps_per_report=10, save_every=100, lr_schedule="cosine", warmup_steps=10),
    "reward": dict(objective="grpo", grpo_group_size=4, grpo_beta=0.04, grpo_max_tokens=64, fine_tune_type="lora",
                   lora_rank=16, lora_alpha=16.0, learning_rate=2e-5, iters=None, epochs=1.0, batch_size=2,
                   steps_per_eval=50, steps_per_report=5, save_every=50, lr_schedule="constant", warmup_steps=0),
}
DEFAULT_PRESET = "balanced"


def apply_preset(config: TrainConfig, name: str) -> TrainConfig:
    try:
        return config.replace(**PRESETS[name])
    except KeyError:
        raise ConfigError(f"Unknown preset '{name}'.", f"Choose one of: {', '.join(PRESETS)}.") from None
