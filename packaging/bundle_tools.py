#!/usr/bin/env python3
"""Before and after py2app: check the build machine, copy MLX and Qt in, verify the bundle.

    python packaging/bundle_tools.py check-env            # before building (on the Mac)
    python packaging/bundle_tools.py vendor  dist/Finetune.app
    python packaging/bundle_tools.py verify  dist/Finetune.app
    python packaging/bundle_tools.py sign    dist/Finetune.app [--identity "Developer ID ..."]
    python packaging/bundle_tools.py macho-files dist/Finetune.app   # what to sign, inside out

packaging/build_macos.sh runs them in that order. Everything here is plain Python (no py2app,
no macOS tools), so the tests run it on Linux against a bundle-shaped folder.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata as metadata
import importlib.util
import os
import platform
import plistlib
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import setup_py2app as config  # noqa: E402  (packaging/setup_py2app.py: plain data)

MACHO_MAGICS = {
    b"\xfe\xed\xfa\xce",
    b"\xce\xfa\xed\xfe",
    b"\xfe\xed\xfa\xcf",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",  # universal (also Java class files: checked by size below)
    b"\xbe\xba\xfe\xca",
}


# --- the bundle's layout -----------------------------------------------------------------------


def site_dir(app: Path) -> Path:
    """Contents/Resources/lib/pythonX.Y: where py2app put the whole packages (finetune_app…)."""
    lib = app / "Contents" / "Resources" / "lib"
    found = sorted(p.parent for p in lib.glob("python3.*/finetune_app") if p.is_dir())
    if found:
        return found[0]
    fallback = lib / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if fallback.is_dir():
        return fallback
    raise FileNotFoundError(
        f"{app}: no Contents/Resources/lib/python3.*/finetune_app; is this a py2app build of Finetune?"
    )


def package_dir(name: str) -> Path:
    """The installed folder of a top-level package (namespace packages too), without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"{name} is not installed in this Python ({sys.executable})")
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        raise ValueError(f"{name} is a module, not a package")
    if len(locations) > 1:  # a namespace package spread over several folders: take the one with files
        locations.sort(key=lambda p: sum(1 for _ in Path(p).iterdir()), reverse=True)
    return Path(locations[0])


def dist_info_dirs(top_level: str) -> list[Path]:
    """The .dist-info folders of every distribution that installs files under ``top_level``
    (mlx: mlx and mlx-metal; PySide6: PySide6, PySide6_Essentials, PySide6_Addons)."""
    names = metadata.packages_distributions().get(top_level, [])
    dirs = []
    for name in dict.fromkeys(names):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            if f.parts and f.parts[0].endswith(".dist-info"):
                path = Path(dist.locate_file(f.parts[0]))
                if path.is_dir() and path not in dirs:
                    dirs.append(path)
                break
    return dirs


def companion_dirs(top_level: str) -> list[Path]:
    """Folders installed beside a package by its distributions, such as the ``mlx_cpu.libs``
    that auditwheel adds on Linux (delocate keeps them inside the package on macOS)."""
    names = metadata.packages_distributions().get(top_level, [])
    found: list[Path] = []
    for name in dict.fromkeys(names):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            head = f.parts[0] if f.parts else ""
            if len(f.parts) < 2 or head in (top_level, "..", "bin") or head.endswith((".dist-info", ".data")):
                continue
            path = Path(dist.locate_file(head))
            if path.is_dir() and path not in found:
                found.append(path)
    return found


def _pruned(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, pat) for pat in patterns)


def copy_package(src: Path, dst: Path, prune: list[str]) -> int:
    """Copy a package folder (symlinks kept as symlinks), leaving out pruned paths and caches."""
    copied = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        keep = []
        for d in dirnames:
            rel = (rel_dir / d).as_posix()
            full = Path(dirpath) / d
            if d == "__pycache__" or _pruned(rel, prune):
                continue
            if full.is_symlink():  # a symlinked folder (inside a .framework): copy the link
                target = dst / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    target.unlink()
                os.symlink(os.readlink(full), target)
                copied += 1
                continue
            keep.append(d)
        dirnames[:] = keep
        (dst / rel_dir).mkdir(parents=True, exist_ok=True)
        for f in filenames:
            rel = (rel_dir / f).as_posix()
            if _pruned(rel, prune) or f.endswith(".pyc"):
                continue
            source, target = Path(dirpath) / f, dst / rel
            if target.is_symlink() or target.exists():
                target.unlink()
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
            copied += 1
    return copied


