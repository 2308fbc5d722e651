"""`finetune-app gui [PATHS...]`: open the desktop app (files and folders given are opened in it).

The .desktop entry runs `finetune-app gui %F`, so files dropped on the launcher arrive here: a
model folder goes to the model picker, a .toml file to the settings form, anything else is opened
as a dataset.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("gui", help="open the desktop app",
                       description="Open the Finetune desktop app. Paths given are opened in it: a model "
                       "folder as the base model, a .toml file as the training settings, anything else "
                       "as the dataset.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="dataset files or folders, model folders, settings (.toml)")
    p.add_argument("--no-welcome", action="store_true", help="do not show the first-launch welcome")
    p.set_defaults(func=run)


def run(args) -> int:
    from finetune_app.ui.platform_check import xcb_problem

    problem = xcb_problem()  # before Qt, which would abort the process with its raw message
    if problem:
        import sys

        print(f"error: {problem}", file=sys.stderr)
        from finetune_app.cli import main

        return main(["demo"])
    try:
        from finetune_app.ui.app import run_app
    except ImportError as exc:  # PySide6 or pyqtgraph missing: say so instead of a traceback
        print(f"error: the desktop app needs PySide6 and pyqtgraph ({exc}). "
              "Install them with `pip install pyside6 pyqtgraph`, or use the command line "
              "(`finetune-app train`, `finetune-app demo`).")
        return 2
    return run_app(list(args.paths or []), show_welcome=not args.no_welcome)
