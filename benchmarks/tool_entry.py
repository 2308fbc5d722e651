"""Run a tool in this process, as `python -m MODULE ARGS...` or through `--entry MOD:FN ARGS...`:
for the harness's wrappers that watch a tool from inside its process (text_phases, vlm_phases).
Imports nothing ahead of the tool (text_phases times the tool's own imports)."""

from __future__ import annotations

import runpy
import sys


def run_tool(args: list[str], usage: str) -> None:
    if args[:1] == ["-m"]:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[:1] == ["--entry"]:
        mod, fn = args[1].split(":")
        sys.argv = [mod, *args[2:]]
        import importlib

        sys.exit(getattr(importlib.import_module(mod), fn)())
    else:
        raise SystemExit(f"usage: {usage} (-m MODULE | --entry MOD:FN) ARGS...")
