"""py2app build of Finetune.app (macOS, Apple silicon). Use packaging/build_macos.sh, which runs

    cd packaging && python setup_py2app.py py2app

and then copies MLX and Qt in whole (packaging/bundle_tools.py), checks and signs the bundle.

Run from ``packaging/``, not the repository root: setuptools reads a ``pyproject.toml`` in the
current directory, and py2app (0.28.9 and later) refuses the ``install_requires`` it would bring.

Importing this module runs nothing and needs no py2app: ``APP``, ``DATA_FILES``, ``OPTIONS``,
``PLIST`` and the lists below are plain data (tests/test_packaging.py reads them on Linux).

How the pieces get into ``Finetune.app/Contents``:

* ``MacOS/Finetune``: py2app's stub; it runs ``packaging/Finetune.py`` (``APP``).
* ``Resources/Finetune.icns``: ``OPTIONS["iconfile"]``; ``CFBundleIconFile`` names it.
* ``Resources/resources/``: the repository's ``resources/`` folder (``DATA_FILES``);
  ``finetune_app.resources`` looks there when ``sys.frozen == "macosx_app"``.
* ``Resources/lib/python3.X/<package>/``: everything in ``PACKAGES``, copied as whole folders
  (package data such as tokenizer JSON, certifi's CA file, PIL's plugins included), not zipped.
* ``VENDORED_PACKAGES`` (mlx, PySide6, shiboken6) are kept away from py2app (``excludes``) and
  copied in afterwards, byte for byte, with their dist-info, by ``bundle_tools.py vendor``. Why:
  ``mlx`` is a namespace package (no ``__init__.py``), which py2app's ``packages`` option cannot
  name; MLX finds ``mlx.metallib`` next to ``libmlx.dylib``, and Qt finds its plugins
  (platforms/libqcocoa, styles/libqmacstyle, imageformats/...) relative to QtCore, so both must
  keep their wheel layout, which py2app's macholib pass (moving dylibs into Contents/Frameworks)
  and its PySide6 recipe (an empty qt.conf) would break.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

APP_NAME = "Finetune"
BUNDLE_ID = "app.finetune.Finetune"
# MLX needs macOS 13.5+ on Apple silicon; 14.0 is the oldest we build for and test. The mlx and
# mlx-metal wheels installed at build time must not need a newer macOS (bundle_tools.py checks).
MIN_MACOS = os.environ.get("FINETUNE_MIN_MACOS", "14.0")
COPYRIGHT = "Copyright \u00a9 2026 The Finetune contributors. Released under the MIT License."

ENTRY_POINT = HERE / "Finetune.py"
ICON_FILE = ROOT / "resources" / "icon" / "Finetune.icns"
RESOURCES_DIR = ROOT / "resources"
ENTITLEMENTS = HERE / "entitlements.plist"
DIST_DIR = ROOT / "dist"
BUILD_DIR = ROOT / "build" / "py2app"
APP_BUNDLE = DIST_DIR / f"{APP_NAME}.app"


def read_version(init_file: Path = ROOT / "finetune_app" / "__init__.py") -> str:
    """``finetune_app.__version__``, read without importing the package."""
    tree = ast.parse(init_file.read_text(encoding="utf-8"), filename=str(init_file))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise RuntimeError(f"no __version__ = '...' in {init_file}")


VERSION = read_version()

# --- what the app opens: dataset folders, JSON Lines, JSON, CSV --------------------------------
# Rank "Alternate": Finetune appears under "Open With" and takes drops on its Dock icon, but never
# becomes the default app for folders or .json/.csv files.
JSONL_UTI = "org.jsonlines.jsonl"

DOCUMENT_TYPES = [
    {
        "CFBundleTypeName": "Dataset Folder",
        "CFBundleTypeRole": "Viewer",
        "LSHandlerRank": "Alternate",
        "LSItemContentTypes": ["public.folder"],
    },
    {
        "CFBundleTypeName": "JSON Lines Dataset",
        "CFBundleTypeRole": "Viewer",
        "LSHandlerRank": "Alternate",
        "LSItemContentTypes": [JSONL_UTI],
    },
    {
        "CFBundleTypeName": "JSON Dataset",
        "CFBundleTypeRole": "Viewer",
        "LSHandlerRank": "Alternate",
        "LSItemContentTypes": ["public.json"],
    },
    {
        "CFBundleTypeName": "CSV Dataset",
        "CFBundleTypeRole": "Viewer",
        "LSHandlerRank": "Alternate",
        "LSItemContentTypes": ["public.comma-separated-values-text"],
    },
]

# macOS has no system type for .jsonl: declare it (imported, i.e. not owned by this app).
IMPORTED_TYPES = [
    {
        "UTTypeIdentifier": JSONL_UTI,
        "UTTypeDescription": "JSON Lines",
        "UTTypeConformsTo": ["public.text", "public.data"],
        "UTTypeTagSpecification": {
            "public.filename-extension": ["jsonl", "ndjson"],
            "public.mime-type": ["application/jsonl", "application/x-ndjson"],
        },
    }
]

FOLDER_ACCESS = "Finetune reads the pictures and captions of the datasets you choose."

PLIST = {
    "CFBundleName": APP_NAME,
    "CFBundleDisplayName": APP_NAME,
    "CFBundleIdentifier": BUNDLE_ID,
    "CFBundleShortVersionString": VERSION,
    "CFBundleVersion": VERSION,
    "CFBundleIconFile": ICON_FILE.name,
    "CFBundleDevelopmentRegion": "en",
    "CFBundlePackageType": "APPL",
    "LSMinimumSystemVersion": MIN_MACOS,
    "LSArchitecturePriority": ["arm64"],
    "LSRequiresNativeExecution": True,  # never under Rosetta: MLX needs the arm64 GPU path
    "LSApplicationCategoryType": "public.app-category.developer-tools",
    "NSHumanReadableCopyright": COPYRIGHT,
    "NSHighResolutionCapable": True,
    "NSRequiresAquaSystemAppearance": False,  # follow the system's dark mode
    "NSSupportsAutomaticGraphicsSwitching": True,
    "CFBundleDocumentTypes": DOCUMENT_TYPES,
    "UTImportedTypeDeclarations": IMPORTED_TYPES,
    # Shown in the privacy prompts when a dataset lives in one of these folders.
    "NSDesktopFolderUsageDescription": FOLDER_ACCESS,
    "NSDocumentsFolderUsageDescription": FOLDER_ACCESS,
    "NSDownloadsFolderUsageDescription": FOLDER_ACCESS,
    "NSRemovableVolumesUsageDescription": "Finetune reads datasets and models stored on external drives.",
}

# --- what goes in -------------------------------------------------------------------------------
APP = [str(ENTRY_POINT)]
# The resources folder, whole, as Contents/Resources/resources.
DATA_FILES = [("", [str(RESOURCES_DIR)])]

# Copied as whole package folders by py2app (imports it cannot see, package data, C extensions
# that look for files next to themselves).
PACKAGES = [
    "finetune_app",  # its CLI modules are imported by name (importlib), invisible to py2app
    "mlx_vlm",  # model code imported by model type at run time
    "mlx_lm",
    "pyqtgraph",
    "transformers",  # lazy imports everywhere
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "PIL",
    "numpy",
    "coremltools",
    "certifi",  # cacert.pem, for HTTPS downloads from the Hugging Face hub
]
# Included as whole folders too, when installed (optional or indirect dependencies).
OPTIONAL_PACKAGES = [
    "jinja2",  # chat templates
    "sentencepiece",
    "hf_xet",  # fast hub downloads
    "regex",
    "yaml",
    "tqdm",
    "httpx",
    "requests",
]
# Copied in whole after py2app, in their wheel layout (see the module docstring).
VENDORED_PACKAGES = ["mlx", "PySide6", "shiboken6"]
# Parts of the vendored packages the app never uses (Qt's web engine, 3D, QML, designer tools,
# nested .app bundles; MLX's C++ headers): smaller bundle, fewer nested bundles to sign.
VENDOR_PRUNE = {
    "PySide6": [
        "*.app",
        "Qt/libexec",
        "Qt/qml",
        "Qt/lib/QtWebEngine*",
        "Qt/lib/Qt3D*",
        "Qt/lib/QtQuick3D*",
        "Qt/lib/QtDesigner*",
        "Qt/lib/QtMultimedia*",
        "Qt/plugins/designer",
        "Qt/plugins/multimedia",
        "Qt/plugins/renderers",
        "Qt/plugins/sceneparsers",
        "Qt/plugins/geometryloaders",
        "Qt/resources/qtwebengine*",
        "Qt/translations/qtwebengine*",
        "QtWebEngine*",
        "Qt3D*",
        "QtQuick3D*",
        "QtDesigner*",
        "QtMultimedia*",
        "include",
        "typesystems",
        "glue",
    ],
    "shiboken6": [],
    "mlx": ["include", "share"],
}
EXCLUDES = [
    *VENDORED_PACKAGES,
    "tkinter",
    "_tkinter",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "torch",
    "torchvision",
    "torchaudio",
    "tensorflow",
    "jax",
    "jaxlib",
    "flax",
    "IPython",
    "notebook",
    "matplotlib",
    "pytest",
    "_pytest",
    "pytestqt",
    "sphinx",
]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def bundled_packages() -> list[str]:
    """PACKAGES plus the OPTIONAL_PACKAGES installed here (py2app errors on a missing one)."""
    return PACKAGES + [name for name in OPTIONAL_PACKAGES if _installed(name)]


OPTIONS = {
    "iconfile": str(ICON_FILE),
    "plist": PLIST,
    "packages": bundled_packages(),
    "excludes": EXCLUDES,
    "arch": "arm64",
    # Qt delivers "open this document" Apple Events itself (QFileOpenEvent); py2app's argv
    # emulation would swallow them before Qt's event loop starts.
    "argv_emulation": False,
    # Keep the wheels' binaries byte for byte (stripping would break their signatures and gains
    # little: wheels ship stripped).
    "strip": False,
    "optimize": 0,  # transformers and friends read docstrings
    "site_packages": False,
    "semi_standalone": False,
    "dist_dir": str(DIST_DIR),
    "bdist_base": str(BUILD_DIR),
}

# Paths every built bundle must have, relative to Finetune.app (bundle_tools.py verify).
# {site} is Contents/Resources/lib/pythonX.Y, where py2app puts whole packages.
BUNDLE_FILES = [
    "Contents/Info.plist",
    f"Contents/MacOS/{APP_NAME}",
    f"Contents/Resources/{ICON_FILE.name}",
    "Contents/Resources/resources/icon/finetune-icon.svg",
    "Contents/Resources/resources/icon/Finetune.iconset/icon_512x512@2x.png",
    "Contents/Resources/resources/tray/trayIdleTemplate.png",
    "Contents/Resources/resources/tray/trayTraining50Template@2x.png",
    "{site}/finetune_app",
    "{site}/finetune_app/cli",
    # MLX: the extension, its library, and the Metal kernels next to the library
    "{site}/mlx/core.cpython-*-darwin.so",
    "{site}/mlx/lib/libmlx.dylib",
    "{site}/mlx/lib/mlx.metallib",
    "{site}/mlx/nn",
    "{site}/mlx/optimizers",
    "{site}/mlx_vlm",
    "{site}/mlx_lm",
    # Qt: bindings, frameworks and the plugins a Mac app needs
    "{site}/PySide6/QtCore.abi3.so",
    "{site}/PySide6/QtGui.abi3.so",
    "{site}/PySide6/QtWidgets.abi3.so",
    "{site}/PySide6/QtSvg.abi3.so",
    "{site}/PySide6/Qt/lib/QtCore.framework",
    "{site}/PySide6/Qt/lib/QtGui.framework",
    "{site}/PySide6/Qt/lib/QtWidgets.framework",
    "{site}/PySide6/Qt/plugins/platforms/libqcocoa.dylib",
    "{site}/PySide6/Qt/plugins/styles/libqmacstyle.dylib",
    "{site}/PySide6/Qt/plugins/imageformats/libqjpeg.dylib",
    "{site}/PySide6/Qt/plugins/imageformats/libqsvg.dylib",
    "{site}/PySide6/Qt/plugins/iconengines/libqsvgicon.dylib",
    "{site}/shiboken6/Shiboken.abi3.so",
    "{site}/pyqtgraph",
    "{site}/transformers",
    "{site}/tokenizers",
    "{site}/safetensors",
    "{site}/huggingface_hub",
    "{site}/PIL",
    "{site}/numpy",
    "{site}/coremltools",
    "{site}/certifi/cacert.pem",
]


def setup_kwargs() -> dict:
    """The keyword arguments for setuptools.setup()."""
    return {
        "name": APP_NAME,
        "version": VERSION,
        "app": APP,
        "data_files": DATA_FILES,
        "options": {"py2app": OPTIONS},
        # Explicitly nothing else: no package autodiscovery in packaging/, no install_requires.
        "packages": [],
        "py_modules": [],
    }


def main() -> None:
    if Path.cwd().resolve() != HERE:
        sys.exit(
            f"run this from {HERE} (see its docstring), e.g.: cd packaging && python setup_py2app.py py2app"
        )
    missing = [p for p in ("py2app",) if not _installed(p)]
    if missing:
        sys.exit('py2app is not installed: pip install -e ".[macos]" (on a Mac)')
    # Build from this checkout's finetune_app even if another copy is installed.
    sys.path.insert(0, str(ROOT))
    from setuptools import setup

    setup(**setup_kwargs())


if __name__ == "__main__":
    main()
