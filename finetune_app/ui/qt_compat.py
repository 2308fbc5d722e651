"""Keep the app alive on PySide6 6.12.0 + CPython 3.11 (applied when `finetune_app.ui` is imported).

That binding hands `None` and `True` back from C++ without taking a reference in several places:
the result of every `SignalInstance.emit()` called from Python, and values passed through Python
overrides that C++ calls (pyqtgraph's `itemChange`, painting, `setData`...). Each call takes one
reference away from the singleton; when a count reaches zero CPython aborts with "Fatal Python
error: bool_dealloc: deallocating True or False" (or "none_dealloc"). Measured here: a bare QObject
with one Signal aborts after ~1,000 emits; one pyqtgraph `setData` costs 2 `True` and 10 `None`
references, a `PlotWidget.grab()` 6 `None`; a live training plot would abort within minutes.
PySide6 6.11.3 does not do this, and on CPython 3.12+ these singletons are immortal.

The workaround does what CPython 3.12 does: when a probe shows the bug, it makes `None`, `True` and
`False` effectively immortal by adding 2**40 to their reference counts, so the lost references can
never bring them to zero, during the run or at interpreter shutdown. Nothing else changes.

The proper fix is a PySide6 without the bug (6.11.x, or a later 6.12 that fixes it).
"""

from __future__ import annotations

import ctypes
import sys

IMMORTAL_BOOST = 1 << 40

_state = {"checked": False, "leaky": False, "applied": False}


def emit_steals_reference() -> bool:
    """Probe: does `emit()` return a bool it holds no reference to? (gives the references back)"""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    n = 16
    before = sys.getrefcount(True) + sys.getrefcount(False)
    results = [probe.ping.emit() for _ in range(n)]
    lost = before + n - (sys.getrefcount(True) + sys.getrefcount(False))
    if lost >= n:
        for r in results:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(r))
        return True
    return False


def _immortalise(obj) -> None:
    # ob_refcnt is the first field of every PyObject; we hold the GIL, as every refcount change does.
    ctypes.c_ssize_t.from_address(id(obj)).value += IMMORTAL_BOOST


def install() -> bool:
    """Apply the workaround if this binding needs it. True when it is active."""
    if _state["checked"]:
        return _state["applied"]
    _state["checked"] = True
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False  # immortal singletons: lost references are harmless
    try:
        if not emit_steals_reference():
            return False
        _state["leaky"] = True
        for obj in (None, True, False):
            _immortalise(obj)
        _state["applied"] = True
    except Exception:  # never stop the app over a workaround
        return False
    return True


def status() -> dict:
    return dict(_state)
