"""`open_dataset`: any supported path -> a `Dataset` that indexes rows now and parses them later.

Opening reads only what is needed to find the rows (byte offsets for JSONL, the header and cells
for CSV, row counts for HF datasets) plus the first rows to detect the format. Rows become
`Sample`s one at a time (`Dataset.sample(i)`), so previews and validation never load images.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from finetune_app.core.data import formats
from finetune_app.core.data.formats.common import RowError, SourceCtx
from finetune_app.core.data.layout import find_layout
from finetune_app.core.data.sample import Sample
from finetune_app.core.data.sources import Source
from finetune_app.core.errors import DataError, Problem

POLICIES = ("skip", "strict")
_PEEK = 50


class RowRef(NamedTuple):
    """Where one row is: its source (index into Dataset.sources), line, and how to read it."""

    source: int
    line: int | None  # 1-based line for text files; row index for HF datasets
    key: int  # byte offset (JSONL), record/item index (CSV, JSON), row index (HF)
    size: int = 0  # byte length (JSONL)
    split: str | None = None  # "train" / "valid" when the dataset says so


class Dataset:
    """An opened dataset: a light row index plus the reader that turns a row into a Sample."""

    def __init__(self, *, path: Path | str, format: str, container: str, root: Path,
                 sources: list[Source], rows: list[RowRef], problems: list[Problem], parser,
                 template: dict | None = None):
        self.path = Path(path) if container != "hf-hub" else path
        self.format = format
        self.container = container
        self.root = root
        self.sources = sources
        self.rows = rows
        self.problems = problems
        self.template = template
        self._parser = parser
        self._ctx: dict[tuple, SourceCtx] = {}
        valid = [i for i, r in enumerate(rows) if r.split == "valid"]
        self.splits: dict[str, list[int]] = (
            {"train": [i for i, r in enumerate(rows) if r.split != "valid"], "valid": valid}
            if valid else {})
        self.has_images = self._guess_images()

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"<Dataset {self.format} ({self.container}) {self.path} rows={len(self.rows)}>"

    def describe(self) -> str:
        """One line for the GUI and CLI: what was recognised and how big it is."""
        what = formats.FORMATS.get(self.format, self.format).split(" (")[0]
        splits = (f", own split {len(self.splits['train'])} train / {len(self.splits['valid'])} "
                  "valid") if self.splits else ""
        return (f"{self.path}: {what} [{self.format}, {self.container}], "
                f"{len(self.rows):,} rows{splits}")

    # -- rows -> samples -------------------------------------------------------------------
    def sample(self, i: int) -> Sample:
        """Parse row i; a row that cannot be used raises DataError naming file, line and field."""
        sample, problems = self.parse_row(i)
        if sample is None:
            p = problems[0]
            raise DataError(p.message, file=p.file, line=p.line, field=p.field)
        return sample

    def parse_row(self, i: int) -> tuple[Sample | None, list[Problem]]:
        """Row i -> (Sample or None, problems); never raises for bad data."""
        ref = self.rows[i]
        src = self.sources[ref.source]
        try:
            got = src.read(ref.key, ref.size)
        except RowError as err:
            got = err
        return self._finish(ref, got)

    def iter_parsed(self, indices: Iterable[int] | None = None, *, light: bool = False
                    ) -> Iterator[tuple[int, Sample | None, list[Problem]]]:
        """(index, Sample or None, problems) for each row, reading each file sequentially.

        light=True (validation without image checks): image paths come back as ImageRef labels
        holding the absolute path, without Path objects; not for training."""
        indices = range(len(self.rows)) if indices is None else indices
        rows, parser = self.rows, self._parser
        for src_i, group in itertools.groupby(indices, key=lambda i: rows[i].source):
            group = list(group)
            refs = [rows[i] for i in group]
            src = self.sources[src_i]
            ctx = replace(src.ctx, light=True) if light else src.ctx
            reads = src.read_many((r.key, r.size) for r in refs)
            for i, ref, got in zip(group, refs, reads):
                if type(got) is tuple and not got[1] and ref.split == ctx.split:
                    try:  # the common case, inlined: a clean row from a plain source
                        sample, warnings = parser(got[0], ctx, ref.line)
                        if not warnings:
                            yield i, sample, []
                            continue
                    except Exception:
                        pass  # _finish below reports it properly
                yield (i, *self._finish(ref, got, light))

    def samples(self, indices: Iterable[int] | None = None) -> Iterator[Sample]:
        """Samples of the rows that parse, in order; the others are skipped (validate() reports
        them, and also checks images and lengths)."""
        for _, sample, _ in self.iter_parsed(indices):
            if sample is not None:
                yield sample

    def _finish(self, ref: RowRef, got, light: bool = False) -> tuple[Sample | None, list[Problem]]:
        src = self.sources[ref.source]
        if isinstance(got, RowError):
            return None, [self._problem(ref, src, got.field, got.message)]
        row, warnings = got
        try:
            sample, more = self._parser(row, self._ctx_for(ref, src, light), ref.line)
        except RowError as err:
            return None, [self._problem(ref, src, err.field, err.message)]
        except Exception as exc:  # a reader bug must not stop a whole validation pass
            return None, [self._problem(ref, src, None, f"this row could not be read "
                                        f"({type(exc).__name__}: {exc}).")]
        if warnings or more:
            return sample, [self._problem(ref, src, f, m, "warning") for f, m in warnings + more]
        return sample, []

    def _problem(self, ref: RowRef, src: Source, field, message, severity="error") -> Problem:
        if ref.line is None:
            message = f"item {ref.key + 1}: {message}"
        return Problem(src.name, ref.line, field, message, severity)

    def _ctx_for(self, ref: RowRef, src: Source, light: bool = False) -> SourceCtx:
        if ref.split == src.ctx.split and not light:
            return src.ctx
        key = (ref.source, ref.split, light)
        ctx = self._ctx.get(key)
        if ctx is None:
            ctx = self._ctx[key] = replace(src.ctx, split=ref.split, light=light)
        return ctx

    def _guess_images(self) -> bool:
        """From the first rows of each file; validate() settles it over every row."""
        if any(getattr(s, "image_columns", None) for s in self.sources):
            return True
        starts: dict[int, int] = {}
        for i, ref in enumerate(self.rows):
            starts.setdefault(ref.source, i)
            if len(starts) == len(self.sources):
                break
        for start in starts.values():
            for i in range(start, min(start + _PEEK, len(self.rows))):
                sample, _ = self.parse_row(i)
                if sample is not None and sample.images:
                    return True
        return False


def open_dataset(path: str | Path, *, format: str | None = None, template: dict | None = None,
                 policy: str = "skip") -> Dataset:
    """Open a dataset file, folder or hub id; detect its format unless `format` names one.

    `template` maps columns to prompt/answer/system/image (implies format "template").
    With policy "strict", problems found while indexing raise a DataError."""
    if policy not in POLICIES:
        raise DataError(f"unknown policy '{policy}'.", "Use 'skip' or 'strict'.", field="policy")
    if template is not None and format not in (None, "template"):
        raise DataError("a template and a format were both given.",
                        "Pass only the template (it defines the format).", field="format")
    fmt = "template" if template is not None else (formats.canonical(format) if format else None)
    layout = find_layout(path)
    problems = list(layout.problems)
    rows: list[RowRef] = []
    for s, src in enumerate(layout.sources):
        rows.extend(RowRef(s, line, key, size, split) for line, key, size, split in src.rows())
        problems.extend(src.problems)
    name = layout.sources[0].name if len(layout.sources) == 1 else str(path)
    if not rows:
        errors = [p for p in problems if p.severity == "error"]
        detail = f" ({errors[0].message})" if errors else ""
        raise DataError(f"no rows found in the dataset{detail}.",
                        "Add rows, or check that this is the right file.", file=name,
                        line=errors[0].line if errors else None)
    keys, failures = set(), []
    for src in layout.sources:
        columns = src.columns()
        if columns is not None:
            keys |= columns
        else:
            found, why = src.peek_keys(_PEEK)
            keys |= found
            failures += why
    if not keys:
        why = failures[0] if failures else "no keys"
        raise DataError(f"none of the first rows could be read ({why}).",
                        "Each row must be a JSON object such as "
                        "{\"image\": ..., \"caption\": ...}.",
                        file=name, line=rows[0].line)
    if fmt is None:
        # captions.csv is a caption file by definition: its errors should say so
        fmt = "caption" if layout.container == "captions-folder" else formats.detect(keys)
        if fmt is None and layout.container == "imagefolder":
            fmt = "caption"
        if fmt is None:
            raise DataError(f"cannot tell the dataset format from its columns "
                            f"({', '.join(sorted(keys))}).",
                            f"Pass --format ({', '.join(formats.FORMATS)}) or a template mapping "
                            "your columns, e.g. "
                            "{\"prompt\": \"{question}\", \"answer\": \"{reply}\"}.",
                            file=name)
    parser = formats.configure(fmt, keys, file=name, template_spec=template)
    if policy == "strict":
        _raise_if_errors(problems)
    return Dataset(path=path, format=fmt, container=layout.container, root=layout.root,
                   sources=layout.sources, rows=rows, problems=problems, parser=parser,
                   template=template)


def _raise_if_errors(problems: list[Problem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(f"{first.message}{more}", "Fix the file, or use the 'skip' policy to drop "
                        "bad rows.", file=first.file, line=first.line, field=first.field)
