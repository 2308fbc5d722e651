"""Captioning rows: an image (or several) and its caption.

Covers `captions.csv` (filename, caption), Hugging Face image folders (metadata with `file_name`
and a text column), JSONL `{"image", "caption"}` and HF datasets with `image` + `text` columns.
The user turn is an optional `prompt` column, else a fixed instruction.
"""

from __future__ import annotations

from pathlib import Path

from finetune_app.core.data.formats.common import (
    RowError,
    SourceCtx,
    first_key,
    found,
    image_refs,
    sample_meta,
    text_of,
)
from finetune_app.core.data.sample import Sample, Turn
from finetune_app.core.errors import DataError

IMAGE_KEYS = ("image", "images", "file_name", "filename", "file", "image_path", "img", "path")
TEXT_KEYS = ("caption", "text", "captions", "description", "answer", "label")
OTHER_KEYS = {"prompt", "split", "id", "width", "height"}
DEFAULT_PROMPT = "Describe this image."


def configure(keys: set[str], *, file: str):
    image_key = first_key(keys, IMAGE_KEYS)
    if image_key is None:
        raise DataError(f"{Path(file).name} has no image column (found: {found(keys)}).",
                        "Name the column 'image' (or 'file_name'), or pass --format / a template "
                        "that maps your columns.", file=file, field="image")
    text_key = first_key(keys, TEXT_KEYS)
    if text_key is None:
        rest = sorted(k for k in keys if k != image_key and k not in OTHER_KEYS)
        if len(rest) != 1:
            raise DataError(f"{Path(file).name} has no 'caption' column (found: {found(keys)}).",
                            "Rename the caption column to 'caption', or pass --format / a template "
                            "such as {\"answer\": \"{your_column}\"}.", file=file, field="caption")
        text_key = rest[0]
    prompt_key = "prompt" if "prompt" in keys else None

    def parse(row: dict, ctx: SourceCtx, line: int | None):
        if image_key not in row:
            raise RowError(image_key, f"'{image_key}' is missing in this row.")
        images = image_refs(row[image_key], ctx, image_key)
        if not images:
            raise RowError(image_key, f"'{image_key}' is empty; a caption row needs an image.")
        caption = row.get(text_key)
        if isinstance(caption, list):  # COCO-style list of captions: the first one
            caption = next((c for c in caption if isinstance(c, str) and c.strip()), None)
        caption = text_of(caption, text_key).strip()
        if not caption:
            raise RowError(text_key, f"the caption ('{text_key}') is empty or missing.")
        prompt = text_of(row.get(prompt_key), prompt_key).strip() if prompt_key else ""
        turns = (Turn("user", prompt or DEFAULT_PROMPT, len(images)), Turn("assistant", caption))
        return Sample(turns, tuple(images), ctx.file, line, ctx.split, sample_meta(image_key)), []

    return parse
