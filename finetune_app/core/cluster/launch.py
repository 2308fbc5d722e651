"""Start a data-parallel run with `mlx.launch` and follow it from this machine.

Each rank runs core/cluster/rank.py (the runner's own entry, not the CLI): rank 0's events come
back as marked lines on stdout (events.EventLines), and pause/stop go to every rank through the
launcher, which copies its stdin to all of them (the ranks then agree on the step). The runner
(core/runner.py) starts this for `start_run(config, hosts=...)`. When a host
drops out, mlx.launch says which rank ended and how, stops the others, and exits 0 all the same;
this module turns that into one failed state naming the host, with rank 0's word on the
checkpoint it saved.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from finetune_app.core.cluster import rank
from finetune_app.core.cluster.hosts import HostList
from finetune_app.core.config import TrainConfig
from finetune_app.core.patches.mlx_launch import LAUNCHER  # mlx.launch with its I/O loop repaired
from finetune_app.core.training import events as ev

NOISE = ("[ring]", " ", "Thread 0x", "Current thread 0x", "Timeout (", "Fatal Python error")
RANK_EXIT = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")
EXIT_WORDS = {2: "a usage or settings problem", 3: "a problem with the model", 4: "a problem with the data",
              5: "a problem with the settings", 75: "it lost its peers", 130: "it was interrupted",
              255: "the ssh connection ended: the host went away or its process was killed"}


@dataclass
class Outcome:
    status: str  # finished / stopped / failed
    step: int
    message: str
    run_dir: Path
    exits: dict[int, int | None] = field(default_factory=dict)  # rank -> exit code (None: killed)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "its process was killed"
    if code < 0:
        try:
            return f"its process was killed ({signal.Signals(-code).name})"
        except ValueError:
            return f"its process ended on signal {-code}"
    return f"its process exited with code {code}" + (f" ({EXIT_WORDS[code]})" if code in EXIT_WORDS else "")


def free_ports(need: int) -> int | None:
    """The first of `need` consecutive free ports for the ring back-end on this machine. mlx.launch's
    default (32323) may be held by a run that has not let go of it yet, and two runs started at the
    same moment would both find the same ports free: the scan starts at a random point of the range."""
    import random
    import socket

    bases = list(range(32323, 60000, 97))
    start = random.SystemRandom().randrange(len(bases))
    for base in bases[start:] + bases[:start]:
        try:
            for port in range(base, base + need):
                with socket.socket() as sock:
                    sock.bind(("", port))
            return base
        except OSError:
            continue
    return None


class DistributedRun:
    def __init__(self, hosts: HostList, cfg: TrainConfig, *, resume: bool = False, listeners=(),
                 python: str | None = None, log=None, starting_port: int | None = None, env: dict | None = None):
        self.hosts, self.cfg, self.resume = hosts, cfg, resume
        self.listeners = list(listeners)
        self.python = python or sys.executable
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.starting_port = starting_port
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._hostfile: Path | None = None
        self._lock = threading.Lock()

    def _pick_port(self) -> int | None:
        if self.hosts.backend != "ring":
            return None
        return free_ports(sum(max(1, len(h.ips)) for h in self.hosts.hosts))

    def command(self) -> list[str]:
        hosts = self.hosts.hosts
        if self.hosts.backend == "nccl" and len({h.ssh for h in hosts}) == 1:
            # several GPUs of one machine: mlx.launch gives rank r GPU r only with -n (repeat_hosts);
            # from a host file every rank would get GPU 0
            where = ["--hosts", hosts[0].ips[0] if hosts[0].ips else hosts[0].ssh, "-n", str(len(hosts))]
        else:
            where = ["--hostfile", str(self._hostfile)]
        args = [self.python, "-c", LAUNCHER, *where, "--backend", self.hosts.backend]
        if self.starting_port:
            args += ["--starting-port", str(self.starting_port)]
        return args + ["--", *rank.command(self.cfg, resume=self.resume, python=self.python)]

    # ---- control (any thread) ----------------------------------------------------------------
    def send(self, command: str) -> None:
        """'pause', 'resume', 'stop' (save a checkpoint) or 'stop-discard'."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is None and self.proc.stdin:
                try:
                    self.proc.stdin.write(command + "\n")
                    self.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    # ---- the run (one thread) ----------------------------------------------------------------
    def start(self) -> None:
        fd, name = tempfile.mkstemp(prefix="finetune-hosts-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.hosts.to_json(), fh)
        self._hostfile = Path(name)
        if self.starting_port is None:
            self.starting_port = self._pick_port()
        env = dict(os.environ, **(self.env or {}), PYTHONUNBUFFERED="1")
        # stdin stays open: the launcher copies it to every rank, and at EOF its loop would spin
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, env=env, start_new_session=True)

    def wait(self) -> Outcome:
        exits: dict[int, int | None] = {}
        errors: list[str] = []
        stderr = threading.Thread(target=self._read_stderr, args=(exits, errors), daemon=True)
        stderr.start()
        final, failed, step = None, None, 0
        for line in self.proc.stdout:
            line = line.rstrip("\r\n")
            event = ev.parse_line(line)
            if event is None:
                if line.strip():
                    self.log(line)
                continue
            step = max(step, getattr(event, "step", 0) or 0)
            if isinstance(event, ev.StateChanged) and event.state == "failed":
                failed = event  # held back: the host that dropped out is known only at the end
                continue
            if isinstance(event, ev.StateChanged) and event.state in ("finished", "stopped"):
                final = event
            self._emit(event)
        self.proc.wait()
        stderr.join(10)
        with self._lock:
            if self.proc.stdin:
                self.proc.stdin.close()
        if self._hostfile is not None:
            self._hostfile.unlink(missing_ok=True)
        if final is not None and failed is None:
            return Outcome(final.state, final.step, final.reason, Path(self.cfg.output), exits)
        message = self._failure_message(exits, failed, errors)
        self._emit(ev.StateChanged("failed", message, step=failed.step if failed else step))
        return Outcome("failed", failed.step if failed else step, message, Path(self.cfg.output), exits)

    def _emit(self, event) -> None:
        for listener in self.listeners:
            listener(event)

    def _read_stderr(self, exits: dict, errors: list) -> None:
        for line in self.proc.stderr:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip("\r\n"))
            m = RANK_EXIT.search(line)
            if m:
                exits[int(m.group(1))] = int(m.group(2)) if m.group(2) is not None else None
            if not line.strip() or line.startswith(NOISE):
                continue  # socket errors repeated many times, faulthandler's stack dumps
            errors.append(line)
            del errors[:-20]
            self.log(line)

    def host_name(self, rank: int) -> str:
        hosts = self.hosts.hosts
        return hosts[rank].name if 0 <= rank < len(hosts) else f"rank {rank}"

    def _resume_hint(self) -> str:
        from finetune_app.core.training import checkpoint as ckpt

        latest, _ = ckpt.latest_valid(Path(self.cfg.output))
        if latest is None:
            return "No checkpoint was written yet: start the run again once every host is back."
        return (f"The newest checkpoint is {latest}. Resume it (History > Resume in the app, or `finetune-app "
                f"train --resume {self.cfg.output}`) on this machine alone or on every host once they are back.")

    def _failure_message(self, exits: dict, failed, errors: list[str]) -> str:
        # the host that dropped out: the first rank that ended on its own (the others were
        # stopped by the launcher, or gave up on their peers: exit 75)
        stopped = (0, 75, 128 + signal.SIGTERM, -signal.SIGTERM)
        culprits = [(r, c) for r, c in exits.items() if c not in stopped] or \
                   [(r, c) for r, c in exits.items() if c not in (0, 75)]
        parts = []
        if culprits:
            r, c = culprits[0]
            parts.append(f"Rank {r} on {self.host_name(r)} dropped out: {describe_exit(c)}.")
        if failed is not None:
            parts.append(failed.reason)
        else:  # rank 0 could not say (killed, frozen): the run folder is on this machine
            if errors:
                parts.append("The launcher said: " + " / ".join(e for e in errors[-3:]))
            parts.append(self._resume_hint())
        if not parts:
            parts.append(f"mlx.launch ended without a result (exit code {self.proc.returncode}).")
        return " ".join(parts)
