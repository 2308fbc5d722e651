"""Where a text run's fixed costs go: command -> first step, last step -> exit (#16 textwarm).

    python benchmarks/text_phases.py --entry finetune_app.cli:main train --model M --data D ...
    python benchmarks/text_phases.py -m mlx_lm lora --model M --train ...

Runs a tool unchanged in this process (as benchmarks/peak_probe.py does) and prints at exit a
timeline (`TEXT_PHASES {json}` and a table): seconds since the process started (the OS's record, as
our FirstStep event counts) at which the big imports began and ended (torch, transformers, mlx,
mlx_lm, our trainer), and the start and end of each phase: ours' load_base (folder check, mlx_lm's
model build, tokenizer load, weight read), LoRA attach, data preparation, the wait for the weights,
the shape plan, the trainer's events (first step, validation, checkpoint), and mlx_lm's load,
dataset and LoRA calls. Nothing is imported ahead of the tool: functions are wrapped by a post-import
hook as their modules finish loading, so the import times are the tool's own.
TEXT_PHASES_KEEP_TORCH=1: ours without the transformers_without_torch patch (the before).
TEXT_PHASES_MAIN_READ=1: ours reads the weights on the main thread and prepares the rows on a thread
meanwhile, as on a GPU (BaseModel.while_reading), also on the CPU back-end; its CLI also starts the
read before the imports (models.read_ahead), as on a GPU.
TEXT_PHASES_NO_READ_AHEAD=1: without that early start (the before of #16 readearly).
TEXT_PHASES_STOP_AT_DATA=1: ours stops (and reports) once the rows are prepared and the weights read.
"""

from __future__ import annotations

import atexit
import importlib.abc
import json
import os
import sys
import time
from functools import wraps

T0 = time.perf_counter()


def _age_at_t0() -> float:
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            return max(0.0, float(f.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


AGE0 = _age_at_t0()
marks: list[tuple[float, str]] = []  # (seconds since process start, what)
spans: list[tuple[str, float, float]] = []  # (what, start, end)
info: dict = {}


def now() -> float:
    return round(AGE0 + time.perf_counter() - T0, 3)


def timed(name: str, fn):
    @wraps(fn)
    def wrapper(*a, **k):
        t = now()
        try:
            return fn(*a, **k)
        finally:
            spans.append((name, t, now()))
    return wrapper


def wrap(obj, attr: str, name: str) -> None:
    if hasattr(obj, attr):
        setattr(obj, attr, timed(name, getattr(obj, attr)))


def _ours_models(m):
    if os.environ.get("TEXT_PHASES_MAIN_READ"):  # the GPU's way on any back-end: the main thread reads, rows on a thread
        m.reads_on_main_thread = lambda: True  # (and the CLI reads ahead, models.read_ahead)
    if os.environ.get("TEXT_PHASES_NO_READ_AHEAD"):  # the before of #16 readearly
        m.read_ahead = lambda folder: False
    wrap(m, "read_ahead", "read ahead (started)")
    wrap(m, "load_base", "load_base")
    wrap(m, "_resolved", "load_base: folder check")
    wrap(m.BaseModel, "wait_for_weights", "wait for weights")


def _ours_trainer(m):
    real_emit = m.Trainer.emit

    def emit(self, event):
        name = type(event).__name__
        what = getattr(event, "state", None) or getattr(event, "phase", None) or ""
        label = f"{name} {what}".strip()
        if not marks or marks[-1][1] != label or name != "Progress":
            marks.append((now(), label))
        _ours_trainer.trainer = self
        return real_emit(self, event)

    m.Trainer.emit = emit
    wrap(m.Trainer, "_model_and_data", "model + data (attach, prepare)")
    wrap(m.Trainer, "_after_data", "after data (plan, optimizer, config)")
    if os.environ.get("TEXT_PHASES_STOP_AT_DATA"):  # stop once the rows are prepared and the weights read
        def stop(self, data):
            marks.append((now(), "stopped: rows prepared, weights read"))
            report()
            os._exit(0)

        m.Trainer._after_data = stop
    wrap(m.Trainer, "evaluate", "validation")
    wrap(m.Trainer, "save_checkpoint", "final save")
    wrap(m, "prepare_examples", "prepare rows")
    wrap(m.adapters, "attach", "LoRA attach")


def _mlx_lm_utils(m):
    wrap(m, "load", "mlx_lm.load")
    wrap(m, "load_model", "mlx_lm.load_model (build; weights unless lazy)")
    wrap(m, "load_tokenizer", "mlx_lm.load_tokenizer")


def _mlx_lm_lora(m):
    for fn, label in (("load_dataset", "mlx_lm: load_dataset"), ("linear_to_lora_layers", "mlx_lm: LoRA attach"),
                      ("evaluate", "mlx_lm: evaluate")):
        wrap(m, fn, label)


def _mlx_lm_trainer(m):
    wrap(m, "evaluate", "mlx_lm: evaluate")


def _torch_patch(m):
    if os.environ.get("TEXT_PHASES_KEEP_TORCH"):  # measure ours as before the patch (transformers sees torch)
        m.hide = lambda: False


HOOKS = {"finetune_app.core.models": _ours_models,
         "finetune_app.core.patches.transformers_without_torch": _torch_patch, "finetune_app.core.training.trainer": _ours_trainer,
         "mlx_lm.utils": _mlx_lm_utils, "mlx_lm.lora": _mlx_lm_lora, "mlx_lm.tuner.trainer": _mlx_lm_trainer}
IMPORTS = ("torch", "transformers", "mlx.core", "mlx_lm", "mlx_lm.tokenizer_utils", "finetune_app.cli",
           "finetune_app.core.training.trainer", "tokenizers", "wandb")


class PostImport(importlib.abc.MetaPathFinder):
    """Times the watched imports and wraps functions once their module has run."""

    def find_spec(self, name, path, target=None):
        if name not in HOOKS and name not in IMPORTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        real_exec, start = loader.exec_module, now()

        def exec_module(module):
            real_exec(module)
            if name in IMPORTS:
                spans.append((f"import {name}", start, now()))
            if name in HOOKS:
                HOOKS[name](module)

        loader.exec_module = exec_module
        return spec


def report() -> None:
    t = getattr(_ours_trainer, "trainer", None)
    if t is not None:
        step = getattr(t, "step", None)
        info["step_shapes"] = len(getattr(step, "shapes", ()) or ()) if step is not None else None
        plan = getattr(getattr(t, "family", None), "buckets", None)
        info["planned_shapes"] = getattr(plan, "shapes", None)
        info["rows"] = len(getattr(getattr(t, "data", None), "train", ()) or ())
    info["torch_imported"] = sys.modules.get("torch") is not None
    out = {"at_exit_s": now(), "process_age_at_start_s": round(AGE0, 3), "marks": marks,
           "spans": sorted(spans, key=lambda s: s[1]), **info}
    print("TEXT_PHASES " + json.dumps(out, default=str), flush=True)
    rows = [(s, e, n) for n, s, e in spans] + [(t, t, n) for t, n in marks]
    for s, e, n in sorted(rows):
        print(f"  {s:8.2f} {e:8.2f} {e - s:7.2f}  {n}", flush=True)


def main() -> None:
    args = sys.argv[1:]
    sys.meta_path.insert(0, PostImport())
    atexit.register(report)
    from tool_entry import run_tool  # (this folder: the script's own)

    run_tool(args, "text_phases.py")


if __name__ == "__main__":
    main()
