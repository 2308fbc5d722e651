#!/usr/bin/env python3
"""Render every icon the app ships from its one master, and check them.

    python3 resources/make_icons.py           # regenerate (commit the results)
    python3 resources/make_icons.py --check   # are all the files there, at the right pixel sizes?

What it writes, all under resources/:

* ``icon/Finetune.iconset/icon_16x16.png`` … ``icon_512x512@2x.png``: the ten PNGs of a macOS
  iconset (the names and pixel sizes ``iconutil`` expects), each rendered straight from
  ``icon/finetune-icon.svg`` at its own pixel size, not scaled down from a big bitmap.
* ``icon/Finetune.icns``: the app icon py2app puts in the bundle. Written here, by hand: an
  ``icns`` header, a ``TOC `` chunk, then one PNG per type (ic11 ic12 ic07 ic13 ic08 ic14 ic09 ic10,
  the set ``iconutil`` and Pillow write), so it builds on Linux too (``iconutil`` is macOS-only).
* ``tray/tray<State>Template.png`` and ``…Template@2x.png``: the menu-bar icons, 18 x 18 pt at 1x
  and 2x, black on transparent. The ``Template`` suffix is Apple's convention for images that
  macOS recolours for a light or dark menu bar (in Qt: ``QIcon.setIsMask(True)``).

Needs PySide6 (QtSvg renders the SVG, QPainter draws the tray glyphs) and Pillow (writes
compact, byte-stable PNGs). Works the same on macOS and Linux; no display needed.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASTER_SVG = HERE / "icon" / "finetune-icon.svg"
ICONSET_DIR = HERE / "icon" / "Finetune.iconset"
ICNS_PATH = HERE / "icon" / "Finetune.icns"
TRAY_DIR = HERE / "tray"

# iconset file name -> pixel size (what iconutil wants: 16..512 pt at 1x and 2x)
ICONSET: dict[str, int] = {}
for _pt in (16, 32, 128, 256, 512):
    ICONSET[f"icon_{_pt}x{_pt}.png"] = _pt
    ICONSET[f"icon_{_pt}x{_pt}@2x.png"] = _pt * 2

# icns chunk type -> pixel size; every one a PNG. The 1x 16 and 32 px slots (ic04/ic05, which
# iconutil fills with ARGB data) are left out: macOS draws those from ic11/ic12.
ICNS_TYPES: dict[bytes, int] = {
    b"ic11": 32,  # 16x16@2x
    b"ic12": 64,  # 32x32@2x
    b"ic07": 128,  # 128x128
    b"ic13": 256,  # 128x128@2x
    b"ic08": 256,  # 256x256
    b"ic14": 512,  # 256x256@2x
    b"ic09": 512,  # 512x512
    b"ic10": 1024,  # 512x512@2x
}

# Menu-bar icons. Keep in step with finetune_app/resources.py (a test checks they agree).
TRAY_POINTS = 18
TRAY_STATES = ("idle", "training", "paused", "finished", "failed")
TRAY_PROGRESS_STEP = 10  # training shows progress in 10 % steps: 0, 10, ... 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tray_names() -> list[str]:
    """Base names (without ``Template.png``) of every menu-bar icon."""
    names = ["trayIdle", "trayTraining", "trayPaused", "trayFinished", "trayFailed"]
    names += [f"trayTraining{p}" for p in range(0, 101, TRAY_PROGRESS_STEP)]
    return names


def tray_files() -> dict[str, int]:
    """Menu-bar icon file name -> pixel size (1x and @2x of each)."""
    files = {}
    for name in tray_names():
        files[f"{name}Template.png"] = TRAY_POINTS
        files[f"{name}Template@2x.png"] = TRAY_POINTS * 2
    return files


# --- ICNS --------------------------------------------------------------------------------------


def write_icns(path: Path, pngs: dict[int, bytes]) -> None:
    """Write an .icns holding one PNG per type in ICNS_TYPES; ``pngs`` maps pixel size -> PNG."""
    entries = []
    for kind, size in ICNS_TYPES.items():
        data = pngs[size]
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"icns {kind.decode()}: not PNG data")
        entries.append((kind, data))
    toc = b"TOC " + struct.pack(">I", 8 + 8 * len(entries))
    toc += b"".join(kind + struct.pack(">I", 8 + len(data)) for kind, data in entries)
    body = toc + b"".join(kind + struct.pack(">I", 8 + len(data)) + data for kind, data in entries)
    blob = b"icns" + struct.pack(">I", 8 + len(body)) + body
    _write_if_changed(path, blob)


def read_icns(path: Path) -> dict[str, bytes]:
    """Chunk type -> payload of an .icns file; raises ValueError where the container is broken."""
    blob = Path(path).read_bytes()
    if blob[:4] != b"icns":
        raise ValueError(f"{path}: not an icns file (magic {blob[:4]!r})")
    (total,) = struct.unpack(">I", blob[4:8])
    if total != len(blob):
        raise ValueError(f"{path}: header says {total} bytes, file has {len(blob)}")
    chunks: dict[str, bytes] = {}
    pos = 8
    while pos < total:
        if pos + 8 > total:
            raise ValueError(f"{path}: truncated chunk header at {pos}")
        kind = blob[pos : pos + 4].decode("latin-1")
        (length,) = struct.unpack(">I", blob[pos + 4 : pos + 8])
        if length < 8 or pos + length > total:
            raise ValueError(f"{path}: chunk {kind!r} at {pos} has a bad length {length}")
        if kind in chunks:
            raise ValueError(f"{path}: chunk {kind!r} appears twice")
        chunks[kind] = blob[pos + 8 : pos + length]
        pos += length
    return chunks


# --- rendering ---------------------------------------------------------------------------------


def _qt():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    return QGuiApplication.instance() or QGuiApplication([sys.argv[0]])


def _png_bytes(qimage) -> bytes:
    """QImage -> PNG bytes through Pillow (smaller than Qt's, and the same bytes every run)."""
    from PIL import Image
    from PySide6.QtGui import QImage

    img = qimage.convertToFormat(QImage.Format.Format_RGBA8888)
    w, h = img.width(), img.height()
    raw = bytes(img.constBits())[: img.bytesPerLine() * h]
    pil = Image.frombuffer("RGBA", (w, h), raw, "raw", "RGBA", img.bytesPerLine(), 1)
    out = io.BytesIO()
    pil.save(out, "PNG", optimize=True)
    return out.getvalue()


def render_svg(size: int, svg: Path = MASTER_SVG) -> bytes:
    """The master SVG rendered at size x size pixels, as PNG bytes."""
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _qt()
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise RuntimeError(f"Qt cannot read the icon master {svg}")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    return _png_bytes(image)


# Menu-bar glyphs, drawn in an 18 x 18 unit box (1 unit = 1 pt) and scaled to the pixel size.
# Only alpha matters in a template image; everything is pure black.


def _sparkle_path(cx: float, cy: float, r: float):
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QPainterPath

    path = QPainterPath(QPointF(cx, cy - r))
    c = QPointF(cx, cy)
    for x, y in ((cx + r, cy), (cx, cy + r), (cx - r, cy), (cx, cy - r)):
        path.quadTo(c, QPointF(x, y))
    return path


def draw_tray(name: str, px: int) -> bytes:
    """Draw one menu-bar icon (a base name from tray_names()) at px x px."""
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QPen

    _qt()
    image = QImage(px, px, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.scale(px / TRAY_POINTS, px / TRAY_POINTS)
    black = QColor(0, 0, 0)

    def pen(width: float, alpha: float = 1.0, cap=Qt.PenCapStyle.RoundCap) -> QPen:
        color = QColor(black)
        color.setAlphaF(alpha)
        return QPen(color, width, Qt.PenStyle.SolidLine, cap, Qt.PenJoinStyle.RoundJoin)

    ring = QRectF(1.75, 1.75, 14.5, 14.5)  # centre (9, 9), radius 7.25

    def full_ring(alpha: float = 1.0) -> None:
        p.setPen(pen(1.5, alpha))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(ring)

    def sparkle(r: float) -> None:
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(black)
        p.drawPath(_sparkle_path(9, 9, r))

    if name == "trayIdle":  # the app's eye
        eye = QPainterPath(QPointF(1.6, 9))
        eye.cubicTo(QPointF(5, 3.9), QPointF(13, 3.9), QPointF(16.4, 9))
        eye.cubicTo(QPointF(13, 14.1), QPointF(5, 14.1), QPointF(1.6, 9))
        p.setPen(pen(1.5))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(eye)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(black)
        p.drawEllipse(QPointF(9, 9), 2.6, 2.6)
    elif name == "trayTraining":  # progress unknown: a dashed ring round a sparkle
        dashes = 8
        p.setPen(pen(1.5, cap=Qt.PenCapStyle.FlatCap))
        for i in range(dashes):
            start = 90 - i * 360 / dashes - 6
            p.drawArc(ring, int(start * 16), int(-(360 / dashes - 12) * 16))
        sparkle(3.8)
    elif name.startswith("trayTraining"):  # a progress ring, clockwise from 12 o'clock
        percent = int(name[len("trayTraining") :])
        full_ring(alpha=0.3)
        if percent > 0:
            p.setPen(pen(2.0, cap=Qt.PenCapStyle.FlatCap if percent < 100 else Qt.PenCapStyle.RoundCap))
            p.drawArc(ring, 90 * 16, int(-percent / 100 * 360 * 16))
        sparkle(3.8)
    elif name == "trayPaused":
        full_ring()
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(black)
        for x in (6.35, 9.95):
            p.drawRoundedRect(QRectF(x, 5.5, 1.7, 7.0), 0.6, 0.6)
    elif name == "trayFinished":
        full_ring()
        check = QPainterPath(QPointF(5.5, 9.3))
        check.lineTo(7.9, 11.6)
        check.lineTo(12.5, 6.7)
        p.setPen(pen(1.7))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(check)
    elif name == "trayFailed":
        full_ring()
        p.setPen(pen(1.8))
        p.drawLine(QPointF(9, 5.3), QPointF(9, 10.0))
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(black)
        p.drawEllipse(QPointF(9, 12.75), 1.05, 1.05)
    else:
        p.end()
        raise ValueError(f"no such tray icon: {name}")
    p.end()
    return _png_bytes(image)


# --- main --------------------------------------------------------------------------------------


def _write_if_changed(path: Path, data: bytes) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def generate() -> list[Path]:
    """Render everything; returns the files whose bytes changed."""
    changed = []
    rendered = {size: render_svg(size) for size in sorted(set(ICONSET.values()) | set(ICNS_TYPES.values()))}
    for name, size in ICONSET.items():
        if _write_if_changed(ICONSET_DIR / name, rendered[size]):
            changed.append(ICONSET_DIR / name)
    before = ICNS_PATH.read_bytes() if ICNS_PATH.exists() else b""
    write_icns(ICNS_PATH, rendered)
    if ICNS_PATH.read_bytes() != before:
        changed.append(ICNS_PATH)
    for name, size in tray_files().items():
        base = name.replace("Template@2x.png", "").replace("Template.png", "")
        if _write_if_changed(TRAY_DIR / name, draw_tray(base, size)):
            changed.append(TRAY_DIR / name)
    return changed


def expected_files() -> dict[Path, int | None]:
    """Every generated file -> its pixel size (None for the .icns)."""
    files: dict[Path, int | None] = {ICONSET_DIR / n: s for n, s in ICONSET.items()}
    files[ICNS_PATH] = None
    files.update({TRAY_DIR / n: s for n, s in tray_files().items()})
    return files


def check() -> list[str]:
    """Problems with the committed files (empty when all is well). Needs only Pillow."""
    from PIL import Image

    problems = []
    if not MASTER_SVG.is_file():
        problems.append(f"missing master {MASTER_SVG}")
    for path, size in expected_files().items():
        if not path.is_file():
            problems.append(f"missing {path.relative_to(HERE)}")
            continue
        if size is None:
            try:
                chunks = read_icns(path)
            except ValueError as err:
                problems.append(str(err))
                continue
            missing = sorted(k.decode() for k in ICNS_TYPES if k.decode() not in chunks)
            if missing:
                problems.append(f"{path.name}: no {', '.join(missing)} chunk")
            continue
        with Image.open(path) as im:
            if im.size != (size, size) or im.mode != "RGBA":
                problems.append(f"{path.relative_to(HERE)}: {im.size} {im.mode}, want {size}x{size} RGBA")
    for extra in sorted(ICONSET_DIR.glob("*")) + sorted(TRAY_DIR.glob("*")):
        if extra not in expected_files():
            problems.append(f"unexpected file {extra.relative_to(HERE)} (stale? delete it)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the committed files")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(f"make_icons: {line}", file=sys.stderr)
        if not problems:
            print(f"make_icons: {len(expected_files())} icon files present and the right sizes")
        return 1 if problems else 0
    changed = generate()
    for path in changed:
        print(f"wrote {path.relative_to(HERE.parent)}")
    print(f"make_icons: {len(changed)} of {len(expected_files())} files changed")
    problems = check()
    for line in problems:
        print(f"make_icons: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