def vendor(app: Path, packages: list[str] | None = None, log=print) -> list[Path]:
    """Copy each of ``packages`` (default VENDORED_PACKAGES), its dist-info and any companion
    library folder into the bundle's lib/pythonX.Y."""
    packages = list(config.VENDORED_PACKAGES if packages is None else packages)
    target_root = site_dir(app)
    written = []
    for name in packages:
        src = package_dir(name)
        dst = target_root / name
        if dst.exists():
            shutil.rmtree(dst)
        count = copy_package(src, dst, config.VENDOR_PRUNE.get(name, []))
        log(f"vendor: {name}: {count} files from {src}")
        written.append(dst)
        for extra in dist_info_dirs(name) + companion_dirs(name):
            extra_dst = target_root / extra.name
            if extra_dst.exists():
                shutil.rmtree(extra_dst)
            shutil.copytree(extra, extra_dst, symlinks=True)
            written.append(extra_dst)
    # The repository's resources folder may carry a __pycache__ from running make_icons.py.
    for cache in (app / "Contents" / "Resources" / "resources").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    fix_metallib(app, log=log)
    return written


def fix_metallib(app: Path, log=print) -> list[Path]:
    """Make sure every libmlx.dylib in the bundle has mlx.metallib beside it.

    MLX looks for its Metal kernels next to the library it runs from. Should any tool have
    copied libmlx.dylib elsewhere (Contents/Frameworks), link the metallib there too, as a
    relative symlink, so the 100+ MB file is stored once.
    """
    libs = sorted(p for p in app.rglob("libmlx.dylib") if not p.is_symlink())
    metallibs = sorted(p for p in app.rglob("mlx.metallib") if not p.is_symlink())
    made = []
    if not libs:
        return made
    if not metallibs:
        raise FileNotFoundError(f"{app}: libmlx.dylib is bundled but no mlx.metallib is")
    canonical = metallibs[0]
    for lib in libs:
        beside = lib.parent / "mlx.metallib"
        if beside.exists():
            continue
        os.symlink(os.path.relpath(canonical, lib.parent), beside)
        log(f"fix-metallib: linked {beside.relative_to(app)} -> {canonical.relative_to(app)}")
        made.append(beside)
    return made


# --- checks ------------------------------------------------------------------------------------


def expected_paths(app: Path, patterns: list[str] | None = None) -> dict[str, list[Path]]:
    """Each BUNDLE_FILES pattern -> the paths matching it in the bundle (empty list: missing)."""
    patterns = config.BUNDLE_FILES if patterns is None else patterns
    try:
        site = site_dir(app).relative_to(app).as_posix()
    except FileNotFoundError:
        site = "Contents/Resources/lib/python3.*"
    result = {}
    for pattern in patterns:
        rel = pattern.replace("{site}", site)
        result[pattern] = (
            sorted(app.glob(rel))
            if any(c in rel for c in "*?[")
            else ([app / rel] if (app / rel).exists() or (app / rel).is_symlink() else [])
        )
    return result


