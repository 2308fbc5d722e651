"""CSV / TSV files with a header row (captions.csv, metadata.csv, any column layout).

Spreadsheets save in Windows-1252, with semicolons in some locales and CRLF line ends; we read
all of those. A `split` column (train / valid) gives the dataset its own validation split.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

from finetune_app.core.data.formats.common import RowError, SourceCtx
from finetune_app.core.data.sources import Source
from finetune_app.core.data.textio import decode_text
from finetune_app.core.errors import DataError, Problem

_LINE_END = re.compile(r"\r\n|\r|\n")
SPLIT_NAMES = {"train": "train", "training": "train", "": None,
               "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid",
               "eval": "valid", "test": "test"}


def normalise_split(value) -> str | None:
    """'validation' -> 'valid' and friends; unknown names come back unchanged (lower case)."""
    key = str(value).strip().lower() if value is not None else ""
    return SPLIT_NAMES.get(key, key)


class CsvSource(Source):
    kind = "csv"

    def __init__(self, path: Path, ctx: SourceCtx):
        super().__init__(ctx)
        self.path = path
        self.header: list[str] = []
        self._records: list[list[str]] = []

    def columns(self) -> set[str]:
        self.rows()
        return set(self.header)

    def _index(self) -> list[tuple]:
        text, self.problems = decode_text(self.path.read_bytes(), self.name)
        if not text.strip():
            return []
        first = text.split("\n", 1)[0]
        if self.path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first):
            delimiter = "\t"
        else:  # semicolons: spreadsheets in locales with a decimal comma
            delimiter = ";" if ";" in first and "," not in first else ","
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long answers exceed the 128 KiB default
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows, prev_end, split_col, skipped, prev_start = [], 0, None, {}, 0
        try:
            for record in reader:
                start, prev_end = prev_end + 1, reader.line_num
                prev_start = start
                if not record or all(not f.strip() for f in record):
                    continue
                if not self.header:
                    self._set_header(record, start)
                    split_col = self.header.index("split") if "split" in self.header else None
                    continue
                split = self.ctx.split
                if split_col is not None and split_col < len(record):
                    split = normalise_split(record[split_col]) or split
                    if split not in ("train", "valid"):
                        skipped[split] = skipped.get(split, 0) + 1
                        continue
                rows.append((start, len(self._records), 0, split))
                self._records.append(record)
        except csv.Error as exc:
            self.problems.append(Problem(self.name, reader.line_num, None,
                                         f"CSV cannot be read past this line ({exc}); the rows "
                                         "after it were skipped. Check quoting on this line.",
                                         "error"))
        else:
            self._check_last_quote(text, delimiter, prev_start)
        for name, count in skipped.items():
            self.problems.append(Problem(self.name, None, "split",
                                         f"{count} row(s) with split '{name}' are not used (only "
                                         "train and valid are).", "warning"))
        return rows

    def _check_last_quote(self, text: str, delimiter: str, start: int) -> None:
        """A quote that never closes swallows every line after it into one field, silently (the
        csv module is lenient at the end of the data): re-read the last record strictly."""
        if not start or '"' not in text:
            return
        tail = _LINE_END.split(text, start - 1)[-1] if start > 1 else text
        try:
            for _ in csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True):
                pass
        except csv.Error:
            record = next(csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter), [])
            opened = start + sum(len(_LINE_END.findall(f)) for f in record[:-1])
            raise DataError(f"a quote opened at line {opened} never closes, so every line after it "
                            "would be read as one field.", "Close the quote, or write a quote "
                            "inside a field as two (\"\") and quote the whole field.",
                            file=self.name, line=opened) from None

    def _set_header(self, record: list[str], line: int) -> None:
        header = [h.strip() for h in record]
        for i, h in enumerate(header):
            if not h:
                header[i] = f"column{i + 1}"
                self.problems.append(Problem(self.name, line, header[i],
                                             f"column {i + 1} has no name in the header.",
                                             "warning"))
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            self.problems.append(Problem(self.name, line, dupes[0],
                                         f"the header repeats column(s) {', '.join(dupes)}; the "
                                         "last one wins. Rename them.", "warning"))
        self.header = header

    def read(self, key: int, size: int) -> tuple[dict, list]:
        record = self._records[key]
        if len(record) != len(self.header):
            raise RowError(None, f"the row has {len(record)} field(s) but the header has "
                           f"{len(self.header)} ({', '.join(self.header)}). Quote fields that "
                           "contain the delimiter.")
        return dict(zip(self.header, record)), []
