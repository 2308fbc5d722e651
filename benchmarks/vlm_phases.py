"""Where one VLM run's wall time goes, and how many traces it makes (#16 vlmpipe).

    python benchmarks/vlm_phases.py --entry finetune_app.cli:main train --model M --data D ...
    python benchmarks/vlm_phases.py -m mlx_vlm.train --model M ...

Runs a tool unchanged in this process (as benchmarks/peak_probe.py does) and prints, at exit, one
JSON line (`VLM_PHASES {...}`): seconds since process start at each of our trainer's events (load,
preparing, started, first step, validation, checkpoint, finished), how many times a function given
to `mx.compile` was traced (each trace is a retrace of a compiled step or tower: ~0.5 s of trace +
kernel load on a warm GPU, NVRTC compilation cold), by the name of the function traced, the
distinct input shapes our step met, our tower calls (pictures per call, compiled calls), and the
pictures read again on the training thread (kept without pixels past prepare.py's budget; set
VLM_PHASES_IMAGE_BUDGET=bytes to move the budget, e.g. to 45% of the pixels as 1,000 pictures at
448 px meet the default 2 GiB). Where the frozen-tower cache is on, preparation reads no picture
(#16 vlmwarm: counted from headers, every one read ahead of its first batch: `reread_ahead`);
VLM_PHASES_PICTURES_UP_FRONT=1 decodes them all before the first step, as before, for comparison.
VLM_PHASES_KEEP_TORCH=1: ours without hiding torch from transformers (the before of #16 vlmtorch;
the report's `torch_imported` says whether torch was imported at all, and `imports_s` when
transformers / torch / mlx_vlm finished importing). Nothing else in the tools is changed: `mx.compile` is wrapped to count the wrapped function's calls
(a compiled function calls its Python function only when it traces).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections import Counter

T0 = time.perf_counter()
import mlx.core as mx  # noqa: E402

traces: Counter = Counter()
events: list = []
reread = [0, 0.0]  # examples read again on the training thread, seconds it spent on them
_real_compile = mx.compile


def _counting_compile(fn=None, *args, **kwargs):
    if fn is None:  # used as @mx.compile(...) with arguments
        return lambda f: _counting_compile(f, *args, **kwargs)
    name = getattr(fn, "__qualname__", repr(fn))

    def traced(*a, **k):
        traces[name] += 1
        return fn(*a, **k)

    return _real_compile(traced, *args, **kwargs)


mx.compile = _counting_compile


def _watch_ours():
    try:
        from finetune_app.core.training import trainer
    except ImportError:
        return None
    real_emit = trainer.Trainer.emit

    def emit(self, event):
        name = type(event).__name__
        what = getattr(event, "state", None) or getattr(event, "phase", None) or ""
        if not events or events[-1][1:] != (name, what) or name != "Progress":
            events.append((round(time.perf_counter() - T0, 2), name, what))
        _watch_ours.trainer = self
        return real_emit(self, event)

    trainer.Trainer.emit = emit
    real_materialise = trainer.Trainer._materialise

    def materialise(self, ex):  # pictures read again on the training thread (kept without pixels)
        t = time.perf_counter()
        out = real_materialise(self, ex)
        if out is not ex:
            reread[0] += 1
            reread[1] += time.perf_counter() - t
        return out

    trainer.Trainer._materialise = materialise
    budget = os.environ.get("VLM_PHASES_IMAGE_BUDGET")  # bytes of pixels kept in memory (prepare.py)
    if budget:
        from finetune_app.core.training import prepare

        prepare.IMAGE_BUDGET_BYTES = int(float(budget))
    if os.environ.get("VLM_PHASES_PICTURES_UP_FRONT"):  # (#16 vlmwarm) every picture decoded before step 1, as before
        from finetune_app.core.families.base import Family

        for fam in _families():
            fam.sized_processor = Family.sized_processor
    return trainer


def _keep_torch():
    if os.environ.get("VLM_PHASES_KEEP_TORCH"):  # ours as before #16 vlmtorch (transformers sees torch)
        from finetune_app.core.patches import transformers_without_torch

        transformers_without_torch.hide = lambda: False


class _ImportClock:
    """Seconds since process start at which the watched top-level imports finished."""
    WATCHED = ("torch", "transformers", "mlx_vlm")

    def __init__(self):
        self.done: dict = {}

    def find_spec(self, name, path=None, target=None):
        if name in self.WATCHED and name not in sys.modules:  # (find_spec alone, as transformers asks, executes nothing)
            import importlib.util

            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is not None and spec.loader is not None:
                real = spec.loader.exec_module

                def exec_module(module, real=real, name=name):
                    real(module)
                    self.done.setdefault(name, round(time.perf_counter() - T0, 2))

                spec.loader.exec_module = exec_module
            return spec
        return None


_clock = _ImportClock()


def _families():
    from finetune_app.core.families import qwen_vl

    return [qwen_vl.QwenVL]


def _report():
    out = {"wall_s": round(time.perf_counter() - T0, 2), "traces": dict(traces), "traces_total": sum(traces.values()),
           "events": events, "torch_imported": sys.modules.get("torch") is not None,
           "imports_s": _clock.done}
    t = getattr(_watch_ours, "trainer", None)
    if t is not None and getattr(t, "step", None) is not None:
        fam = t.family
        out["step_shapes"] = len(t.step.shapes)
        out["reread_on_training_thread"] = {"examples": reread[0], "seconds": round(reread[1], 2)}
        out["reread_ahead"] = getattr(getattr(t, "reread", None), "served", None)
        out["planned_shapes"] = getattr(fam.buckets, "shapes", None)
        cache = getattr(fam, "cache", None)
        if cache is not None:
            out["tower_calls"] = dict(Counter(cache.calls))
            out["tower_groups"] = len(cache.groups)
        out["compiled_tower_calls"] = getattr(fam, "compiled_calls", None)
        out["compiled_signatures"] = sorted(map(list, getattr(fam, "compiled_signatures", ()) or ()))
    print("VLM_PHASES " + json.dumps(out, default=str), flush=True)


def main() -> None:
    args = sys.argv[1:]
    atexit.register(_report)
    sys.meta_path.insert(0, _clock)
    _watch_ours()
    _keep_torch()
    from tool_entry import run_tool  # (this folder: the script's own)

    run_tool(args, "vlm_phases.py")


if __name__ == "__main__":
    main()
