"""JSON Lines and JSON array files.

JSONL is indexed by byte offset (one pass, no JSON parsing) so a 100k-row file opens in well under
a second and each row is parsed only when asked for (with orjson when it happens to be installed,
falling back to the standard library for anything it rejects, and for the error messages).
A JSON array must be parsed whole; we do it element by element to keep each element's line
number, and stop (with a report entry) where the array breaks instead of losing the rows before it.
"""

from __future__ import annotations

import json
import mmap
import re
from pathlib import Path
from typing import Iterator

from finetune_app.core.data.formats.common import RowError, SourceCtx
from finetune_app.core.data.sources import Source
from finetune_app.core.data.textio import (
    UTF8_BOM,
    UTF16_BOMS,
    decode_line,
    decode_text,
    normalise_bytes,
)
from finetune_app.core.errors import Problem

_WS = re.compile(r"[ \t\n\r]*")
_loads = json.JSONDecoder().decode
try:  # optional: 3-4x faster on valid lines; not a dependency
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = None
_JSON_FIX = "Each line must be one complete JSON object; fix or remove the line."
# A row is never parsed beyond this: a 200 MB caption must not cost gigabytes before it is refused
# (inline base64 images are the only legitimate reason for lines of megabytes).
MAX_LINE_BYTES = 32 * 2**20
_CHUNK = 1 << 20  # bytes read at a time while indexing


