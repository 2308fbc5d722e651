"""The macOS app build (py2app configuration, bundle checks, launcher), the Linux desktop entry,
and the first-launch welcome dialog. py2app cannot run on Linux: these tests read its
configuration and run the post-build tools against a bundle-shaped folder."""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import finetune_app

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
RESOURCES = ROOT / "resources"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


@pytest.fixture(scope="module")
def config():
    saved = os.environ.pop("FINETUNE_MIN_MACOS", None)
    try:
        module = load("setup_py2app", PACKAGING / "setup_py2app.py")
    finally:
        if saved is not None:
            os.environ["FINETUNE_MIN_MACOS"] = saved
    sys.modules.setdefault("setup_py2app", module)
    return module


@pytest.fixture(scope="module")
def tools(config):
    sys.path.insert(0, str(PACKAGING))
    try:
        return load("bundle_tools", PACKAGING / "bundle_tools.py")
    finally:
        sys.path.remove(str(PACKAGING))


# --- the py2app configuration ------------------------------------------------------------------


def test_config_imports_without_py2app(config):
    assert "py2app" not in sys.modules
    for name in ("APP", "DATA_FILES", "OPTIONS", "PLIST"):
        assert hasattr(config, name), name


def test_entry_point_is_the_launcher(config):
    assert config.APP == [str(PACKAGING / "Finetune.py")]
    assert Path(config.APP[0]).is_file()
    source = Path(config.APP[0]).read_text()
    assert '["gui"' in source and "finetune_app.cli" in source


def test_icon_and_resources_go_in(config):
    assert config.OPTIONS["iconfile"] == str(RESOURCES / "icon" / "Finetune.icns")
    assert Path(config.OPTIONS["iconfile"]).is_file()
    assert config.PLIST["CFBundleIconFile"] == "Finetune.icns"
    assert config.DATA_FILES == [("", [str(RESOURCES)])]
    assert (RESOURCES / "icon" / "finetune-icon.svg").is_file()


def test_plist_values(config):
    plist = config.PLIST
    assert plist["CFBundleShortVersionString"] == finetune_app.__version__
    assert plist["CFBundleVersion"] == finetune_app.__version__
    assert config.VERSION == finetune_app.__version__
    assert plist["CFBundleIdentifier"] == "app.finetune.Finetune"
    assert plist["CFBundleName"] == plist["CFBundleDisplayName"] == "Finetune"
    assert plist["LSMinimumSystemVersion"] == "14.0"
    assert plist["NSRequiresAquaSystemAppearance"] is False
    assert plist["NSHighResolutionCapable"] is True
    assert plist["LSApplicationCategoryType"] == "public.app-category.developer-tools"
    assert "Finetune" in plist["NSHumanReadableCopyright"]
    assert plist["LSArchitecturePriority"] == ["arm64"]
    assert plistlib.loads(plistlib.dumps(plist)) == plist  # serialisable as an Info.plist
    assert config.OPTIONS["plist"] is plist


def test_document_types_cover_dataset_folders_jsonl_json_csv(config):
    types = config.PLIST["CFBundleDocumentTypes"]
    content_types = {uti for t in types for uti in t["LSItemContentTypes"]}
    assert {
        "public.folder",
        "public.json",
        "public.comma-separated-values-text",
        config.JSONL_UTI,
    } <= content_types
    for t in types:
        assert t["CFBundleTypeRole"] == "Viewer"
        assert t["LSHandlerRank"] == "Alternate"  # never steal .json/.csv/folders from other apps
        assert t["CFBundleTypeName"]
    (jsonl,) = config.PLIST["UTImportedTypeDeclarations"]
    assert jsonl["UTTypeIdentifier"] == config.JSONL_UTI
    assert "jsonl" in jsonl["UTTypeTagSpecification"]["public.filename-extension"]
    assert "public.text" in jsonl["UTTypeConformsTo"]


