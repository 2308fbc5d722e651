"""Whether this process was started by a distributed launcher, known before MLX is imported.

Under a launcher SIGTERM is blocked first thing, before MLX starts any thread (threads inherit
the mask): core.distributed then takes it on a thread of its own, which still runs while the
main thread is stuck in a dead collective (see core/training/peers.py)."""

from __future__ import annotations

import os
import signal

LAUNCH_VARS = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")  # set by mlx.launch / mpirun


def launched() -> bool:
    return any(v in os.environ for v in LAUNCH_VARS)


def block_sigterm_if_launched() -> bool:
    if launched():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        return True
    return False
