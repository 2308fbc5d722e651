"""The engine never imports Qt: napari's rule, so the core runs headless and in tests."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "finetune_app" / "core"
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "qtpy")


def test_core_imports_no_qt():
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in QT_MODULES:
                    offenders.append(f"{path.relative_to(CORE)}:{node.lineno} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_core_files_exist():
    assert (CORE / "__init__.py").exists()


def test_engine_does_not_import_test_support():
    """Tiny random models are test and demo support: the engine's import path never reaches them."""
    offenders = []
    for path in CORE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "finetune_app.testing" in text or "from finetune_app import testing" in text:
            offenders.append(str(path.relative_to(CORE)))
    assert not offenders, offenders
