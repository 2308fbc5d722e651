"""Shared pieces of the row readers: the row error, the per-file context, images, roles, text.

Every reader turns one row (a dict, whatever the file type) into a `Sample`, or raises `RowError`
naming the field, so the validation report can point at file, line and field.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from finetune_app.core.data.sample import ImageRef, Turn

IMAGE_MARKER = "<image>"
# a relative POSIX path with no '.'-led segment, '//', backslash, colon (URIs, drive letters) or
# surrounding blanks: safe to join to the base folder without normalising
# (NUL and lone surrogates, which no file name can hold, take the slow path and are refused there)
_SIMPLE = re.compile("(?!\\s)(?:[^/\\\\.:\x00\ud800-\udfff][^/\\\\:\x00\ud800-\udfff]*/)*"
                     "[^/\\\\.:\x00\ud800-\udfff][^/\\\\:\x00\ud800-\udfff]*(?<!\\s)\\Z") \
    if os.sep == "/" else re.compile(r"(?!)")
# os functions map \udc80-\udcff back to undecodable bytes (surrogateescape); other surrogates and
# NUL cannot be in any file name
_UNNAMEABLE = re.compile("[\x00\ud800-\udc7f\udd00-\udfff]")
_MARKER_RE = re.compile(r"[ \t]*<image>[ \t]*\n?")

# What datasets call their roles -> ours. Anything else is an "unknown role" row problem.
ROLE_NAMES = {
    "system": "system", "developer": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "chatgpt": "assistant",
}


class RowError(Exception):
    """One row cannot be used. `field` names the column/key; the message says how to fix it."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SourceCtx:
    """What a row reader needs to know about the file a row came from."""

    file: str  # shown in messages
    base: str  # folder relative image paths are resolved against (absolute, normalised)
    root: str  # images must stay inside this folder (absolute, normalised)
    split: str | None = None
    trust_image_dicts: bool = False  # HF Image features: their paths were written by `datasets`
    # validation without image checks: simple paths become ImageRef(label=absolute path) with no
    # Path object (Python 3.11's pathlib costs ~7 us per path, a third of a row's parse time)
    light: bool = False
    # captions.csv + images/: rows may say "cat.png" or "images/cat.png" for the same file
    base_alias: bool = False

    def __post_init__(self):
        # with base_alias, paths starting with the base folder's name take the slow path, which
        # resolves them against the root instead
        prefix = os.path.basename(self.base) + "/" if self.base_alias else "\0"
        object.__setattr__(self, "base_prefix", prefix)
        object.__setattr__(self, "base_slash", self.base.rstrip("/") + "/")

    def simple_path(self, value: str) -> ImageRef | None:
        """Fast path for most rows: a plain relative path below the base, nothing to normalise."""
        if _SIMPLE.match(value) and not value.startswith(self.base_prefix):
            if self.light:
                return ImageRef(None, None, self.base_slash + value)
            return ImageRef(Path(self.base_slash + value), None, value)
        return None


def norm_dir(path) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_image_path(value: str, ctx: SourceCtx, field_name: str) -> ImageRef:
    """A path as written in the dataset -> ImageRef; refuses paths that leave the dataset folder."""
    written = value
    ref = ctx.simple_path(value)
    if ref is not None:
        return ref
    if _UNNAMEABLE.search(value):
        raise RowError(field_name, f"image path {ascii(value)[:120]} contains a NUL byte or an "
                       "invalid character (a lone UTF-16 surrogate), so no file can have that "
                       "name. Fix the path or remove the row.")
    value = value.strip()
    if os.sep == "/" and "\\" in value:
        value = value.replace("\\", "/")  # datasets written on Windows
    if value.startswith("file://"):
        value = value[len("file://"):]
    if os.path.isabs(value):
        path = os.path.normpath(value)
    else:
        base = ctx.base
        if ctx.base_alias and value.split("/", 1)[0] == os.path.basename(base):
            base = os.path.dirname(base)
        path = os.path.normpath(os.path.join(base, value))
    if not is_inside(path, ctx.root):
        raise RowError(field_name, f"image path '{written}' points outside the dataset folder "
                       f"({ctx.root}). Move the image into the dataset folder and use a path "
                       "relative to the dataset file.")
    return ImageRef(path=Path(path), label=written)


def image_ref(value, ctx: SourceCtx, field_name: str) -> ImageRef:
    """One image value (path, data URI, HF {'bytes','path'} dict, OpenAI {'url'}) -> ImageRef."""
    if type(value) is str:
        ref = ctx.simple_path(value)
        if ref is not None:
            return ref
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, (bytes, bytearray)) and data:
            return ImageRef(data=bytes(data), label=str(path or f"{field_name} (embedded)"))
        url = value.get("url") or value.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if isinstance(url, str):
            return image_ref(url, ctx, field_name)
        if isinstance(path, str) and path:
            if ctx.trust_image_dicts and os.path.isabs(path):
                return ImageRef(path=Path(path), label=path)
            return resolve_image_path(path, ctx, field_name)
        raise RowError(field_name, "image entry has neither a path nor image bytes. Give a path "
                       "relative to the dataset file.")
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise RowError(field_name, "image bytes are empty.")
        return ImageRef(data=bytes(value), label=f"{field_name} (embedded)")
    if isinstance(value, str):
        if not value.strip():
            raise RowError(field_name, "image path is empty. Give a path relative to the "
                           "dataset file.")
        if value.startswith("data:"):
            return _data_uri(value, field_name)
        if value.startswith(("http://", "https://")):
            raise RowError(field_name, f"image is a web address ({value[:80]}); images must be "
                           "local files. Download them next to the dataset and use relative paths.")
        return resolve_image_path(value, ctx, field_name)
    if value is None:
        raise RowError(field_name, "image is null. Give a path relative to the dataset file, "
                       "or remove the row.")
    raise RowError(field_name, f"image must be a path string, got {type(value).__name__}.")