def _why(exc: json.JSONDecodeError) -> str:
    """'Expecting value at column 7' (the stdlib's messages, without its 'at: line 1 col...')."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _type_name(obj) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(obj), type(obj).__name__)


def too_long(size: int) -> RowError:
    return RowError(None, f"the line is {size / 2**20:,.0f} MiB, over the {MAX_LINE_BYTES // 2**20} "
                    "MiB a row may take; it was not read. Shorten it (or put large images in files "
                    "beside the dataset instead of inline data).")


def parse_line(raw: bytes) -> tuple[dict, list]:
    """One JSONL line -> dict (RowError otherwise), with an encoding warning if any."""
    if _fast_loads is not None:
        try:
            obj = _fast_loads(raw)
            if type(obj) is dict:
                return obj, []
        except Exception:
            pass  # the standard library below gives the precise error (or accepts NaN, big ints)
    warnings = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text, warning = decode_line(raw)
        warnings.append((None, warning))
    try:
        obj = _loads(text)
    except json.JSONDecodeError as exc:
        hint = " The line looks cut off." if exc.pos >= len(text.rstrip()) else ""
        raise RowError(None, f"not valid JSON ({_why(exc)}).{hint} {_JSON_FIX}") from None
    except RecursionError:
        raise RowError(None, "JSON nested too deeply to read.") from None
    except ValueError as exc:  # an integer of more than 4300 digits (Python's int-string limit)
        raise RowError(None, f"the line cannot be read as JSON ({exc}). {_JSON_FIX}") from None
    if not isinstance(obj, dict):
        raise RowError(None, f"the line is a JSON {_type_name(obj)}, not an object "
                       "({\"key\": value, ...}). Put each row in one JSON object.")
    return obj, warnings


class JsonlSource(Source):
    kind = "jsonl"

    def __init__(self, path: Path, ctx: SourceCtx):
        super().__init__(ctx)
        self.path = path
        self._mem: bytes | None = None  # only for files we had to re-encode (UTF-16)

    def _index(self) -> list[tuple]:
        """Line offsets in one pass, reading at most a chunk at a time: however long a line is,
        it is never held in memory whole."""
        rows, split = [], self.ctx.split
        with open(self.path, "rb") as fh:
            head = fh.read(4)
            if head.startswith(UTF16_BOMS):
                data, self.problems = normalise_bytes(head + fh.read(), self.name)
                self._mem = data
                pos = 0
                for n, line in enumerate(data.splitlines(keepends=True), 1):
                    if line.strip():
                        rows.append((n, pos, len(line), split))
                    pos += len(line)
                return rows
            fh.seek(len(UTF8_BOM) if head.startswith(UTF8_BOM) else 0)
            pos, n, readline = fh.tell(), 0, fh.readline
            while line := readline(_CHUNK):
                n += 1
                size, blank = len(line), not line.strip()
                while size % _CHUNK == 0 and not line.endswith(b"\n"):  # a long line: go on
                    line = readline(_CHUNK)
                    if not line:
                        break
                    size += len(line)
                    blank = blank and not line.strip()
                if not blank:
                    rows.append((n, pos, size, split))
                pos += size
        return rows

    def _raw(self, fh, key: int, size: int) -> bytes:
        if self._mem is not None:
            return self._mem[key:key + size]
        fh.seek(key)
        return fh.read(size)

    def read(self, key: int, size: int) -> tuple[dict, list]:
        if size > MAX_LINE_BYTES:
            raise too_long(size)
        with open(self.path, "rb") as fh:
            return parse_line(self._raw(fh, key, size))

    def read_many(self, refs) -> Iterator:
        """Sequential reads through one memory map: no seek + read syscalls per row."""
        with open(self.path, "rb") as fh:
            buf = self._mem
            if buf is None:
                try:
                    buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                except (ValueError, OSError):  # empty file, or a filesystem without mmap
                    buf = fh.read()
            try:
                for key, size in refs:
                    try:
                        if size > MAX_LINE_BYTES:
                            raise too_long(size)
                        yield parse_line(buf[key:key + size])
                    except RowError as err:
                        yield err
            finally:
                if isinstance(buf, mmap.mmap):
                    buf.close()


class JsonArraySource(Source):
    """A .json file: an array of rows, a {"data": [...]}-style wrapper, or one row object."""

    kind = "json"

    def __init__(self, path: Path, ctx: SourceCtx, text: str | None = None):
        super().__init__(ctx)
        self.path = path
        self._text = text
        self._items: list = []

    def _index(self) -> list[tuple]:
        text = self._text
        if text is None:
            text, self.problems = decode_text(self.path.read_bytes(), self.name)
        self._text = None
        start = _WS.match(text).end()
        if start < len(text) and text[start] == "{":
            return self._one_object(text)
        if start >= len(text) or text[start] != "[":
            self.problems.append(Problem(self.name, 1, None, "a .json dataset must be a JSON array "
                                         "of rows ([{...}, {...}]) or JSON Lines.", "error"))
            return []
        return self._array(text, start)

    def _array(self, text: str, start: int) -> list[tuple]:
        decoder = json.JSONDecoder()
        rows, line, last = [], 1, 0
        i = _WS.match(text, start + 1).end()
        if text.startswith("]", i):
            return rows
        while True:
            line += text.count("\n", last, i)
            last = i
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                self._broken(exc.lineno, _why(exc), len(rows))
                break
            except RecursionError:
                self._broken(line, "nested too deeply", len(rows))
                break
            except ValueError as exc:  # an integer of more than 4300 digits
                self._broken(line, str(exc).split(";")[0], len(rows))
                break
            rows.append((line, len(self._items), 0, self.ctx.split))
            self._items.append(obj)
            i = _WS.match(text, end).end()
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()
                continue
            if not text.startswith("]", i):
                self._broken(text.count("\n", 0, i) + 1, "expected ',' or ']'", len(rows))
            break
        return rows

    def _broken(self, line: int, why: str, n_read: int) -> None:
        self.problems.append(Problem(
            self.name, line, None,
            f"the JSON array is broken here ({why}); {n_read} row(s) before it were read, the rest "
            "were not. Fix the file (a missing comma, quote or bracket?).", "error"))

    def _one_object(self, text: str) -> list[tuple]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # one object per line: JSON Lines named .json
                raise IsJsonl() from None
            self.problems.append(Problem(self.name, exc.lineno, None,
                                         f"not valid JSON ({_why(exc)}).",
                                         "error"))
            return []
        except RecursionError:
            self.problems.append(Problem(self.name, None, None, "JSON nested too deeply.", "error"))
            return []
        except ValueError as exc:  # an integer of more than 4300 digits
            self.problems.append(Problem(self.name, None, None, f"the JSON cannot be read "
                                         f"({str(exc).split(';')[0]}).", "error"))
            return []
        lists = [k for k, v in obj.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1 and len(obj) <= 3:  # {"data": [...]}-style wrapper
            self._items = obj[lists[0]]
            return [(None, n, 0, self.ctx.split) for n in range(len(self._items))]
        self._items = [obj]
        return [(1, 0, 0, self.ctx.split)]

    def read(self, key: int, size: int) -> tuple[dict, list]:
        obj = self._items[key]
        if not isinstance(obj, dict):
            raise RowError(None, f"the array item is a JSON {_type_name(obj)}, not an object "
                           "({\"key\": value, ...}).")
        return obj, []


class IsJsonl(Exception):
    """Raised by JsonArraySource.rows() when the .json file is really JSON Lines."""
