"""load_image: every mode to RGB, EXIF orientation, safe downscaling, and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_data_fixtures import png_header

from finetune_app.core.data import ImageRef, load_image
from finetune_app.core.data.images import inspect_image
from finetune_app.core.errors import DataError


def _ref(tmp_path, im: Image.Image, name: str, **save) -> ImageRef:
    path = tmp_path / name
    im.save(path, **save)
    return ImageRef(path=path, label=name)


def _pixel(im, xy=(0, 0)):
    return im.convert("RGB").getpixel(xy) if im.mode != "RGB" else im.getpixel(xy)


@pytest.mark.parametrize("mode,value,name,expected", [
    ("RGBA", (255, 0, 0, 0), "t.png", (255, 255, 255)),  # fully transparent -> white
    ("RGBA", (255, 0, 0, 255), "o.png", (255, 0, 0)),
    ("LA", (0, 0), "la.png", (255, 255, 255)),
    ("L", 128, "l.png", (128, 128, 128)),
    ("1", 1, "b.png", (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), "c.jpg", None),  # red-ish; JPEG is lossy
    ("CMYK", (0, 0, 0, 0), "c.tif", (255, 255, 255)),
    ("YCbCr", (76, 85, 255), "y.jpg", None),
    ("F", 0.5, "f.tif", (128, 128, 128)),
    ("I", 40000, "i.tif", (156, 156, 156)),  # 16-bit range stored as 32-bit
])
def test_modes_become_rgb(tmp_path, mode, value, name, expected):
    im = load_image(_ref(tmp_path, Image.new(mode, (4, 3), value), name))
    assert im.mode == "RGB" and im.size == (4, 3)
    if expected is not None:
        assert _pixel(im) == expected
    if mode == "CMYK" and name.endswith(".jpg"):
        r, g, b = _pixel(im)
        assert r > 200 and g < 60 and b < 60


def test_palette_with_transparency_and_16_bit(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 1
    assert _pixel(load_image(_ref(tmp_path, p, "p.png", transparency=1))) == (255, 255, 255)
    plain = Image.new("P", (4, 4), 1)
    plain.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert _pixel(load_image(_ref(tmp_path, plain, "q.png"))) == (0, 0, 255)
    arr = np.full((3, 5), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    ref = _ref(tmp_path, Image.fromarray(arr), "g16.png")
    assert Image.open(ref.path).mode.startswith("I;16")
    assert _pixel(load_image(ref)) == (128, 128, 128)  # scaled, not clipped to white


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    ref = _ref(tmp_path, im, "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(ref)
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 2))  # the left strip is now on top
    assert r > 200 and b < 80
    assert inspect_image(ref) == (20, 40)
    assert load_image(ref, resize=(10, 20)).size == (10, 20)


def test_large_images_are_downscaled(tmp_path):
    ref = _ref(tmp_path, Image.new("RGB", (1600, 1200), (0, 128, 0)), "big.jpg", quality=80)
    out = load_image(ref, max_pixels=200 * 150)
    assert out.width * out.height <= 200 * 150 and abs(out.width / out.height - 4 / 3) < 0.05
    ref = _ref(tmp_path, Image.new("RGB", (900, 300), (0, 128, 0)), "big.png")
    out = load_image(ref, max_pixels=90 * 30)
    assert out.size == (90, 30)
    assert load_image(ref, resize=(64, 64)).size == (64, 64)


def test_embedded_bytes(tmp_path):
    buf = io.BytesIO()
    Image.new("RGBA", (3, 3), (0, 0, 0, 255)).save(buf, "PNG")
    assert _pixel(load_image(ImageRef(data=buf.getvalue(), label="row 3"))) == (0, 0, 0)


@pytest.mark.parametrize("name,data,words", [
    ("missing.png", None, "not found"),
    ("zero.png", b"", "0 bytes"),
    ("junk.png", b"hello, not an image", "not an image"),
    ("bomb.png", png_header(100_000, 100_000), "too large"),
    ("warn.png", png_header(10_000, 10_000), "too large"),
    ("cut.png", None, "corrupt or truncated"),
])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, name, data, words):
    path = tmp_path / name
    if name == "cut.png":
        buf = io.BytesIO()
        Image.effect_noise((64, 64), 50).save(buf, "PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif data is not None:
        path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_image(ImageRef(path=path, label=name))
    assert err.value.file == name and words in str(err.value), str(err.value)
    assert err.value.fix


def test_bomb_warning_never_passes_silently(tmp_path, recwarn):
    path = tmp_path / "warn.png"
    path.write_bytes(png_header(10_000, 10_000))  # above PIL's limit, below twice it
    with pytest.raises(DataError):
        inspect_image(ImageRef(path=path))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
