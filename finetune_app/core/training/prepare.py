"""From a dataset path to tokenised train/validation examples, with the validation policy applied.

Rows that cannot train (missing image, no answer, too long, ...) are skipped and counted, or
refused in strict mode. The split is the dataset's own when it has one, else a deterministic
held-out fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from finetune_app.core.config import TrainConfig
from finetune_app.core.data.tokenize import Encoder, Example
from finetune_app.core.errors import DataError, FinetuneError, Problem


IMAGE_BUDGET_BYTES = 2 * 1024**3  # preprocessed image tensors kept in memory across epochs


@dataclass
class Prepared:
    train: list[Example]
    valid: list[Example]
    samples: list  # Sample records of the validation split (for generations), aligned with `valid`
    problems: list[Problem] = field(default_factory=list)
    rows_found: int = 0
    dataset: object = None  # to re-read images of examples kept without them (memory budget)

    @property
    def skipped(self) -> int:
        return self.rows_found - len(self.train) - len(self.valid)


def prepare_examples(cfg: TrainConfig, base, encoder: Encoder, *,
                     progress: Callable[[str, int, int], None] | None = None,
                     on_example: Callable[[Example], None] | None = None) -> Prepared:
    """`on_example` sees each usable example first (the vision cache swaps pixels for features)."""
    from finetune_app.core.data import open_dataset, split, validate

    dataset = open_dataset(cfg.data, format=cfg.data_format)
    n = len(dataset)
    if n == 0:
        raise DataError(f"The dataset '{cfg.data}' has no rows.", "Check that the file is not empty and that its format is one Finetune reads (see `finetune-app data check`).", file=cfg.data)
    # Row checks without decoding images (encoding below decodes each image once and reports failures).
    report = validate(dataset, check_images=False, progress=(lambda d, t: progress("checking rows", d, t)) if progress else None)
    if report.has_images and base.kind == "text":
        raise DataError(f"The dataset '{cfg.data}' has images, but {base.family} reads text only.",
                        "Choose a vision-language base model (FastVLM, Qwen2-VL, ...) or a text-only dataset.", file=cfg.data)
    problems: list[Problem] = list(report.problems)
    train_idx, valid_idx = split(report, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    order = [(i, "train") for i in train_idx] + [(i, "valid") for i in valid_idx]
    train, valid, val_samples = [], [], []
    image_bytes = 0
    for k, (i, part) in enumerate(order):
        if progress:
            progress("tokenising", k, len(order))
        try:
            sample = dataset.sample(i)
            ex = encoder.encode(sample, index=i)
        except FinetuneError as err:
            problems.append(Problem(file=err.file or str(cfg.data), line=err.line, field=err.field, message=err.problem))
            continue
        if ex.model_length > cfg.max_length:
            problems.append(Problem(file=sample.source or str(cfg.data), line=sample.line, field="length",
                                    message=f"sequence of {ex.model_length} tokens is longer than max_length {cfg.max_length}"))
            continue
        if ex.n_targets == 0:
            problems.append(Problem(file=sample.source or str(cfg.data), line=sample.line, field="answer",
                                    message="the answer produced no tokens to learn"))
            continue
        if on_example:
            on_example(ex)
        image_bytes += sum(v.nbytes for v in ex.images.values())
        if image_bytes > IMAGE_BUDGET_BYTES:  # keep ids only; images are re-read per batch
            ex.images, ex.lazy_images = {}, True
        if part == "train":
            train.append(ex)
        else:
            valid.append(ex)
            val_samples.append(sample)
    if progress:
        progress("tokenising", len(order), len(order))
    errors = [p for p in problems if p.severity == "error"]
    if cfg.strict_data and errors:
        first = "; ".join(f"{p.file}{f' line {p.line}' if p.line else ''}{f' ({p.field})' if p.field else ''}: {p.message}" for p in errors[:3])
        raise DataError(f"{len(errors)} row(s) have problems (strict mode): {first}{' …' if len(errors) > 3 else ''}.",
                        "Fix these rows, or turn off strict mode to skip them.", file=cfg.data)
    if not train:
        detail = f" First problem: {errors[0].file} line {errors[0].line}: {errors[0].message}." if errors else ""
        raise DataError(f"No usable training rows in '{cfg.data}' ({n} found, all skipped).{detail}",
                        "Run `finetune-app data check` on the dataset to see every problem.", file=cfg.data)
    return Prepared(train=train, valid=valid, samples=val_samples, problems=problems, rows_found=n, dataset=dataset)
