"""Image loading that survives what users put in datasets.

Every mode becomes RGB (transparency over white, 16-bit scaled rather than clipped), EXIF
orientation is applied, huge images are decoded at reduced size (JPEG draft, then reduce) so a
50-megapixel photo does not need 600 MB, and anything PIL would warn about as a decompression
bomb, has an aspect ratio no vision processor takes (checked from the header), or cannot decode,
raises a DataError naming the file instead of passing silently.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from finetune_app.core.data.sample import ImageRef
from finetune_app.core.errors import DataError

_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_REEXPORT = "Re-export it as PNG or JPEG, or remove the row."
# Longest side over shortest side. Qwen-VL processors refuse more than 200 (smart_resize), and no
# model learns from a 1x60000 strip: refuse it from the header, before decoding anything.
MAX_ASPECT = 200


def _fail(ref: ImageRef, problem: str, fix: str) -> DataError:
    return DataError(problem, fix, file=ref.describe(), field="image")


def _open(ref: ImageRef) -> tuple[Image.Image, io.BufferedIOBase]:
    """Open lazily (header only), turning PIL's bomb warning and every failure into DataError."""
    if ref.path is not None:
        path = Path(ref.path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _fail(ref, f"image not found: {path}.", "Check the path (relative to the dataset "
                        "file) or remove the row.") from None
        except OSError as exc:
            raise _fail(ref, f"image cannot be read ({exc.strerror}).", "Check the file.") from None
        except ValueError:  # a NUL byte or an unencodable character in the path
            raise _fail(ref, "image path contains a NUL byte or an invalid character.",
                        "Fix the path or remove the row.") from None
        if not path.is_file():
            raise _fail(ref, f"image path is not a file: {path}.", "Point at an image file.")
        if size == 0:
            raise _fail(ref, "image file is empty (0 bytes).",
                        "Re-export the image or remove the row.")
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise _fail(ref, f"image cannot be opened ({exc.strerror}).",
                        "Check its permissions.") from None
    elif ref.data:
        fh = io.BytesIO(ref.data)
    else:
        raise _fail(ref, "image is empty (no path and no data).",
                    "Remove the row or fix the image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fh)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        fh.close()
        raise _fail(ref, f"image is too large to decode safely ({exc})".rstrip(".") + ".",
                    "Downscale it (PIL's decompression-bomb limit is "
                    f"{Image.MAX_IMAGE_PIXELS:,} pixels) or remove the row.") from None
    except UnidentifiedImageError:
        fh.close()
        raise _fail(ref, "not an image PIL can read (corrupt, truncated or an unsupported format).",
                    "Re-export it as PNG or JPEG, or remove the row.") from None
    except Exception as exc:  # PIL raises many kinds (SyntaxError, struct.error, ValueError...)
        fh.close()
        raise _fail(ref, f"image cannot be opened ({type(exc).__name__}: {exc}).",
                    "Re-export it as PNG or JPEG, or remove the row.") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        fh.close()
        raise _fail(ref, f"image has no pixels ({w}x{h}).", "Remove the row.")
    if max(w, h) > MAX_ASPECT * min(w, h):
        fh.close()
        raise _fail(ref, f"image is {w}x{h} pixels, an aspect ratio over {MAX_ASPECT}:1 that vision "
                    "models cannot read.", "Crop or pad it to a less extreme shape, or remove the "
                    "row.")
    return im, fh


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def _target(size: tuple[int, int], max_pixels: int) -> tuple[int, int] | None:
    w, h = size
    if max_pixels and w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        return max(1, int(w * scale)), max(1, int(h * scale))
    return None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited over white, 16-bit/float scaled to 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH:
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and 255 < hi <= 65535):
            arr = arr / 257.0  # 16-bit samples
        elif im.mode == "F" and lo >= 0 and hi <= 1.0:
            arr = arr * 255.0  # float in [0, 1]
        elif lo < 0 or hi > 255:
            arr = (arr - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)  # anything else: stretch
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if im.mode == "P" or (im.mode in ("L", "RGB", "1") and "transparency" in im.info):
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode == "RGB":
            return im
    if im.mode in _ALPHA:
        rgba = im.convert("LA").convert("RGBA") if im.mode == "La" else im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def load_image(ref: ImageRef, *, max_pixels: int = 4096 * 4096,
               resize: tuple[int, int] | None = None) -> Image.Image:
    """Decode `ref` as an RGB image, upright, at most `max_pixels` (or exactly `resize`).

    Raises DataError naming the file for missing, empty, corrupt or bomb-sized images."""
    im, fh = _open(ref)
    try:
        orientation = _orientation(im)
        w, h = im.size
        upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        want = resize or _target(upright, max_pixels)
        if want is not None:
            # draft/reduce work on the stored (not yet rotated) image
            stored = (want[1], want[0]) if orientation in (5, 6, 7, 8) else want
            if im.format == "JPEG":
                im.draft(None, stored)
            im.load()
            factor = int(min(im.size[0] / stored[0], im.size[1] / stored[1]))
            if factor >= 2:
                try:
                    im = im.reduce(factor)
                except (ValueError, NotImplementedError):  # modes reduce() lacks: resize later
                    pass
        else:
            im.load()
        im = to_rgb(im)
        if orientation in _TRANSPOSE:
            im = im.transpose(_TRANSPOSE[orientation])
        if resize is not None and im.size != tuple(resize):
            im = im.resize(tuple(resize), Image.Resampling.BICUBIC)
        elif want is not None and im.width * im.height > max_pixels:
            im.thumbnail(want, Image.Resampling.BICUBIC)
        return im
    except Exception as exc:
        raise _decode_error(ref, exc) from None
    finally:
        fh.close()


def _decode_error(ref: ImageRef, exc: BaseException) -> DataError:
    """What a failed decode tells the user (a DataError passes through unchanged)."""
    if isinstance(exc, DataError):
        return exc
    if isinstance(exc, MemoryError):
        return _fail(ref, "image is too large to decode in the memory available.", "Downscale it or remove the row.")
    return _fail(ref, f"image cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt or truncated.",
                 _REEXPORT)


def inspect_image(ref: ImageRef) -> tuple[int, int]:
    """Check that an image decodes, cheaply (JPEG at 1/8 scale); returns its upright size."""
    im, fh = _open(ref)
    try:
        orientation = _orientation(im)
        w, h = im.size
        if im.format == "JPEG":
            im.draft(None, (max(1, w // 8), max(1, h // 8)))
        im.load()
        return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except Exception as exc:
        raise _decode_error(ref, exc) from None
    finally:
        fh.close()


def decoded_size(ref: ImageRef, *, max_pixels: int = 4096 * 4096) -> tuple[int, int] | None:
    """The size `load_image(ref)` gives, read from the header without decoding (#16 vlmwarm: a
    picture's token count before its pixels are needed); None where load_image would reduce it
    (over `max_pixels`: JPEG draft and thumbnail sizes are the decoder's to choose). Header
    problems raise load_image's DataError; a body that fails to decode is found when it is read."""
    im, fh = _open(ref)
    try:
        w, h = im.size
        if _target((w, h), max_pixels) is not None:
            return None
        return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)
    finally:
        fh.close()


def image_key(ref: ImageRef) -> str:
    """Identity of an image for duplicates and caching: its path, or a hash of its bytes."""
    if ref.path is not None:
        return os.fspath(ref.path)
    if ref.data is None:
        return ref.label  # a path-less reference made for a light validation pass
    import hashlib

    return "sha1:" + hashlib.sha1(ref.data).hexdigest()
