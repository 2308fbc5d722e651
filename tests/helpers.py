"""Shared test helpers (importable from tests)."""

import subprocess
import sys


def run_cli(*args, timeout=600, **kwargs):
    """Run `python -m finetune_app ARGS` in a fresh process (what a user's shell does)."""
    return subprocess.run([sys.executable, "-m", "finetune_app", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def popen_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "finetune_app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)