def verify(app: Path, plist_expected: dict | None = None) -> list[str]:
    """Everything wrong with a built bundle (an empty list when it looks right)."""
    problems = []
    if not app.is_dir():
        return [f"{app}: no such bundle"]
    for pattern, found in expected_paths(app).items():
        if not found:
            problems.append(f"missing: {pattern}")
    info = app / "Contents" / "Info.plist"
    if info.is_file():
        with info.open("rb") as fp:
            plist = plistlib.load(fp)
        for key, want in (config.PLIST if plist_expected is None else plist_expected).items():
            if plist.get(key) != want:
                problems.append(f"Info.plist {key}: {plist.get(key)!r}, expected {want!r}")
        icon = plist.get("CFBundleIconFile", "")
        if icon and not (app / "Contents" / "Resources" / icon).is_file():
            problems.append(f"Info.plist names icon {icon!r}, not in Contents/Resources")
    for lib in app.rglob("libmlx.dylib"):
        if not (lib.parent / "mlx.metallib").exists():
            problems.append(
                f"{lib.relative_to(app)} has no mlx.metallib beside it (MLX won't find its kernels)"
            )
    qtcores = [p for p in app.rglob("QtCore.framework") if not p.is_symlink()]
    if len(qtcores) > 1:
        problems.append(
            "Qt is in the bundle twice (two Qt copies in one process crash): "
            + ", ".join(str(p.relative_to(app)) for p in qtcores)
        )
    qtconf = app / "Contents" / "Resources" / "qt.conf"
    if qtconf.is_file() and "Plugins" not in qtconf.read_text(errors="replace"):
        problems.append(
            "Contents/Resources/qt.conf without a Plugins path: Qt would look for its plugins in "
            "Contents/PlugIns and not find libqcocoa (delete the file)"
        )
    return problems


def macho_files(app: Path) -> list[Path]:
    """Every Mach-O file in the bundle, deepest first (the order to sign them in)."""
    found = []
    for path in app.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            with path.open("rb") as fp:
                head = fp.read(8)
        except OSError:
            continue
        if head[:4] in MACHO_MAGICS:
            if head[:4] == b"\xca\xfe\xba\xbe" and int.from_bytes(head[4:8], "big") > 30:
                continue  # a Java class file, not a universal binary
            found.append(path)
    return sorted(found, key=lambda p: (-len(p.parts), str(p)))


SUBCOMPONENT = re.compile(r"In subcomponent: (.+?)\s*$", re.M)


def sign(
    app: Path,
    identity: str = "-",
    entitlements: Path | None = None,
    run=subprocess.run,
    log=print,
    max_rounds: int = 1000,
) -> list[str]:
    """codesign the bundle; returns the commands run.

    Ad hoc (identity "-"): ``codesign --force --deep --sign - Finetune.app``. With a Developer ID:
    every Mach-O file inside out first (--deep does not reach the extension modules and dylibs
    under Contents/Resources, and notarization wants them all), with the hardened runtime and the
    entitlements, then the app. Either way, when codesign stops at a nested bundle it will not
    sign in passing ("code object is not signed at all / In subcomponent: X", say a Qt
    .framework under Resources), sign X on its own and try again, as py2app's own ad-hoc step does.
    """
    base = ["codesign", "--force", "--sign", identity]
    if identity != "-":
        ents = entitlements or config.ENTITLEMENTS
        base += ["--timestamp", "--options", "runtime", "--entitlements", str(ents)]
    commands: list[str] = []

    def codesign(target: Path | str, *extra: str):
        cmd = [*base, *extra, str(target)]
        commands.append(" ".join(cmd))
        return run(cmd, capture_output=True, text=True)

    if identity != "-":
        for binary in macho_files(app):
            result = codesign(binary)
            if result.returncode != 0:
                raise RuntimeError(f"codesign {binary} failed:\n{result.stderr}")
    extra = ("--deep",) if identity == "-" else ()
    tried: set[str] = set()
    for _ in range(max_rounds):
        result = codesign(app, *extra)
        if result.returncode == 0:
            log(f"sign: {app} signed ({'ad hoc' if identity == '-' else identity})")
            return commands
        match = SUBCOMPONENT.search(result.stderr or "")
        if not match or match.group(1) in tried:
            raise RuntimeError(f"codesign {app} failed:\n{result.stderr}")
        nested = match.group(1)
        tried.add(nested)
        log(f"sign: signing nested {nested} first")
        inner = codesign(nested)
        if inner.returncode != 0:
            raise RuntimeError(f"codesign {nested} failed:\n{inner.stderr}")
    raise RuntimeError(f"codesign {app}: gave up after {max_rounds} nested components")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def wheel_macos_floor(dist_name: str) -> tuple[int, ...] | None:
    """The lowest macOS an installed wheel's platform tag allows (macosx_14_0_arm64 -> (14, 0))."""
    try:
        text = metadata.distribution(dist_name).read_text("WHEEL") or ""
    except metadata.PackageNotFoundError:
        return None
    floors = [
        (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"^Tag:\s*\S+-\S+-macosx_(\d+)_(\d+)_\w+\s*$", text, re.M)
    ]
    return min(floors) if floors else None


