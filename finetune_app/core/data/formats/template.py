"""User templates: map any columns to prompt / answer / system / image with format strings.

Example: {"prompt": "Describe {label}", "answer": "{text}", "image": "photo"}. Columns are
checked when the dataset is opened, so a typo fails once with the column list, not per row.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from finetune_app.core.data.formats.common import (
    RowError,
    SourceCtx,
    attach_images,
    found,
    image_refs,
    sample_meta,
    take_markers,
    text_of,
)
from finetune_app.core.data.sample import Sample, Turn
from finetune_app.core.errors import DataError

TEXT_SLOTS = ("system", "prompt", "answer")
IMAGE_SLOTS = ("image", "images")
_COLUMN = re.compile(r"^\{(\w+)\}$")


class _Row(dict):
    def __missing__(self, key):
        raise RowError(key, f"column '{key}' is missing in this row.")


def _fields(fmt: str, slot: str, file: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None]
    except ValueError as exc:
        raise DataError(f"template '{slot}' is not a valid format string ({exc}).",
                        "Write columns as {column} and literal braces as {{ }}.",
                        file=file, field=f"template.{slot}") from None
    out = []
    for name in names:
        if not name or name.isdigit():
            raise DataError(f"template '{slot}' has a positional field '{{{name}}}'.",
                            "Name a column inside the braces, e.g. {caption}.", file=file,
                            field=f"template.{slot}")
        out.append(re.split(r"[.\[]", name, maxsplit=1)[0])
    return out


def configure(keys: set[str], *, file: str, template: dict):
    if not isinstance(template, dict) or not template:
        raise DataError("the template must be a JSON object such as "
                        "{\"prompt\": \"Describe {label}\", \"answer\": \"{text}\"}.",
                        file=file, field="template")
    unknown = sorted(set(template) - set(TEXT_SLOTS) - set(IMAGE_SLOTS))
    if unknown:
        raise DataError(f"template has unknown key(s) {', '.join(unknown)}.",
                        f"Use {', '.join(TEXT_SLOTS + IMAGE_SLOTS)}.", file=file, field="template")
    if not isinstance(template.get("answer"), str):
        raise DataError("the template has no 'answer'.", "Add e.g. \"answer\": \"{caption}\".",
                        file=file, field="template.answer")
    texts, referenced = {}, set()
    for slot in TEXT_SLOTS:
        fmt = template.get(slot)
        if fmt is None:
            continue
        if not isinstance(fmt, str):
            raise DataError(f"template '{slot}' must be text.", file=file, field=f"template.{slot}")
        texts[slot] = fmt
        referenced.update(_fields(fmt, slot, file))
    image_slot = next((s for s in IMAGE_SLOTS if template.get(s)), None)
    image_col = image_fmt = None
    if image_slot:
        spec = template[image_slot]
        if not isinstance(spec, str):
            raise DataError("template 'image' must be a column name or a format string.",
                            file=file, field=f"template.{image_slot}")
        m = _COLUMN.match(spec)
        if spec in keys or m:
            image_col = spec if spec in keys else m.group(1)
            referenced.add(image_col)
        else:
            image_fmt = spec
            referenced.update(_fields(spec, image_slot, file))
    answer_cols = set(_fields(texts["answer"], "answer", file))
    absent = sorted(c for c in referenced if keys and c not in keys)
    if absent:
        raise DataError(f"the template uses column '{absent[0]}', which {Path(file).name} "
                        "does not have "
                        f"(found: {found(keys)}).", "Fix the column name in the template.",
                        file=file, field=absent[0])

    def parse(row: dict, ctx: SourceCtx, line: int | None):
        values = _Row(row)
        for col in referenced:
            if values[col] is None:
                raise RowError(col, f"column '{col}' is null in this row.")
        for col in answer_cols:  # a whole number may fill an answer; true, NaN or {...} may not
            if type(values[col]) is not int:
                text_of(values[col], col)
        out = {}
        for slot, fmt in texts.items():
            try:
                out[slot] = fmt.format_map(values)
            except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
                raise RowError(slot, f"template '{slot}' cannot be filled from this row ({exc}).") from None
        if not out["answer"].strip():
            raise RowError("answer", "the templated answer is empty.")
        images = []
        if image_col:
            images = image_refs(row[image_col], ctx, image_col)
        elif image_fmt:
            images = image_refs(image_fmt.format_map(values), ctx, image_slot)
        turns = [Turn("system", out["system"])] if out.get("system", "").strip() else []
        prompt, markers = take_markers(out.get("prompt", ""))
        turns += [Turn("user", prompt, markers), Turn("assistant", out["answer"])]
        field = image_col or image_slot or "image"
        turns = attach_images(turns, markers, len(images), field)
        return (Sample(tuple(turns), tuple(images), ctx.file, line, ctx.split,
                       sample_meta(field if images else None)), [])

    return parse