def test_packages_include_the_ml_and_qt_stack(config):
    bundled = set(config.OPTIONS["packages"]) | set(config.VENDORED_PACKAGES)
    needed = {
        "finetune_app", "mlx", "mlx_vlm", "mlx_lm", "PySide6", "shiboken6", "pyqtgraph", "transformers",
        "tokenizers", "safetensors", "huggingface_hub", "PIL", "numpy", "coremltools", "certifi",
    }  # fmt: skip
    assert needed <= bundled, needed - bundled
    # The vendored ones are copied in after py2app, so py2app itself must leave them alone.
    assert set(config.VENDORED_PACKAGES) <= set(config.OPTIONS["excludes"])
    assert not set(config.VENDORED_PACKAGES) & set(config.OPTIONS["packages"])
    assert set(config.PACKAGES) <= set(config.OPTIONS["packages"])
    for name in config.OPTIONS["packages"]:  # py2app errors on a package it cannot find
        assert importlib.util.find_spec(name) is not None, name


def test_other_py2app_options(config):
    options = config.OPTIONS
    assert options["argv_emulation"] is False
    assert options["arch"] == "arm64"
    assert options["strip"] is False
    assert Path(options["dist_dir"]) == ROOT / "dist"
    assert Path(options["bdist_base"]).is_relative_to(ROOT / "build")
    for heavy in ("torch", "tensorflow", "tkinter", "PyQt5"):
        assert heavy in options["excludes"]


def test_setup_kwargs_disable_autodiscovery_and_install_requires(config):
    kwargs = config.setup_kwargs()
    assert kwargs["packages"] == [] and kwargs["py_modules"] == []
    assert "install_requires" not in kwargs
    assert kwargs["options"] == {"py2app": config.OPTIONS}
    assert kwargs["app"] == config.APP and kwargs["data_files"] == config.DATA_FILES
    assert kwargs["name"] == "Finetune" and kwargs["version"] == finetune_app.__version__


def test_setup_script_refuses_the_repository_root():
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "setup_py2app.py"), "py2app"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "cd packaging" in result.stderr


def test_minimum_macos_can_be_raised_for_a_build(monkeypatch):
    monkeypatch.setenv("FINETUNE_MIN_MACOS", "15.0")
    module = load("setup_py2app_15", PACKAGING / "setup_py2app.py")
    assert module.PLIST["LSMinimumSystemVersion"] == "15.0"


def test_bundle_files_name_metallib_and_qt_plugins(config):
    files = "\n".join(config.BUNDLE_FILES)
    for needed in (
        "mlx/lib/mlx.metallib", "mlx/lib/libmlx.dylib", "platforms/libqcocoa.dylib",
        "styles/libqmacstyle.dylib", "imageformats/libqjpeg.dylib", "Contents/Resources/Finetune.icns",
        "Contents/Resources/resources/icon/finetune-icon.svg",
    ):  # fmt: skip
        assert needed in files, needed


def test_entitlements(config):
    with config.ENTITLEMENTS.open("rb") as fp:
        ents = plistlib.load(fp)
    assert ents == {
        "com.apple.security.cs.allow-jit": True,
        "com.apple.security.cs.disable-library-validation": True,
    }


def test_build_script_is_sound_shell():
    script = PACKAGING / "build_macos.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for step in ("bundle_tools.py check-env", "setup_py2app.py py2app", "bundle_tools.py vendor",
                 "bundle_tools.py verify", "bundle_tools.py sign", "--selftest"):  # fmt: skip
        assert step in text, step
    if sys.platform != "darwin":  # (on a Mac this would start a real build)
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "Apple-silicon Mac" in result.stderr


# --- post-build tools on a bundle-shaped folder ------------------------------------------------

SITE = "Contents/Resources/lib/python3.11"


