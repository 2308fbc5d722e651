"""Reach every host and ask what it has (probe.py), before a data-parallel run starts.

This machine is asked the same way (a subprocess), so its answer goes through the same code as
the others'. Remote hosts are reached with `ssh -o BatchMode=yes`, as mlx.launch reaches them: a
host that needs a password here would make mlx.launch hang there."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from finetune_app.core.cluster.hosts import Host, HostList

PROBE_MARK = "FINETUNE-PROBE "


@dataclass
class HostCheck:
    host: Host
    rank: int
    reachable: bool = False
    info: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # keep the run from starting
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problems

    def summary(self) -> str:
        if self.ok:
            info = self.info
            mem = f", {info['memory_bytes'] / 2**30:.0f} GB" if info.get("memory_bytes") else ""
            text = f"{info.get('hostname', '?')}: {info.get('device', '?')}{mem}, mlx {info.get('mlx', '?')}"
            return text + ("; " + " ".join(self.warnings) if self.warnings else "")
        return " ".join(self.problems)


def absolute(path_or_id: str) -> str:
    """A path as every host must have it (ssh starts in the home folder); hub ids stay as they are."""
    p = Path(path_or_id).expanduser()
    return str(p.resolve()) if p.exists() else path_or_id


def probe_command(python: str, model: str, data: str) -> list[str]:
    return [python, "-m", "finetune_app.core.cluster.probe", "--model", model, "--data", data]


def ssh_command(host: Host, command: list[str], timeout: float) -> list[str]:
    return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout))}", "-o", "LogLevel=ERROR",
            host.ssh, shlex.join(command)]


def check_host(host: Host, rank: int, model: str, data: str, *, python: str | None = None,
               timeout: float = 20.0) -> HostCheck:
    import time

    python = python or sys.executable
    model, data = absolute(model), absolute(data)
    result = HostCheck(host, rank)
    cmd = probe_command(python, model, data)
    if not host.is_local:
        cmd = ssh_command(host, cmd, timeout)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        result.problems.append("ssh is not installed on this machine.")
        return result
    except subprocess.TimeoutExpired:
        result.problems.append(f"{host.name} did not answer within {timeout + 60:.0f} s.")
        return result
    finally:
        result.seconds = time.perf_counter() - t0
    err = (proc.stderr or "").strip().splitlines()
    last = err[-1] if err else ""
    if not host.is_local and proc.returncode == 255:
        result.problems.append(f"Cannot reach {host.ssh} over ssh ({last or 'no answer'}). Turn on Remote Login "
                               f"there (System Settings > General > Sharing) and let this machine in without a "
                               f"password: ssh-copy-id {host.ssh}")
        return result
    result.reachable = True
    lines = [ln for ln in (proc.stdout or "").splitlines() if ln.startswith(PROBE_MARK)]
    if proc.returncode != 0 or not lines:
        if "No module named" in (proc.stderr or "") or proc.returncode == 127:
            result.problems.append(f"Finetune is not installed for {python} on {host.name}. Install the same "
                                   f"version there (the run starts `{python} -m finetune_app.core.cluster.rank` on every host).")
        else:
            result.problems.append(f"The check failed on {host.name} ({last or f'exit code {proc.returncode}'}).")
        return result
    result.info = json.loads(lines[-1][len(PROBE_MARK):])
    for what, path in (("model", model), ("data", data)):
        part = result.info.get(what, {})
        if not part.get("found"):
            copy = f"rsync -a {shlex.quote(path)}/ {host.ssh}:{shlex.quote(path)}/" if not host.is_local else ""
            result.problems.append(f"{host.name} has no {what} at {path}: {part.get('problem', '')} "
                                   + (f"Copy it to the same path: {copy}" if copy else "").strip())
    return result


def compare(checks: list[HostCheck]) -> None:
    """Flag hosts whose model, data or versions differ from rank 0's (the first host)."""
    ref = next((c for c in checks if c.ok and c.rank == 0), None)
    if ref is None:
        return
    for c in checks:
        if c is ref or not c.ok:
            continue
        for what in ("model", "data"):
            if c.info[what].get("fingerprint") != ref.info[what].get("fingerprint"):
                c.problems.append(f"The {what} on {c.host.name} differs from the first host's (other files or sizes); "
                                  "copy the same one to every host.")
        for what in ("finetune", "mlx"):
            if c.info.get(what) != ref.info.get(what):
                c.warnings.append(f"{what} {c.info.get(what)} here, {ref.info.get(what)} on the first host.")


def check_hosts(hosts: HostList, model: str, data: str, *, python: str | None = None, timeout: float = 20.0,
                on_result=None) -> list[HostCheck]:
    """Every host at once; `on_result(check)` as each answers. The first host must be this machine:
    rank 0 writes the run folder, and the app shows it."""
    def one(i_host):
        i, host = i_host
        c = check_host(host, i, model, data, python=python, timeout=timeout)
        if on_result is not None:
            on_result(c)
        return c

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(hosts.hosts)))) as pool:
        checks = list(pool.map(one, enumerate(hosts.hosts)))
    compare(checks)
    first = checks[0] if checks else None
    here = socket.gethostname()
    if first is not None and first.ok and not first.host.is_local and first.info.get("hostname") != here:
        first.problems.append(f"The first host ({first.host.ssh}) is {first.info.get('hostname')}, not this machine "
                              f"({here}). Put this machine first: rank 0 writes the run folder here.")
    return checks
