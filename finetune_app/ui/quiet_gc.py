"""Keep Python's full garbage collections from freezing the window while a background thread
imports libraries or loads a model.

A full (generation 2) collection walks every tracked object holding the GIL. Once transformers,
mlx-vlm and mlx-lm are imported that is a few hundred thousand objects, and a collection takes
60-190 ms (measured on the demo, issue 18). Importing creates objects fast enough to trigger one
every time the heap grows by a quarter, so a background import froze the window again and again.

`paused()` turns automatic collection off while such work runs (several threads may nest it; the
last one out turns it back on) and then freezes what the work built (`gc.freeze`: moved to the
permanent generation, out of later collections' sight). Only work that builds long-lived objects
(imports, a model's description) belongs inside: garbage in reference cycles made meanwhile is
frozen too and never freed, which is why a training run or a labelling pass is never wrapped.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = True


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.freeze()
                if _was_enabled:
                    gc.enable()
