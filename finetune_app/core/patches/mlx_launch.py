"""`mlx.launch`, run from its private module (the console script is not always on PATH), with one
repair: each rank's I/O thread selects on the rank's stdin for writing, which is always writable,
so with its 1 s timeout it never waits and spins a core per rank (measured: tiny Llama, 2 ranks on
a 2-core machine, 200 steps in 45-47 s under plain mlx.launch, 12-13 s with the repair). The
repaired select waits for output first (50 ms at most), then asks about writes without waiting:
commands reach the ranks within 50 ms.
"""

from __future__ import annotations

import select as _select
import time

WRITTEN_FOR = {"mlx": "0.32.4"}
MODULE = "mlx._distributed_utils.launch"


def still_needed() -> bool:
    """True while mlx.launch's I/O loop selects on writable pipes with a timeout (the spin)."""
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(MODULE))
    return "from select import select" in source and "select(to_read, to_write, [], 0 if exited else 1.0)" in source


# Kept as source: the launcher runs it with `python -c` (no app import there), tests call it here.
CALM_SELECT = """
def calm_select(r, w, x, timeout=None):
    wait = 0.05 if timeout is None else min(timeout, 0.05)
    rl, _, xl = _select.select(r, [], x, wait) if (r or x) else (time.sleep(wait) or [], [], [])
    wl = _select.select([], w, [], 0)[1] if w else []
    return rl, wl, xl
"""
_namespace = {"_select": _select, "time": time}
exec(CALM_SELECT, _namespace)  # noqa: S102 - our own constant above
calm_select = _namespace["calm_select"]

# `python -c LAUNCHER <mlx.launch arguments>`: self-contained (the launcher's interpreter needs only mlx)
LAUNCHER = f"""
import select as _select, sys, time
import {MODULE} as launch
{CALM_SELECT}
launch.select = calm_select
sys.argv[0] = "mlx.launch"
sys.exit(launch.main())
"""