def fake_bundle(tmp_path: Path, config) -> Path:
    """A folder shaped like a finished Finetune.app: every BUNDLE_FILES path, the real
    resources and icon, an Info.plist from PLIST."""
    app = tmp_path / "dist" / "Finetune.app"
    for pattern in config.BUNDLE_FILES:
        rel = pattern.replace("{site}", SITE).replace("*", "311")
        path = app / rel
        if Path(rel).suffix or rel.endswith("MacOS/Finetune"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xcf\xfa\xed\xfe" + b"\0" * 28 if rel.endswith((".so", ".dylib")) else b"x")
        else:
            path.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(app / "Contents/Resources/resources")
    shutil.copytree(
        RESOURCES, app / "Contents/Resources/resources", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(RESOURCES / "icon" / "Finetune.icns", app / "Contents/Resources/Finetune.icns")
    with (app / "Contents/Info.plist").open("wb") as fp:
        plistlib.dump({**config.PLIST, "CFBundleExecutable": "Finetune"}, fp)
    return app


def test_verify_accepts_a_complete_bundle(tools, config, tmp_path):
    app = fake_bundle(tmp_path, config)
    assert tools.site_dir(app) == app / SITE
    assert tools.verify(app) == []
    assert tools.main(["verify", str(app)]) == 0


def test_verify_names_each_missing_file(tools, config, tmp_path):
    app = fake_bundle(tmp_path, config)
    (app / SITE / "mlx/lib/mlx.metallib").unlink()
    shutil.rmtree(app / SITE / "PySide6/Qt/plugins/platforms")
    (app / "Contents/Resources/Finetune.icns").unlink()
    problems = "\n".join(tools.verify(app))
    assert "missing: {site}/mlx/lib/mlx.metallib" in problems
    assert "mlx/lib/libmlx.dylib has no mlx.metallib beside it" in problems
    assert "missing: {site}/PySide6/Qt/plugins/platforms/libqcocoa.dylib" in problems
    assert "missing: Contents/Resources/Finetune.icns" in problems
    assert "names icon 'Finetune.icns'" in problems
    assert tools.main(["verify", str(app)]) == 1


def test_verify_checks_info_plist_values(tools, config, tmp_path):
    app = fake_bundle(tmp_path, config)
    with (app / "Contents/Info.plist").open("wb") as fp:
        plistlib.dump({**config.PLIST, "CFBundleShortVersionString": "9.9", "CFBundleIdentifier": "x"}, fp)
    problems = "\n".join(tools.verify(app))
    assert "CFBundleShortVersionString: '9.9'" in problems and "CFBundleIdentifier" in problems


def test_verify_catches_a_second_qt_and_a_bare_qt_conf(tools, config, tmp_path):
    app = fake_bundle(tmp_path, config)
    (app / "Contents/Frameworks/QtCore.framework").mkdir(parents=True)
    (app / "Contents/Resources/qt.conf").write_text("; Qt Configuration file\n[Paths]\n")
    problems = "\n".join(tools.verify(app))
    assert "Qt is in the bundle twice" in problems
    assert "qt.conf" in problems


def test_metallib_is_linked_beside_a_relocated_libmlx(tools, config, tmp_path):
    app = fake_bundle(tmp_path, config)
    stray = app / "Contents/Frameworks/libmlx.dylib"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"\xcf\xfa\xed\xfe")
    assert "Contents/Frameworks/libmlx.dylib has no mlx.metallib" in "\n".join(tools.verify(app))
    made = tools.fix_metallib(app, log=lambda *_: None)
    assert made == [app / "Contents/Frameworks/mlx.metallib"]
    assert made[0].is_symlink()
    assert made[0].resolve() == (app / SITE / "mlx/lib/mlx.metallib").resolve()
    assert tools.verify(app) == []
    assert tools.fix_metallib(app, log=lambda *_: None) == []  # idempotent


def make_fake_installed_package(root: Path) -> Path:
    """site-packages with a namespace package 'fakemlx' (like mlx) and its dist-info."""
    site = root / "site-packages"
    pkg = site / "fakemlx"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "include" / "fakemlx").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "core.cpython-311-darwin.so").write_bytes(b"\xcf\xfa\xed\xfe" + b"\0" * 28)
    (pkg / "lib" / "libmlx.dylib").write_bytes(b"\xcf\xfa\xed\xfe" + b"\0" * 28)
    (pkg / "lib" / "mlx.metallib").write_bytes(b"MTLB")
    (pkg / "lib" / "libmlx.current.dylib").symlink_to("libmlx.dylib")
    (pkg / "include" / "fakemlx" / "array.h").write_text("//")
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    (pkg / "utils.py").write_text("X = 1\n")
    (site / "fakemlx.libs").mkdir()  # what auditwheel puts beside a package on Linux
    (site / "fakemlx.libs" / "liblapack-1234.so.3").write_bytes(b"\x7fELF")
    info = site / "fakemlx-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakemlx\nVersion: 1.0\n")
    (info / "WHEEL").write_text(
        "Wheel-Version: 1.0\nTag: cp311-cp311-macosx_15_0_arm64\nTag: cp311-cp311-macosx_26_0_arm64\n"
    )
    files = [p.relative_to(site).as_posix() for p in sorted(pkg.rglob("*")) if p.is_file()]
    files += ["fakemlx.libs/liblapack-1234.so.3", "../../bin/fakemlx-tool"]
    files += ["fakemlx-1.0.dist-info/METADATA", "fakemlx-1.0.dist-info/WHEEL", "fakemlx-1.0.dist-info/RECORD"]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    return site


