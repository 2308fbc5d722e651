"""`finetune-app`: the engine, headless. Each subcommand lives in its own module here.

Exit codes scripts can rely on: 0 success, 1 unexpected failure, 2 usage or generic user error,
3 model, 4 data, 5 config, 6 adapter problems (see finetune_app.core.errors), 75 a process of a
data-parallel run dropped out (resume from the run folder), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> module under finetune_app.cli that defines register(subparsers) and run(args)
COMMANDS = {
    "train": "train",
    "caption": "caption",
    "generate": "caption",
    "data": "data",
    "demo": "demo",
    "export": "export",
    "runs": "runs",
    "compare": "compare",
    "gui": "gui",
    "hosts": "hosts",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-app",
        description="Fine-tune vision-language models and text LLMs with MLX. "
        "Run without a command to open the app (or the headless demo where there is no display).",
    )
    from finetune_app import __version__

    parser.add_argument("--version", action="version", version=f"finetune-app {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for module_name in COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(f"finetune_app.cli.{module_name}")
        except ModuleNotFoundError as exc:  # a command not written yet
            if exc.name == f"finetune_app.cli.{module_name}":
                continue
            raise
        module.register(sub)
    return parser


def has_display() -> bool:
    if sys.platform == "darwin" or os.name == "nt":
        return True
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return False
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    from finetune_app.core.launcher_env import block_sigterm_if_launched

    block_sigterm_if_launched()  # before anything imports MLX
    from finetune_app.core.errors import FinetuneError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # The main job: the app where there is a screen, else the headless demo.
        args = parser.parse_args(["gui"] if has_display() else ["demo"])
    try:
        return int(args.func(args) or 0)
    except FinetuneError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
