"""Containers of rows: files and HF datasets. Each indexes its rows cheaply and reads one on demand.

A source never interprets a row (that is `formats/`); it only yields dicts, or a `RowError` for a
row that is not a dict at all (malformed JSON, wrong field count).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from finetune_app.core.data.formats.common import RowError, SourceCtx
from finetune_app.core.errors import Problem

Warnings = list  # [(field, message)]


class Source:
    """Base: subclasses fill `ctx`, `problems`, and implement index/read (read_many optional)."""

    ctx: SourceCtx
    kind = "?"

    def __init__(self, ctx: SourceCtx):
        self.ctx = ctx
        self.problems: list[Problem] = []
        self._rows: list[tuple] | None = None

    @property
    def name(self) -> str:
        return self.ctx.file

    def rows(self) -> list[tuple]:
        """[(line, key, size, split)] for every row, indexed once."""
        if self._rows is None:
            self._rows = self._index()
        return self._rows

    def _index(self) -> list[tuple]:
        raise NotImplementedError

    def peek_keys(self, limit: int = 50) -> tuple[set[str], list[str]]:
        """Keys of the first `limit` rows that read (for format detection), and why rows failed.

        Unreadable rows are passed over, not counted: sixty broken lines at the top of a file
        must not hide the good rows after them (validation reports each broken one)."""
        keys, errors, good = set(), [], 0
        rows = self.rows()
        reads = self.read_many((key, size) for _, key, size, _ in rows)
        for (line, *_), got in zip(rows, reads):
            if isinstance(got, RowError):
                errors.append(f"line {line}: {got.message}" if line else got.message)
                continue
            keys.update(got[0])
            good += 1
            if good >= limit:
                break
        reads.close()
        return keys, errors

    def columns(self) -> set[str] | None:
        """Column names when the container declares them (CSV header, HF features)."""
        return None

    def read(self, key: int, size: int) -> tuple[dict, Warnings]:
        raise NotImplementedError

    def read_many(self, refs: Iterable[tuple[int, int]]
                  ) -> Iterator[tuple[dict, Warnings] | RowError]:
        for key, size in refs:
            try:
                yield self.read(key, size)
            except RowError as err:
                yield err
