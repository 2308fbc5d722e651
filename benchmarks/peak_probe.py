"""Run a training tool unchanged in this process and record MLX's peak memory from process start.

    python benchmarks/peak_probe.py -m mlx_vlm.train --model M ...          # a module, as `python -m`
    python benchmarks/peak_probe.py --entry finetune_app.cli:main train ...  # a console script's function

The same wrapper runs every tool in benchmarks/side_by_side.py, so `mx.get_peak_memory()` is read
the same way for all of them: at exit, from process start. A tool that calls `mx.reset_peak_memory()`
(ours does at the start of the loop) cannot hide what came before: the reset is wrapped so the
highest value seen before any reset is kept. Results go to the JSON file named by $PEAK_PROBE_OUT.

$PEAK_PROBE_SHIM=device_info: `mx.device_info()` also answers "max_recommended_working_set_size"
(the total memory) where MLX's CUDA / CPU back-ends do not have that Metal-only key, which
mlx-lm-lora reads unconditionally before `mx.set_wired_limit`. Nothing else is changed.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import time

T0 = time.perf_counter()
import mlx.core as mx  # noqa: E402  (imported first: every tool imports it anyway)

_before_reset = [0]
_real_reset = mx.reset_peak_memory


def _reset() -> None:
    _before_reset[0] = max(_before_reset[0], mx.get_peak_memory())
    _real_reset()


mx.reset_peak_memory = _reset


def _shim_device_info() -> None:
    real = mx.device_info

    def device_info():
        info = dict(real())
        if "max_recommended_working_set_size" not in info:
            total = info.get("total_memory") or info.get("memory_size") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            info["max_recommended_working_set_size"] = int(total)
        return info

    mx.device_info = device_info


def _write(exit_code) -> None:
    path = os.environ.get("PEAK_PROBE_OUT")
    if not path:
        return
    rec = {"mlx_peak_gb": max(_before_reset[0], mx.get_peak_memory()) / 1e9,
           "mlx_peak_after_last_reset_gb": mx.get_peak_memory() / 1e9,
           "mlx_active_at_exit_gb": mx.get_active_memory() / 1e9, "mlx_cache_at_exit_gb": mx.get_cache_memory() / 1e9,
           "seconds_in_probe": time.perf_counter() - T0, "exit_code": exit_code, "device": str(mx.default_device())}
    with open(path, "w") as f:
        json.dump(rec, f)


def main() -> None:
    args = sys.argv[1:]
    if os.environ.get("PEAK_PROBE_SHIM") == "device_info":
        _shim_device_info()
    code = [0]
    atexit.register(lambda: _write(code[0]))
    try:
        if args[:1] == ["-m"]:
            sys.argv = [args[1]] + args[2:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[:1] == ["--entry"]:
            mod, func = args[1].split(":")
            sys.argv = [mod] + args[2:]
            __import__(mod)
            rc = getattr(sys.modules[mod], func)()
            code[0] = rc if isinstance(rc, int) else 0
            sys.exit(code[0])
        else:
            sys.exit("usage: peak_probe.py -m MODULE ARGS... | --entry MODULE:FUNC ARGS...")
    except SystemExit as e:
        code[0] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise


if __name__ == "__main__":
    main()
