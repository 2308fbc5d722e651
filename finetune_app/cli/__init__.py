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
    "eval": "eval",
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
    except OSError as exc:  # the file system said no (read-only, full, missing): name the file
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: keep the traceback in a log, not on the user's screen
        print(f"error: {report_unexpected(exc, args)}", file=sys.stderr)
        return 1


def describe_os_error(exc: OSError) -> str:
    """One located sentence for an OSError the command did not expect, with what to do about it."""
    import errno

    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    fixes = {errno.EACCES: "Choose a folder you can write to, or change its permissions.",
             errno.EPERM: "Choose a folder you can write to, or change its permissions.",
             errno.EROFS: "The disk is read-only: choose a folder on a writable disk.",
             errno.ENOSPC: "The disk is full: free some space or choose another disk.",
             errno.ENOENT: "Check that the path exists.",
             errno.ENOTDIR: "A file stands where a folder is expected: check the path.",
             errno.EISDIR: "A folder stands where a file is expected: check the path."}
    fix = fixes.get(exc.errno, "Check the path, its permissions and the free disk space, then try again.")
    return f"{where}: {what}. {fix}" if where else f"{what}. {fix}"


def report_unexpected(exc: BaseException, args) -> str:
    """Write the traceback of an unexpected failure to a log file; return the line to print."""
    import time
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        from finetune_app.core import atomic
        from finetune_app.core.runs import data_dir

        log = data_dir() / "logs" / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(log, f"finetune-app {' '.join(sys.argv[1:])}\n\n{text}")
        where = f"The details are in {log}"
    except Exception:  # cannot even write the log: the details go to the screen after all
        where = f"The details:\n{text}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"the '{getattr(args, 'command', '')}' command failed unexpectedly ({type(exc).__name__}"
            f"{': ' + first if first else ''}). This is a bug in Finetune, not in your files. {where}; "
            f"please report it with that file.")