def image_refs(value, ctx: SourceCtx, field_name: str) -> list[ImageRef]:
    """A single image or a list of them (a CSV cell may hold a JSON list)."""
    if value is None:
        return []
    if type(value) is list:
        return [image_ref(v, ctx, field_name) for v in value]
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if s.startswith("["):
            try:
                value = json.loads(s)
            except ValueError:
                raise RowError(field_name, "image list is not valid JSON "
                               "(write it as [\"a.png\", \"b.png\"]).") from None
        else:
            return [image_ref(value, ctx, field_name)]
    if isinstance(value, (list, tuple)):
        return [image_ref(v, ctx, field_name) for v in value]
    return [image_ref(value, ctx, field_name)]


def _data_uri(value: str, field_name: str) -> ImageRef:
    head, _, payload = value.partition(",")
    if ";base64" not in head:
        raise RowError(field_name, "image data URI is not base64-encoded.")
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise RowError(field_name, "image data URI has invalid base64.") from None
    if not data:
        raise RowError(field_name, "image data URI is empty.")
    return ImageRef(data=data, label=f"{field_name} (data URI)")


def role_of(name, field_name: str, turn_no: int) -> str:
    role = ROLE_NAMES.get(name) if isinstance(name, str) else None
    if role is None and isinstance(name, str):
        role = ROLE_NAMES.get(name.strip().lower())
    if role is None:
        raise RowError(field_name, f"turn {turn_no} has unknown role {name!r}. Use one of "
                       "system, user, assistant (or ShareGPT's system, human, gpt).")
    return role


def text_of(value, field_name: str, *, allow_empty: bool = True) -> str:
    """A text cell -> str. Only strings: a JSON number, true/false, NaN or object in a caption is
    almost always a broken export, and training on "nan" or "True" teaches nonsense."""
    if value is None:
        if allow_empty:
            return ""
        raise RowError(field_name, f"'{field_name}' is missing or null.")
    if isinstance(value, str):
        return value
    raise RowError(field_name, f"'{field_name}' must be text (a JSON string), got "
                   f"{json_kind(value)}. Quote it, or fix the export that wrote it.")


def json_kind(value) -> str:
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"the non-number {value!r}".replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def take_markers(text: str) -> tuple[str, int]:
    """Count and remove `<image>` placeholders (with the newline that usually follows them)."""
    n = text.count(IMAGE_MARKER)
    if n:
        text = _MARKER_RE.sub("", text)
    return text, n


def attach_images(turns: list[Turn], markers: int, n_images: int, field_name: str) -> list[Turn]:
    """Check placeholder count against the images; with no placeholders, images go to the first
    user turn (mlx-vlm's convention)."""
    if markers == 0 and n_images:
        for i, t in enumerate(turns):
            if t.role == "user":
                turns[i] = Turn(t.role, t.text, n_images)
                return turns
        raise RowError(field_name, "the row has images but no user turn to attach them to.")
    if markers != n_images:
        raise RowError(field_name, f"the conversation has {markers} image placeholder(s) but the "
                       f"row lists {n_images} image(s). Make them match (one <image> per image).")
    return turns


def check_answer(turns: list[Turn], field_name: str) -> list:
    """Every conversation needs a non-empty assistant answer. Returns [(field, warning)]."""
    if not turns:
        raise RowError(field_name, "the conversation is empty.")
    first = next((i for i, t in enumerate(turns) if t.role != "system"), None)
    if first is not None and turns[first].role == "assistant":
        raise RowError(field_name, f"turn {first + 1}: the conversation starts with the assistant; "
                       "there is no user turn for the answer to follow. Start it with the user's "
                       "message (after an optional system prompt), or drop the opening turn.")
    answered = False
    for i, t in enumerate(turns):
        if t.role == "assistant":
            if not t.text.strip():
                raise RowError(field_name, f"turn {i + 1}: the assistant answer is empty.")
            answered = True
    if not answered:
        raise RowError(field_name, "no assistant answer in the conversation; nothing to "
                       "learn from.")
    if turns[-1].role != "assistant":
        return [(field_name, "the conversation ends with a non-assistant turn; it is not "
                 "trained on.")]
    return []


def row_image_key(row: dict, candidates) -> str | None:
    """The image field of this row (checked per row: the first rows may have no images)."""
    for key in candidates:
        if key in row:
            return key
    return None


def first_key(keys, candidates) -> str | None:
    return next((k for k in candidates if k in keys), None)


def found(keys) -> str:
    shown = sorted(k for k in keys if isinstance(k, str))
    return ", ".join(shown) if shown else "no columns"


def sample_meta(image_field: str | None) -> dict:
    return {"image_field": image_field} if image_field else {}
