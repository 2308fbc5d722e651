"""A pinned library's source file, read without importing it: the patches' `still_needed()` checks
ask what a library does where importing it would do the very thing the patch avoids (import torch,
a tracker) or is not needed."""

from __future__ import annotations

from pathlib import Path


def library_file(package: str, name: str) -> Path | None:
    """`name` (a path inside the installed `package`), or None where the package or file is absent."""
    from importlib.util import find_spec

    spec = find_spec(package)
    path = Path(spec.origin).parent / name if spec and spec.origin else None
    return path if path is not None and path.is_file() else None


def library_text(package: str, name: str) -> str:
    """The text of `library_file(package, name)`; "" where it is absent."""
    path = library_file(package, name)
    return path.read_text(encoding="utf-8") if path is not None else ""