def test_vendor_copies_a_package_whole_with_its_dist_info(tools, config, tmp_path, monkeypatch):
    site = make_fake_installed_package(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(config.VENDOR_PRUNE, "fakemlx", ["include"])
    app = fake_bundle(tmp_path, config)
    written = tools.vendor(app, ["fakemlx"], log=lambda *_: None)
    dest = app / SITE / "fakemlx"
    assert dest in written and (app / SITE / "fakemlx-1.0.dist-info") in written
    assert (dest / "lib" / "libmlx.dylib").read_bytes().startswith(b"\xcf\xfa\xed\xfe")
    assert (dest / "lib" / "mlx.metallib").read_bytes() == b"MTLB"
    assert (dest / "lib" / "libmlx.current.dylib").is_symlink()
    assert (dest / "utils.py").is_file() and (dest / "core.cpython-311-darwin.so").is_file()
    assert not (dest / "include").exists()  # pruned
    assert not (dest / "__pycache__").exists()
    assert (app / SITE / "fakemlx-1.0.dist-info" / "METADATA").is_file()
    assert (app / SITE / "fakemlx.libs" / "liblapack-1234.so.3").is_file()
    assert sorted(p.name for p in (app / SITE).iterdir() if p.name.startswith("fake")) == [
        "fakemlx",
        "fakemlx-1.0.dist-info",
        "fakemlx.libs",
    ]
    assert tools.wheel_macos_floor("fakemlx") == (15, 0)


def test_vendored_mlx_imports_from_the_bundle_alone(tools, config, tmp_path):
    # The real thing: copy the installed mlx (a namespace package with a native library) into a
    # bundle-shaped folder and import it from there with no site-packages at all.
    app = fake_bundle(tmp_path, config)
    shutil.rmtree(app / SITE / "mlx")
    tools.vendor(app, ["mlx"], log=lambda *_: None)
    site = app / SITE
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import mlx.core as mx; "
        "assert mx.__file__.startswith(sys.path[0]), mx.__file__; "
        "print(int((mx.ones((2, 2)) @ mx.ones((2, 2))).sum().item()))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-B", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"
    assert any((site / "mlx" / "lib").glob("libmlx.*"))


def test_vendor_prune_lists_spare_what_the_app_needs(config):
    import fnmatch

    keep = [
        "QtCore.abi3.so", "QtGui.abi3.so", "QtWidgets.abi3.so", "QtSvg.abi3.so", "QtOpenGLWidgets.abi3.so",
        "Qt/lib/QtCore.framework", "Qt/lib/QtGui.framework", "Qt/lib/QtSvg.framework",
        "Qt/lib/QtDBus.framework",
        "Qt/plugins/platforms/libqcocoa.dylib", "Qt/plugins/styles/libqmacstyle.dylib",
        "Qt/plugins/imageformats/libqjpeg.dylib", "Qt/plugins/iconengines/libqsvgicon.dylib",
        "Qt/translations/qtbase_de.qm", "__init__.py",
    ]  # fmt: skip
    for path in keep:
        assert not any(fnmatch.fnmatch(path, p) for p in config.VENDOR_PRUNE["PySide6"]), path
    for path in ("Designer.app", "Qt/lib/QtWebEngineCore.framework", "QtWebEngineWidgets.abi3.so", "Qt/qml"):
        assert any(fnmatch.fnmatch(path, p) for p in config.VENDOR_PRUNE["PySide6"]), path
    for path in ("lib/mlx.metallib", "lib/libmlx.dylib", "core.cpython-311-darwin.so", "nn"):
        assert not any(fnmatch.fnmatch(path, p) for p in config.VENDOR_PRUNE["mlx"]), path


def test_real_mlx_and_pyside6_locations_are_found(tools):
    mlx_dir = tools.package_dir("mlx")  # a namespace package: no __init__.py
    assert (mlx_dir / "core").exists() or any(mlx_dir.glob("core.*"))
    assert any(mlx_dir.glob("lib/libmlx.*"))
    assert (tools.package_dir("PySide6") / "QtCore.abi3.so").exists() or any(
        tools.package_dir("PySide6").glob("QtCore.*")
    )
    assert any(d.name.startswith("mlx-") for d in tools.dist_info_dirs("mlx"))
    assert any(d.name.lower().startswith("pyside6") for d in tools.dist_info_dirs("PySide6"))


def test_check_env_flags_an_mlx_wheel_newer_than_the_minimum_macos(tools, monkeypatch):
    monkeypatch.setattr(tools, "wheel_macos_floor", lambda dist: None)
    assert tools.check_env(require_mac=False) == []
    monkeypatch.setattr(tools, "wheel_macos_floor", lambda dist: (15, 0) if dist == "mlx-metal" else None)
    (problem,) = tools.check_env(require_mac=False)
    assert "mlx-metal is the wheel for macOS 15.0" in problem and "FINETUNE_MIN_MACOS=15.0" in problem


def test_macho_files_lists_binaries_deepest_first(tools, tmp_path):
    app = tmp_path / "X.app"
    (app / "Contents/MacOS").mkdir(parents=True)
    (app / "Contents/Resources/lib/pkg").mkdir(parents=True)
    (app / "Contents/MacOS/X").write_bytes(b"\xcf\xfa\xed\xfe" + b"\0" * 28)
    (app / "Contents/Resources/lib/pkg/m.so").write_bytes(b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + b"\0" * 24)
    (app / "Contents/Resources/lib/pkg/A.class").write_bytes(b"\xca\xfe\xba\xbe\x00\x00\x00\x34")
    (app / "Contents/Resources/lib/pkg/data.bin").write_bytes(b"hello")
    (app / "Contents/Resources/lib/pkg/link.so").symlink_to("m.so")
    assert tools.macho_files(app) == [app / "Contents/Resources/lib/pkg/m.so", app / "Contents/MacOS/X"]


class FakeCodesign:
    """Stands in for subprocess.run(["codesign", ...]): fails on the app until each nested
    component listed in ``unsigned`` has been signed."""

    def __init__(self, unsigned=()):
        self.unsigned = list(unsigned)
        self.calls = []

    def __call__(self, cmd, capture_output, text):
        self.calls.append(cmd)
        target = cmd[-1]
        if target in self.unsigned:
            self.unsigned.remove(target)
        elif target.endswith(".app") and self.unsigned:
            stderr = f"{target}: code object is not signed at all\nIn subcomponent: {self.unsigned[0]}\n"
            return subprocess.CompletedProcess(cmd, 1, "", stderr)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_sign_ad_hoc(tools, tmp_path):
    app = tmp_path / "Finetune.app"
    fake = FakeCodesign()
    tools.sign(app, run=fake, log=lambda *_: None)
    assert fake.calls == [["codesign", "--force", "--sign", "-", "--deep", str(app)]]


def test_sign_signs_nested_bundles_it_is_told_about(tools, tmp_path):
    app = tmp_path / "Finetune.app"
    qt = f"{app}/Contents/Resources/lib/python3.11/PySide6/Qt/lib/QtCore.framework"
    fake = FakeCodesign(unsigned=[qt])
    tools.sign(app, run=fake, log=lambda *_: None)
    assert [c[-1] for c in fake.calls] == [str(app), qt, str(app)]


def test_sign_gives_up_on_a_real_failure(tools, tmp_path):
    app = tmp_path / "Finetune.app"

    def broken(cmd, capture_output, text):
        return subprocess.CompletedProcess(cmd, 1, "", "errSecInternalComponent")

    with pytest.raises(RuntimeError, match="errSecInternalComponent"):
        tools.sign(app, run=broken, log=lambda *_: None)


def test_sign_with_a_developer_id_signs_every_binary_first(tools, config, tmp_path):
    app = fake_bundle(tmp_path, config)
    fake = FakeCodesign()
    tools.sign(app, identity="Developer ID Application: X (T)", run=fake, log=lambda *_: None)
    targets = [c[-1] for c in fake.calls]
    assert targets[-1] == str(app)
    assert set(targets[:-1]) == {str(p) for p in tools.macho_files(app)} and len(targets) > 10
    for cmd in fake.calls:
        assert cmd[:4] == ["codesign", "--force", "--sign", "Developer ID Application: X (T)"]
        assert "runtime" in cmd and str(config.ENTITLEMENTS) in cmd and "--deep" not in cmd


# --- the launcher ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher():
    return load("finetune_launcher", PACKAGING / "Finetune.py")


def test_launcher_arguments(launcher):
    assert launcher.document_paths(["-psn_0_12345", "/data/set.jsonl", "/data/folder"]) == [
        "/data/set.jsonl",
        "/data/folder",
    ]
    assert launcher.gui_argv([]) == ["gui"]
    gui_takes_paths = launcher.gui_argv(["/data/set.jsonl"]) == ["gui", "/data/set.jsonl"]
    assert gui_takes_paths or launcher.gui_argv(["/data/set.jsonl"]) == ["gui"]


def test_launcher_sets_qt_plugin_path_only_when_frozen(launcher, monkeypatch):
    monkeypatch.setenv("QT_PLUGIN_PATH", "")  # so that monkeypatch restores the original state
    monkeypatch.delenv("QT_PLUGIN_PATH")
    launcher.configure_environment()
    assert "QT_PLUGIN_PATH" not in os.environ
    monkeypatch.setattr(sys, "frozen", "macosx_app", raising=False)
    launcher.configure_environment()
    assert os.environ["QT_PLUGIN_PATH"].endswith(os.path.join("PySide6", "Qt", "plugins"))


def test_launcher_selftest_passes_here():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "Finetune.py"), "--selftest"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["ok"] and report["app"]["version"] == finetune_app.__version__
    assert report["mlx"]["ok"] and report["qt"]["ok"]
    assert {"png", "jpeg", "svg"} <= set(report["qt"]["image_formats"])