def check_env(require_mac: bool = True) -> list[str]:
    """Problems with this machine as a build host for Finetune.app."""
    problems = []
    if require_mac:
        if sys.platform != "darwin":
            problems.append(f"py2app builds macOS apps on macOS; this is {sys.platform}")
        elif platform.machine() != "arm64":
            problems.append(
                f"this Python runs as {platform.machine()}; use a native arm64 Python "
                "(MLX needs Apple silicon)"
            )
        if sys.platform == "darwin" and not (
            sysconfig.get_config_var("PYTHONFRAMEWORK") or sysconfig.get_config_var("Py_ENABLE_SHARED")
        ):
            problems.append(
                "this Python has neither a framework nor a shared libpython, which py2app needs: "
                "use the python.org installer or Homebrew's python"
            )
        if not config._installed("py2app"):
            problems.append('py2app is missing: pip install -e ".[macos]"')
        else:
            version = metadata.version("py2app")
            if _version_tuple(version) < (0, 28):
                problems.append(f"py2app {version} is too old; need 0.28 or later")
    for name in [*config.PACKAGES, *config.VENDORED_PACKAGES]:
        if not config._installed(name):
            problems.append(f"{name} is not installed (pip install -e '.[macos]')")
    minimum = _version_tuple(config.MIN_MACOS)
    for dist in ("mlx", "mlx-metal"):
        floor = wheel_macos_floor(dist)
        if floor and floor > minimum:
            problems.append(
                f"{dist} is the wheel for macOS {floor[0]}.{floor[1]} and later, but the app declares "
                f"macOS {config.MIN_MACOS} (LSMinimumSystemVersion): its Metal kernels would not load on "
                f"older systems. Install the macosx_{minimum[0]}_{minimum[1]} wheels (packaging/"
                "docs/macos.md, 'Building for older macOS'), or build with "
                f"FINETUNE_MIN_MACOS={floor[0]}.{floor[1]}"
            )
    sys.path.insert(0, str(config.ROOT / "resources"))
    try:
        import make_icons

        problems += [f"icons: {p}" for p in make_icons.check()]
    finally:
        sys.path.remove(str(config.ROOT / "resources"))
    return problems


# --- CLI ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("check-env", help="is this machine ready to build the app?")
    env.add_argument("--no-mac", action="store_true", help="skip the macOS/py2app checks")
    signer = sub.add_parser("sign", help="codesign a built bundle (ad hoc unless --identity)")
    signer.add_argument("app", type=Path, nargs="?", default=config.APP_BUNDLE)
    signer.add_argument("--identity", default="-", help='e.g. "Developer ID Application: Name (TEAMID)"')
    signer.add_argument("--entitlements", type=Path, default=config.ENTITLEMENTS)
    for name, text in (
        ("vendor", "copy mlx, PySide6, shiboken6 into a built bundle"),
        ("verify", "check a built bundle file by file"),
        ("macho-files", "list the Mach-O files of a bundle, deepest first"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("app", type=Path, nargs="?", default=config.APP_BUNDLE)
    args = parser.parse_args(argv)

    if args.command == "check-env":
        problems = check_env(require_mac=not args.no_mac)
        for line in problems:
            print(f"check-env: {line}", file=sys.stderr)
        if not problems:
            print(f"check-env: ready to build {config.APP_NAME} {config.VERSION} (macOS {config.MIN_MACOS}+)")
        return 1 if problems else 0
    if args.command == "vendor":
        vendor(args.app)
        return 0
    if args.command == "verify":
        problems = verify(args.app)
        for line in problems:
            print(f"verify: {line}", file=sys.stderr)
        if not problems:
            print(f"verify: {args.app} has all {len(config.BUNDLE_FILES)} required paths; Info.plist matches")
        return 1 if problems else 0
    if args.command == "sign":
        try:
            sign(args.app, args.identity, args.entitlements)
        except RuntimeError as err:
            print(f"sign: {err}", file=sys.stderr)
            return 1
        return 0
    for path in macho_files(args.app):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
