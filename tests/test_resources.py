"""The shipped icons (app icon, iconset, .icns, menu-bar templates) and finetune_app.resources,
which finds them from a checkout, a wheel install and inside Finetune.app."""

from __future__ import annotations

import importlib.util
import io
import math
import shutil
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_app import resources as res

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"

# What macOS wants in an .iconset (iconutil's names), written out here independently of the
# generator, and the pixel size of each.
MACOS_ICONSET = {
    "icon_16x16.png": 16,
    "icon_16x16@2x.png": 32,
    "icon_32x32.png": 32,
    "icon_32x32@2x.png": 64,
    "icon_128x128.png": 128,
    "icon_128x128@2x.png": 256,
    "icon_256x256.png": 256,
    "icon_256x256@2x.png": 512,
    "icon_512x512.png": 512,
    "icon_512x512@2x.png": 1024,
}
ICNS_PNG_TYPES = {
    "ic11": 32,
    "ic12": 64,
    "ic07": 128,
    "ic13": 256,
    "ic08": 256,
    "ic14": 512,
    "ic09": 512,
    "ic10": 1024,
}


def load_make_icons():
    spec = importlib.util.spec_from_file_location("make_icons", RESOURCES / "make_icons.py")
    module = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode, saved = True, sys.dont_write_bytecode
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def pixels(image: Image.Image) -> np.ndarray:
    """An image as a signed integer array (RGBA images: height x width x 4)."""
    if image.mode not in ("RGBA", "L"):
        image = image.convert("RGBA")
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def make_icons():
    return load_make_icons()


# --- the app icon ------------------------------------------------------------------------------


def test_master_svg_is_plain_svg_qt_can_draw():
    svg = RESOURCES / "icon" / "finetune-icon.svg"
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 1024 1024"
    tags = {el.tag.split("}")[-1] for el in root.iter()}
    assert not tags & {"filter", "mask", "image", "text", "foreignObject"}, tags