# --- Linux desktop entry -----------------------------------------------------------------------


def read_desktop(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    assert parser.sections() == ["Desktop Entry"]
    return dict(parser["Desktop Entry"])


def test_desktop_file(tmp_path):
    entry = read_desktop(PACKAGING / "linux" / "finetune-app.desktop")
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Finetune"
    assert entry["Exec"] == "finetune-app gui %F"
    assert entry["Icon"] == "finetune-app"
    assert entry["Terminal"] == "false"
    mimetypes = entry["MimeType"].split(";")
    assert entry["MimeType"].endswith(";") and mimetypes[-1] == ""
    assert {"application/jsonl", "application/json", "text/csv", "inode/directory"} <= set(mimetypes)
    categories = entry["Categories"].split(";")
    assert entry["Categories"].endswith(";") and {"Development", "Science"} <= set(categories)
    assert all(value.strip() for value in entry.values())
    validator = shutil.which("desktop-file-validate")
    if validator:
        result = subprocess.run(
            [validator, str(PACKAGING / "linux" / "finetune-app.desktop")], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "error" not in result.stdout.lower()


def test_mime_definition_for_jsonl():
    root = ET.parse(PACKAGING / "linux" / "finetune-app-mime.xml").getroot()
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    (mime,) = root.findall("m:mime-type", ns)
    assert mime.get("type") == "application/jsonl"
    assert "*.jsonl" in [g.get("pattern") for g in mime.findall("m:glob", ns)]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_install_desktop_script(tmp_path):
    from PIL import Image

    exe = tmp_path / "venv" / "bin" / "finetune-app"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    data = tmp_path / "data"
    env = {**os.environ, "XDG_DATA_HOME": str(data), "HOME": str(tmp_path)}
    script = PACKAGING / "linux" / "install-desktop.sh"
    result = subprocess.run(
        ["bash", str(script), "--exec", str(exe)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    installed = read_desktop(data / "applications" / "finetune-app.desktop")
    assert installed["Exec"] == f"{exe} gui %F" and installed["TryExec"] == str(exe)
    for size in (16, 32, 64, 128, 256, 512):
        with Image.open(data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "finetune-app.png") as im:
            assert im.size == (size, size)
    assert (data / "icons/hicolor/scalable/apps/finetune-app.svg").read_bytes() == (
        RESOURCES / "icon/finetune-icon.svg"
    ).read_bytes()
    assert (data / "mime/packages/finetune-app.xml").is_file()
    result = subprocess.run(
        ["bash", str(script), "--uninstall"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    leftovers = [p for p in data.rglob("finetune-app*")]
    assert leftovers == []
    missing = subprocess.run(
        ["bash", str(script)],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "--exec" in missing.stderr


# --- the README section ------------------------------------------------------------------------


def test_readme_section_names_real_files_and_commands(config):
    text = (ROOT / "docs" / "macos.md").read_text()
    for path in sorted(set(re.findall(r"\b((?:packaging|resources)/[\w./-]+\w)", text))):
        assert (ROOT / path).exists(), f"docs/macos.md mentions {path}, which does not exist"
    for command in ("packaging/build_macos.sh", 'pip install -e ".[macos]"', "codesign --force --deep -s -",
                    "mlx.metallib", "libqcocoa.dylib", "packaging/linux/install-desktop.sh",
                    "--selftest"):  # fmt: skip
        assert command in text, command


# --- the first-launch welcome dialog -----------------------------------------------------------


@pytest.fixture
def settings(tmp_path):
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def welcome(monkeypatch):
    monkeypatch.delenv("FINETUNE_NO_WELCOME", raising=False)
    from finetune_app.ui import welcome

    return welcome


def make_dialog(qtbot, welcome, settings, **kwargs):
    kwargs.setdefault("offer_download", True)
    kwargs.setdefault("network_check", None)
    dialog = welcome.WelcomeDialog(settings=settings, **kwargs)
    qtbot.addWidget(dialog)
    return dialog


def test_should_show_welcome(welcome, settings, monkeypatch):
    assert welcome.should_show_welcome(settings)
    welcome.set_show_welcome(settings, False)
    assert not welcome.should_show_welcome(settings)
    welcome.set_show_welcome(settings, True)
    assert welcome.should_show_welcome(settings)
    monkeypatch.setenv("FINETUNE_NO_WELCOME", "1")
    assert not welcome.should_show_welcome(settings)


def test_settings_store_names(welcome, qapp):
    store = welcome.app_settings()
    assert (store.organizationName(), store.applicationName()) == ("Finetune", "Finetune")
    assert welcome.DONT_SHOW_KEY == "welcome/dontShowAgain"


@pytest.mark.parametrize("button, choice", [("demo_button", "demo"), ("download_button", "download")])
def test_choosing_an_offer(qtbot, welcome, settings, button, choice):
    from PySide6.QtWidgets import QDialog

    dialog = make_dialog(qtbot, welcome, settings)
    dialog.show()
    with qtbot.waitSignal(dialog.choiceMade, timeout=2000) as signal:
        getattr(dialog, button).click()
    assert signal.args == [choice]
    assert dialog.choice == choice
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert welcome.should_show_welcome(settings)  # box not ticked: shown again next time


def test_skip_escape_and_dont_show_again(qtbot, welcome, settings):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDialog

    dialog = make_dialog(qtbot, welcome, settings)
    dialog.show()
    dialog.dont_show_checkbox.setChecked(True)
    with qtbot.waitSignal(dialog.choiceMade, timeout=2000) as signal:
        dialog.skip_button.click()
    assert signal.args == ["skip"] and dialog.choice == "skip"
    assert dialog.result() == QDialog.DialogCode.Rejected
    assert not welcome.should_show_welcome(settings)

    again = make_dialog(qtbot, welcome, settings)
    assert again.dont_show_checkbox.isChecked()  # reflects the stored choice
    again.dont_show_checkbox.setChecked(False)
    again.show()
    qtbot.keyClick(again, Qt.Key.Key_Escape)
    assert again.choice == "skip" and again.result() == QDialog.DialogCode.Rejected
    assert welcome.should_show_welcome(settings)


def test_download_offer_shows_name_and_size_first(qtbot, welcome, settings):
    dialog = make_dialog(qtbot, welcome, settings)
    text = dialog.download_button.text()
    assert "FastVLM-0.5B" in text and "1.2 GB" in text
    assert dialog.download_button.isVisibleTo(dialog)
    custom = make_dialog(qtbot, welcome, settings, offer=welcome.DownloadOffer("Tiny-VLM", 850_000_000))
    assert "Tiny-VLM" in custom.download_button.text() and "850 MB" in custom.download_button.text()


def test_no_download_offer_off_the_mac(qtbot, welcome, settings):
    dialog = make_dialog(qtbot, welcome, settings, offer_download=False)
    assert not dialog.download_button.isVisibleTo(dialog)
    assert dialog.demo_button.isVisibleTo(dialog)


def test_download_offered_on_apple_silicon_unless_offline(welcome, monkeypatch):
    monkeypatch.setattr(welcome, "is_apple_silicon_mac", lambda: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert welcome.download_offered()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not welcome.download_offered()
    monkeypatch.setattr(welcome, "is_apple_silicon_mac", lambda: False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert not welcome.download_offered()


@pytest.mark.parametrize("check", [lambda: False, lambda: 1 / 0])
def test_no_network_greys_out_the_download(qtbot, welcome, settings, check):
    dialog = make_dialog(qtbot, welcome, settings, network_check=check)
    dialog.show()
    qtbot.waitUntil(lambda: not dialog.download_button.isEnabled(), timeout=3000)
    assert dialog.network_note.isVisible()
    assert dialog.demo_button.isEnabled()


def test_network_ok_keeps_the_download(qtbot, welcome, settings):
    calls = []
    dialog = make_dialog(qtbot, welcome, settings, network_check=lambda: calls.append(1) or True)
    dialog.show()
    qtbot.waitUntil(lambda: calls == [1], timeout=3000)
    qtbot.wait(50)
    assert dialog.download_button.isEnabled() and not dialog.network_note.isVisible()


def test_run_welcome(qtbot, welcome, settings):
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    def click_demo():
        dialog = QApplication.activeModalWidget()
        assert dialog is not None and dialog.objectName() == "welcomeDialog"
        dialog.demo_button.click()

    QTimer.singleShot(0, click_demo)
    assert welcome.run_welcome(settings=settings, offer_download=False, network_check=None) == "demo"
    welcome.set_show_welcome(settings, False)
    assert welcome.run_welcome(settings=settings) is None


@pytest.mark.parametrize(
    ("size", "text"),
    [(1_200_000_000, "1.2 GB"), (850_000_000, "850 MB"), (1_500, "1.5 KB"), (999, "999 bytes")],
)
def test_format_size(welcome, size, text):
    assert welcome.format_size(size) == text
