"""From a dataset path to tokenised train/validation examples, with the validation policy applied.

Rows that cannot train (missing image, no answer, too long, a processor that chokes on one
image, ...) are skipped, each with a located problem, or refused in strict mode: a row never
aborts a run. The split is the dataset's own when it has one, else a deterministic
held-out fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from finetune_app.core.config import TrainConfig
from finetune_app.core.data.encode_pool import encoded_rows
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

    @property
    def skipped_rows(self) -> list[Problem]:
        """One located problem per row left out (file, line, field, why)."""
        return [p for p in self.problems if p.severity == "error"]

    def skip_notice(self, shown: int = 5) -> str:
        """What the run tells the user about the rows it left out (the first few, located)."""
        rows = self.skipped_rows
        listed = "; ".join(where(p) + f": {p.message.rstrip('.')}" for p in rows[:shown])
        more = f"; and {len(rows) - shown} more" if len(rows) > shown else ""
        text = (f"{self.skipped} of {self.rows_found} rows were skipped because of problems: "
                f"{listed}{more}.")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")  # printable, always


def where(p: Problem) -> str:
    return p.file + (f" line {p.line}" if p.line is not None else "") + \
        (f" [{p.field}]" if p.field else "")


def _row_problem(sample, i: int, dataset, exc: BaseException) -> Problem:
    """Any failure while preparing one row -> a located problem for that row (never a crash)."""
    ref = dataset.rows[i]
    file = getattr(sample, "source", None) or dataset.sources[ref.source].name
    line = getattr(sample, "line", None) if sample is not None else ref.line
    if isinstance(exc, FinetuneError):
        other = exc.file and str(exc.file) != file  # an image's name, say
        return Problem(file=file, line=line if exc.line is None or other else exc.line,
                       field=exc.field, message=(f"{exc.file}: " if other else "") + exc.problem)
    if isinstance(exc, MemoryError):
        why = "it needs more memory than is available"
    else:
        why = f"{type(exc).__name__}: {str(exc)[:300]}"
    return Problem(file=file, line=line, field=None,
                   message=f"this row could not be prepared for training ({why}); it was skipped. "
                   "Check the row, or run `finetune-app data check` on the dataset.")


def prepare_examples(cfg: TrainConfig, base, encoder: Encoder, *,
                     progress: Callable[[str, int, int], None] | None = None,
                     on_example: Callable[[Example], None] | None = None,
                     workers: int | None = None) -> Prepared:
    """`on_example` sees each usable example first (the vision cache swaps pixels for features).
    Rows are encoded on `workers` threads (default: the CPU's cores, at most 8) and taken in
    order, so the result, the problems and their order are the sequential run's.

    A row never aborts the run: whatever fails for one row (image decode, chat template,
    tokenising, the vision cache) skips that row with a located problem. Only when no training
    row remains is it an error."""
    from finetune_app.core.data import open_dataset, split, validate
    from finetune_app.core.data.validation import text_limit

    dataset = open_dataset(cfg.data, format=cfg.data_format)
    n = len(dataset)
    if n == 0:
        raise DataError(f"The dataset '{cfg.data}' has no rows.", "Check that the file is not empty and that its format is one Finetune reads (see `finetune-app data check`).", file=cfg.data)
    # Row checks without decoding images (encoding below decodes each image once and reports
    # failures); the text bound is data check's, so both agree on which rows are usable.
    report = validate(dataset, check_images=False, max_chars=text_limit(cfg.max_length),
                      progress=(lambda d, t: progress("checking rows", d, t)) if progress else None)
    # a text model: rows with images are skipped one by one (the encoder refuses them), unless
    # every row has images, which is the wrong model rather than a few odd rows
    if base.kind == "text" and report.rows_usable and report.rows_with_images == report.rows_usable:
        raise DataError(f"The dataset '{cfg.data}' has images, but {base.family} reads text only.",
                        "Choose a vision-language base model (FastVLM, Qwen2-VL, ...) or a text-only dataset.", file=cfg.data)
    problems: list[Problem] = list(report.problems)
    train_idx, valid_idx = split(report, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    order = [(i, "train") for i in train_idx] + [(i, "valid") for i in valid_idx]
    train, valid, val_samples = [], [], []
    image_bytes = 0
    # (#16 vlmwarm) where the family's cache needs each picture's pixels once, pictures are counted
    # from their headers, not decoded: they are read ahead of their first batch (training/reread.py)
    rows = encoded_rows(dataset, encoder.encode_sized, [i for i, _ in order], workers=workers)
    for k, ((i, part), (sample, ex, failure)) in enumerate(zip(order, rows)):
        if progress:
            progress("tokenising", k, len(order))
        try:
            if failure is not None:
                raise failure
            if ex.model_length > cfg.max_length:
                problems.append(Problem(file=sample.source or str(cfg.data), line=sample.line, field="length",
                                        message=f"sequence of {ex.model_length} tokens is longer than max_length {cfg.max_length}"))
                continue
            if ex.n_targets == 0 or not getattr(ex, "has_targets", True):  # (a pair: both answers)
                problems.append(Problem(file=sample.source or str(cfg.data), line=sample.line, field="answer",
                                        message="the answer produced no tokens to learn"))
                continue
            if on_example:  # (on this thread: the family's MLX work stays on the training thread)
                for seq in ex.parts:  # (a preference pair: both answers)
                    on_example(seq)
        except Exception as exc:  # noqa: BLE001 - one row's failure, whatever it is, skips that row
            problems.append(_row_problem(sample, i, dataset, exc))
            continue
        image_bytes += sum(v.nbytes for seq in ex.parts for v in seq.images.values())
        if image_bytes > IMAGE_BUDGET_BYTES:  # keep ids only; images are re-read per batch
            for seq in ex.parts:
                seq.images = {}
            ex.lazy_images = True
        if part == "train":
            train.append(ex)
        else:
            valid.append(ex)
            val_samples.append(sample)
    if progress:
        progress("tokenising", len(order), len(order))
    errors = [p for p in problems if p.severity == "error"]
    if cfg.strict_data and errors:
        first = "; ".join(f"{where(p)}: {p.message}" for p in errors[:3])
        raise DataError(f"{len(errors)} row(s) have problems (strict mode): {first}{' …' if len(errors) > 3 else ''}.",
                        "Fix these rows, or turn off strict mode to skip them.", file=cfg.data)
    if not train:
        raise _nothing_to_train(cfg, n, valid, errors)
    return Prepared(train=train, valid=valid, samples=val_samples, problems=problems, rows_found=n, dataset=dataset)


def _nothing_to_train(cfg: TrainConfig, n: int, valid: list, errors: list[Problem]) -> DataError:
    """Why no training row remains: every row skipped, or the usable ones all in validation."""
    if valid:
        return DataError(f"No training rows in '{cfg.data}': {n} found, and the {len(valid)} usable "
                         "one(s) all went to validation, none to training"
                         + (f"; {len(errors)} skipped, first {where(errors[0])}: {errors[0].message}"
                            if errors else "") + ".",
                         "Add more rows, or mark some rows as training (a train split / train.jsonl).",
                         file=cfg.data)
    detail = f" First problem: {where(errors[0])}: {errors[0].message}" if errors else ""
    return DataError(f"No usable training rows in '{cfg.data}' ({n} found, all skipped).{detail}",
                     "Run `finetune-app data check` on the dataset to see every problem.", file=cfg.data)
