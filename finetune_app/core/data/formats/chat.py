"""Conversation rows: ShareGPT / LLaVA (`conversations` of from/value) and OpenAI-style `messages`.

Images come from an `images`/`image` field and are placed by `<image>` markers or
`{"type": "image"}` content parts; with no placeholder they go to the first user turn, which is
what mlx-vlm's `--data DIR` layout does.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune_app.core.data.formats.common import (
    IMAGE_MARKER,
    ROLE_NAMES,
    RowError,
    SourceCtx,
    attach_images,
    check_answer,
    first_key,
    found,
    image_ref,
    image_refs,
    json_kind,
    role_of,
    row_image_key,
    sample_meta,
    take_markers,
    text_of,
)
from finetune_app.core.data.sample import Sample, Turn
from finetune_app.core.errors import DataError

IMAGE_KEYS = ("images", "image")
IMAGE_PART_TYPES = ("image", "image_url", "input_image")


def _as_list(value, key: str) -> list:
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(key, f"'{key}' is text, not a list of turns.") from None
    if value is None:
        raise RowError(key, f"'{key}' is missing or null.")
    if not isinstance(value, list):
        raise RowError(key, f"'{key}' must be a list of turns, got {type(value).__name__}.")
    return value


def _system_turn(row: dict) -> list[Turn]:
    system = row.get("system")
    text = text_of(system, "system") if system is not None else ""
    return [Turn("system", text)] if text.strip() else []


def configure_sharegpt(keys: set[str], *, file: str):
    conv_key = first_key(keys, ("conversations", "conversation"))
    if conv_key is None:
        raise DataError(f"{Path(file).name} has no 'conversations' field (found: {found(keys)}).",
                        "ShareGPT rows need 'conversations': "
                        "[{\"from\": \"human\", \"value\": ...}, "
                        "...]. Pass the right --format for this file.", file=file,
                        field="conversations")
    def parse(row: dict, ctx: SourceCtx, line: int | None):
        image_key = row_image_key(row, IMAGE_KEYS)
        conv = _as_list(row.get(conv_key), conv_key)
        turns = _system_turn(row)
        markers = 0
        for n, msg in enumerate(conv, 1):
            if type(msg) is not dict:
                raise RowError(conv_key, f"turn {n} is not an object with 'from' and 'value'.")
            speaker = msg["from"] if "from" in msg else msg.get("role")
            role = ROLE_NAMES.get(speaker) if type(speaker) is str else None
            if role is None:
                role = role_of(speaker, conv_key, n)
            value = msg["value"] if "value" in msg else msg.get("content")
            if type(value) is not str:
                value = text_of(value, conv_key)
            if IMAGE_MARKER in value:
                value, k = take_markers(value)
                markers += k
            else:
                k = 0
            turns.append(Turn(role, value, k))
        images = image_refs(row.get(image_key), ctx, image_key) if image_key else []
        turns = attach_images(turns, markers, len(images), image_key or "image")
        warnings = check_answer(turns, conv_key)
        return (Sample(tuple(turns), tuple(images), ctx.file, line, ctx.split,
                       sample_meta(image_key)), warnings)

    return parse


def configure_messages(keys: set[str], *, file: str):
    if "messages" not in keys:
        raise DataError(f"{Path(file).name} has no 'messages' field (found: {found(keys)}).",
                        "Chat rows need 'messages': [{\"role\": \"user\", \"content\": ...}, ...]. "
                        "Pass the right --format for this file.", file=file, field="messages")
    def parse(row: dict, ctx: SourceCtx, line: int | None):
        image_key = row_image_key(row, IMAGE_KEYS)
        msgs = row.get("messages")
        if type(msgs) is not list:
            msgs = _as_list(msgs, "messages")
        turns = _system_turn(row) if "system" in row else []
        slots: list = []  # per placeholder: an inline ImageRef, or None (take from row images)
        for n, msg in enumerate(msgs, 1):
            if type(msg) is not dict:
                raise RowError("messages", f"turn {n} is not an object with 'role' and 'content'.")
            name = msg.get("role")
            role = ROLE_NAMES.get(name) if type(name) is str else None
            if role is None:
                role = role_of(name, "messages", n)
            content = msg.get("content")
            if type(content) is str and IMAGE_MARKER not in content:
                turns.append(Turn(role, content, 0))
            else:
                text, k, parts = _content(content, n, ctx, slots)
                turns.append(Turn(role, text, k, parts))
        row_images = image_refs(row.get(image_key), ctx, image_key) if image_key else []
        field = image_key or "messages"
        if not slots:
            turns = attach_images(turns, 0, len(row_images), field)
            images = row_images
        else:
            wanted = sum(1 for s in slots if s is None)
            if wanted != len(row_images):
                raise RowError(field, f"the messages have {wanted} image placeholder(s) without "
                               f"an inline image but the row lists {len(row_images)} image(s). "
                               "Make them match.")
            pool = iter(row_images)
            images = [s if s is not None else next(pool) for s in slots]
        warnings = check_answer(turns, "messages")
        return (Sample(tuple(turns), tuple(images), ctx.file, line, ctx.split,
                       sample_meta(field if images else None)), warnings)

    return parse


def _content(content, n: int, ctx: SourceCtx, slots: list) -> tuple[str, int, tuple]:
    """Message content (text, one part, or a list of parts) -> (text, images in this turn, parts).

    `parts` is the content in order (text str, image None) when a list places images explicitly;
    `<image>` markers in a string are not a placement (LLaVA data writes them first by habit)."""
    if content is None:
        return "", 0, ()
    if isinstance(content, str):
        text, k = take_markers(content)
        slots.extend([None] * k)
        return text, k, ()
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise RowError("messages", f"turn {n}: content must be text or a list of parts, "
                       f"got {json_kind(content)}.")
    texts, k, parts = [], 0, []
    for part in content:
        if type(part) is dict:
            kind = part.get("type")
            if kind == "text" and type(part.get("text")) is str:
                texts.append(part["text"])
                parts.append(part["text"])
                continue
            if kind == "image" and part.get("image") is None and len(part) <= 2:
                k += 1
                slots.append(None)
                parts.append(None)
                continue
        if isinstance(part, str):
            texts.append(part)
            parts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowError("messages", f"turn {n}: a content part is {type(part).__name__}, "
                           "not an object like {\"type\": \"text\", \"text\": ...}.")
        kind = part.get("type") or ("text" if "text" in part else None)
        if kind == "text":
            texts.append(text_of(part.get("text"), "messages"))
            parts.append(texts[-1])
        elif kind in IMAGE_PART_TYPES:
            k += 1
            parts.append(None)
            value = next((part[key] for key in ("image", "image_url", "url", "path")
                          if part.get(key) is not None), None)
            slots.append(image_ref(value, ctx, "messages") if value is not None else None)
        else:
            raise RowError("messages", f"turn {n}: content part type {kind!r} is not supported "
                           "(only 'text' and 'image').")
    parts = tuple(parts) if k else ()
    if len(texts) == 1:
        return texts[0], k, parts
    return "\n".join(t for t in texts if t), k, parts
