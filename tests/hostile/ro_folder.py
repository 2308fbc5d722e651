"""A folder that cannot be written, for the tests, also when they run as root.

`chmod 555` stops a normal user; root ignores it, so on Linux as root the folder is made immutable
(`chattr +i`: no file can be created, renamed or removed in it, even by root). When neither works
here, the test is skipped rather than passing without the fault.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def _writable(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@contextlib.contextmanager
def read_only(folder: str | Path):
    import pytest

    folder = Path(folder)
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    chattr = False
    try:
        if _writable(folder) and shutil.which("chattr"):
            chattr = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if _writable(folder):
            pytest.skip("cannot make a read-only folder here")
        yield folder
    finally:
        if chattr:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(mode & 0o7777)
