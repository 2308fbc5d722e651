"""mlx-lm's tuner modules imported without its reporting callbacks' tracker libraries.

`import mlx_lm.tuner.utils` (the LoRA layers) runs `mlx_lm/tuner/__init__`, which imports its
trainer and that its callbacks, which try `import wandb` and `import swanlab` for mlx-lm's own
reporting. The app never uses those callbacks (core/trackers.py reports to W&B itself), yet where
wandb is installed its import costs 1.4-2 s of every text run's start on the 2-core CPU (#16:
startup2). `import_module` hides the two for the time of that import only: the callbacks module
takes its own `except ImportError` branch (its `wandb` is None), and a later `import wandb`
(core/trackers.py) imports the real one. A tracker already imported is left as it is.
"""

from __future__ import annotations

import importlib
import sys
import threading

WRITTEN_FOR = {"mlx-lm": "0.32.2"}
HIDDEN = ("wandb", "swanlab")
CALLBACKS = "mlx_lm.tuner.callbacks"
_lock = threading.Lock()


def still_needed() -> bool:
    """True while mlx-lm's tuner package imports a tracker library when it is imported."""
    from finetune_app.core.patches.library_source import library_text

    text = library_text("mlx_lm", "tuner/callbacks.py")  # (the file: importing it would import the trackers)
    return any(f"import {name}" in text for name in HIDDEN)


def import_module(name: str):
    """`importlib.import_module(name)` for a module under mlx_lm.tuner, without wandb / swanlab."""
    with _lock:
        if CALLBACKS in sys.modules:
            return importlib.import_module(name)
        hidden = [m for m in HIDDEN if m not in sys.modules]
        for m in hidden:
            sys.modules[m] = None  # `import m` raises ImportError while this is here
        try:
            return importlib.import_module(name)
        finally:
            for m in hidden:
                if m in sys.modules and sys.modules[m] is None:
                    del sys.modules[m]