def test_iconset_has_exactly_the_files_and_pixel_sizes_macos_needs():
    iconset = RESOURCES / "icon" / "Finetune.iconset"
    assert sorted(p.name for p in iconset.iterdir()) == sorted(MACOS_ICONSET)
    for name, px in MACOS_ICONSET.items():
        with Image.open(iconset / name) as im:
            assert im.format == "PNG"
            assert im.size == (px, px), name
            assert im.mode == "RGBA", name
            alpha = im.getchannel("A")
            assert alpha.getextrema() == (0, 255), f"{name}: want transparent corners, opaque body"
            assert im.getpixel((px // 2, px // 2))[3] == 255


def test_icns_container_parses_and_every_chunk_is_a_png_of_its_size():
    blob = (RESOURCES / "icon" / "Finetune.icns").read_bytes()
    assert blob[:4] == b"icns"
    assert struct.unpack(">I", blob[4:8])[0] == len(blob)
    chunks, pos = [], 8
    while pos < len(blob):  # read the chunk table by hand
        kind = blob[pos : pos + 4].decode("ascii")
        (length,) = struct.unpack(">I", blob[pos + 4 : pos + 8])
        assert length >= 8 and pos + length <= len(blob)
        chunks.append((kind, blob[pos + 8 : pos + length]))
        pos += length
    assert pos == len(blob)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == "TOC "
    assert sorted(kinds[1:]) == sorted(ICNS_PNG_TYPES)
    toc = chunks[0][1]
    listed = [
        (toc[i : i + 4].decode(), struct.unpack(">I", toc[i + 4 : i + 8])[0]) for i in range(0, len(toc), 8)
    ]
    assert listed == [(k, len(data) + 8) for k, data in chunks[1:]]
    for kind, data in chunks[1:]:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "PNG"
            assert im.size == (ICNS_PNG_TYPES[kind],) * 2, kind


def test_icns_reads_back_with_pillow_and_the_generator(make_icons):
    path = RESOURCES / "icon" / "Finetune.icns"
    with Image.open(path) as im:
        assert im.format == "ICNS"
        assert im.size == (1024, 1024) or max(im.info.get("sizes", [(0, 0, 0)]))[0] == 512
    chunks = make_icons.read_icns(path)
    assert set(ICNS_PNG_TYPES) <= set(chunks)


def test_icns_reader_rejects_a_broken_file(make_icons, tmp_path):
    good = (RESOURCES / "icon" / "Finetune.icns").read_bytes()
    bad = tmp_path / "bad.icns"
    bad.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="header says"):
        make_icons.read_icns(bad)
    bad.write_bytes(b"icnz" + good[4:])
    with pytest.raises(ValueError, match="not an icns"):
        make_icons.read_icns(bad)


def test_committed_icons_are_complete_and_match_the_master(make_icons):
    assert make_icons.check() == []
    # Rendering the SVG again gives (nearly: other Qt versions antialias a little differently)
    # the committed pixels, i.e. nobody edited the master without regenerating.
    for name, px in (("icon_32x32.png", 32), ("icon_128x128.png", 128)):
        fresh = pixels(Image.open(io.BytesIO(make_icons.render_svg(px))))
        committed = pixels(Image.open(RESOURCES / "icon" / "Finetune.iconset" / name))
        assert np.abs(fresh - committed).mean() < 2.0, (
            f"{name} differs from the SVG: run resources/make_icons.py"
        )
    fresh = pixels(Image.open(io.BytesIO(make_icons.draw_tray("trayTraining50", 36))))
    committed = pixels(Image.open(RESOURCES / "tray" / "trayTraining50Template@2x.png"))
    assert np.abs(fresh - committed).mean() < 2.0


# --- menu-bar template icons -------------------------------------------------------------------


def all_tray_files():
    names = []
    for state in res.TRAY_STATES:
        names.append(res.tray_icon_name(state))
    names += [res.tray_icon_name("training", p / 100) for p in range(0, 101, res.TRAY_PROGRESS_STEP)]
    return names


def test_tray_constants_agree_with_the_generator(make_icons):
    assert make_icons.TRAY_STATES == res.TRAY_STATES
    assert make_icons.TRAY_PROGRESS_STEP == res.TRAY_PROGRESS_STEP
    generated = {n for n in make_icons.tray_files() if not n.endswith("@2x.png")}
    assert generated == set(all_tray_files())
    assert {p.name for p in (RESOURCES / "tray").iterdir()} == set(make_icons.tray_files())


@pytest.mark.parametrize("name", all_tray_files())
def test_tray_icons_are_black_templates_at_18pt_and_2x(name):
    assert name.endswith("Template.png")
    for scale, px in ((1, 18), (2, 36)):
        path = RESOURCES / "tray" / (name if scale == 1 else name.replace(".png", "@2x.png"))
        with Image.open(path) as im:
            assert im.size == (px, px) and im.mode == "RGBA", path.name
            rgba = pixels(im)
        alpha, rgb = rgba[..., 3], rgba[..., :3]
        assert (alpha > 0).any(), f"{path.name} is empty"
        assert (alpha == 0).any(), f"{path.name} has no transparent background"
        assert not rgb[alpha > 0].any(), f"{path.name} is not pure black (template)"
        assert alpha.max() == 255


def test_tray_2x_is_the_same_drawing_as_1x():
    for name in all_tray_files():
        small = pixels(Image.open(RESOURCES / "tray" / name).getchannel("A"))
        big = Image.open(RESOURCES / "tray" / name.replace(".png", "@2x.png")).getchannel("A")
        down = pixels(big.resize((18, 18), Image.Resampling.BOX))
        assert np.abs(small - down).mean() < 20, name


def test_progress_rings_fill_up():
    def ink(percent):
        path = RESOURCES / "tray" / f"trayTraining{percent}Template@2x.png"
        return int(pixels(Image.open(path).getchannel("A")).sum())

    amounts = [ink(p) for p in range(0, 101, 10)]
    assert amounts == sorted(amounts) and amounts[0] < amounts[-1]


# --- finetune_app.resources --------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(res.ENV_VAR, raising=False)
    monkeypatch.delenv("RESOURCEPATH", raising=False)
    monkeypatch.delattr(sys, "frozen", raising=False)
    return monkeypatch


def every_resource():
    files = [
        p.relative_to(RESOURCES) for p in RESOURCES.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]
    assert len(files) > 40
    return files


def test_from_source_every_file_resolves_to_the_checkout(clean_env):
    assert res.resources_dir() == RESOURCES
    for rel in every_resource():
        assert res.resource_path(*rel.parts) == RESOURCES / rel


def test_helpers(clean_env):
    assert res.app_icns_path() == RESOURCES / "icon" / "Finetune.icns"
    assert res.app_icon_svg_path() == RESOURCES / "icon" / "finetune-icon.svg"
    assert res.app_icon_path().name == "icon_512x512.png"
    assert res.app_icon_path(16).name == "icon_16x16.png"
    assert res.app_icon_path(48).name == "icon_32x32@2x.png"  # 64 px: the smallest >= 48
    assert res.app_icon_path(5000).name == "icon_512x512@2x.png"
    for size in res.APP_ICON_SIZES:
        with Image.open(res.app_icon_path(size)) as im:
            assert im.size == (size, size)
    assert res.tray_icon_path("idle") == RESOURCES / "tray" / "trayIdleTemplate.png"
    assert res.tray_icon_path("idle", scale=2) == RESOURCES / "tray" / "trayIdleTemplate@2x.png"
    with pytest.raises(ValueError):
        res.tray_icon_path("idle", scale=3)
    with pytest.raises(ValueError):
        res.app_icon_path(0)


@pytest.mark.parametrize(
    ("state", "progress", "name"),
    [
        ("idle", None, "trayIdleTemplate.png"),
        ("idle", 0.5, "trayIdleTemplate.png"),  # progress only matters while training
        ("paused", 0.3, "trayPausedTemplate.png"),
        ("finished", None, "trayFinishedTemplate.png"),
        ("failed", None, "trayFailedTemplate.png"),
        ("training", None, "trayTrainingTemplate.png"),
        ("training", 0.0, "trayTraining0Template.png"),
        ("training", 0.099, "trayTraining0Template.png"),
        ("training", 0.1, "trayTraining10Template.png"),
        ("training", 0.3, "trayTraining30Template.png"),  # 0.3 * 100 is 30.000000000000004
        ("training", 0.7, "trayTraining70Template.png"),  # and 0.7 * 100 is 70.00000000000001
        ("training", 0.999, "trayTraining90Template.png"),  # full ring only when done
        ("training", 1.0, "trayTraining100Template.png"),
        ("training", 1.0000001, "trayTraining100Template.png"),  # rounding noise is forgiven
        ("training", -0.0000001, "trayTraining0Template.png"),
    ],
)
def test_tray_icon_name(state, progress, name):
    assert res.tray_icon_name(state, progress) == name


@pytest.mark.parametrize("progress", [1.5, 50, -0.2, math.nan])
def test_tray_progress_is_a_fraction(progress):
    with pytest.raises(ValueError, match="fraction"):
        res.tray_icon_name("training", progress)


def test_unknown_tray_state():
    with pytest.raises(ValueError, match="idle, training"):
        res.tray_icon_name("sleeping")


def test_every_state_and_step_resolves(clean_env):
    for state in res.TRAY_STATES:
        for progress in [None] + [i / 20 for i in range(21)]:
            for scale in (1, 2):
                assert res.tray_icon_path(state, progress, scale=scale).is_file()


def copy_resources(dest: Path) -> Path:
    shutil.copytree(RESOURCES, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_inside_the_app_bundle_every_file_resolves_there(clean_env, tmp_path):
    contents = tmp_path / "Finetune.app" / "Contents"
    bundle_resources = copy_resources(contents / "Resources" / "resources")
    clean_env.setattr(sys, "frozen", "macosx_app", raising=False)
    clean_env.setenv("RESOURCEPATH", str(contents / "Resources"))
    assert res.resources_dir() == bundle_resources
    for rel in every_resource():
        assert res.resource_path(*rel.parts) == bundle_resources / rel
    assert (
        res.tray_icon_path("training", 0.42, scale=2)
        == bundle_resources / "tray" / "trayTraining40Template@2x.png"
    )
    assert res.app_icns_path() == bundle_resources / "icon" / "Finetune.icns"


def test_bundle_without_resourcepath_is_found_from_the_executable(clean_env, tmp_path):
    contents = tmp_path / "Finetune.app" / "Contents"
    bundle_resources = copy_resources(contents / "Resources" / "resources")
    (contents / "MacOS").mkdir()
    clean_env.setattr(sys, "frozen", "macosx_app", raising=False)
    clean_env.setattr(sys, "executable", str(contents / "MacOS" / "python"))
    assert res.resources_dir() == bundle_resources


def test_a_file_missing_from_the_bundle_is_an_error_not_a_fallback(clean_env, tmp_path):
    contents = tmp_path / "Finetune.app" / "Contents"
    bundle_resources = copy_resources(contents / "Resources" / "resources")
    (bundle_resources / "tray" / "trayPausedTemplate.png").unlink()
    clean_env.setattr(sys, "frozen", "macosx_app", raising=False)
    clean_env.setenv("RESOURCEPATH", str(contents / "Resources"))
    with pytest.raises(res.ResourceNotFoundError) as info:
        res.tray_icon_path("paused")
    message = str(info.value)
    assert "tray/trayPausedTemplate.png" in message and str(bundle_resources) in message
    assert info.value.resource == "tray/trayPausedTemplate.png"
    assert isinstance(info.value, FileNotFoundError)


def test_wheel_install_finds_the_data_files_folder(clean_env, tmp_path):
    # A wheel puts the package in site-packages and resources/ (as data-files) under
    # <prefix>/share/finetune-app/resources. An unrelated site-packages/resources is ignored.
    site = tmp_path / "venv" / "lib" / "site-packages"
    (site / "finetune_app").mkdir(parents=True)
    (site / "resources" / "icon").mkdir(parents=True)  # someone else's "resources" package
    installed = copy_resources(tmp_path / "venv" / "share" / "finetune-app" / "resources")
    clean_env.setattr(res, "__file__", str(site / "finetune_app" / "resources.py"))
    clean_env.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert res.resources_dir() == installed
    assert res.tray_icon_path("finished") == installed / "tray" / "trayFinishedTemplate.png"


def test_override_with_environment_variable(clean_env, tmp_path):
    elsewhere = copy_resources(tmp_path / "elsewhere")
    clean_env.setenv(res.ENV_VAR, str(elsewhere))
    assert res.resource_path("icon", "Finetune.icns") == elsewhere / "icon" / "Finetune.icns"


def test_nothing_found_names_the_resource_and_every_place_looked(clean_env, tmp_path):
    clean_env.setattr(res, "__file__", str(tmp_path / "site" / "finetune_app" / "resources.py"))
    clean_env.setattr(res, "_installed_dirs", lambda: [tmp_path / "share" / "finetune-app" / "resources"])
    with pytest.raises(res.ResourceNotFoundError) as info:
        res.resource_path("icon", "Finetune.icns")
    message = str(info.value)
    assert "icon/Finetune.icns" in message
    assert str(tmp_path / "site" / "resources") in message
    assert str(tmp_path / "share" / "finetune-app" / "resources") in message
    assert res.ENV_VAR in message


def test_bad_resource_paths_are_refused(clean_env):
    with pytest.raises(ValueError):
        res.resource_path()
    with pytest.raises(ValueError):
        res.resource_path("..", "pyproject.toml")
    with pytest.raises(ValueError):
        res.resource_path("/etc/passwd")
    assert not res.resource_path("icon", "nope.png", must_exist=False).exists()


def test_resources_module_does_not_import_qt():
    source = (ROOT / "finetune_app" / "resources.py").read_text()
    assert "PySide6" not in source and "QtCore" not in source
