"""mlx.launch's host file: `{"backend": ..., "envs": [...], "hosts": [{"ssh": ..., "ips": [...]}]}`
(or just the list of hosts). Finetune reads and writes the same file, so a host file works with
`mlx.launch` directly and in the app."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from finetune_app.core.errors import ConfigError

LOCAL = "127.0.0.1"  # mlx.launch runs this host without ssh
BACKENDS = ("ring", "jaccl", "jaccl-ring", "mpi", "nccl")


@dataclass(frozen=True)
class Host:
    ssh: str  # what `ssh` connects to (a name, user@name, or an address)
    ips: tuple[str, ...] = ()  # addresses the other hosts reach this one at (the ring back-end needs them)
    rdma: tuple = ()  # jaccl only: the RDMA device towards each host (null towards itself)

    @property
    def is_local(self) -> bool:
        return self.ssh == LOCAL

    @property
    def name(self) -> str:
        return f"{self.ssh} (this machine)" if self.is_local else self.ssh

    def to_json(self) -> dict:
        d = {"ssh": self.ssh, "ips": list(self.ips)}
        if self.rdma:
            d["rdma"] = list(self.rdma)
        return d


@dataclass(frozen=True)
class HostList:
    hosts: tuple[Host, ...]
    backend: str = "ring"
    envs: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {"backend": self.backend, "envs": list(self.envs), "hosts": [h.to_json() for h in self.hosts]}

    def problems(self) -> list[str]:
        """What keeps mlx.launch from starting with this list, in words."""
        out = []
        if len(self.hosts) < 2:
            out.append("List at least two hosts (one process runs on each).")
        if self.backend not in BACKENDS:
            out.append(f"Unknown back-end '{self.backend}': use one of {', '.join(BACKENDS)}.")
        for i, h in enumerate(self.hosts, 1):
            if not h.ssh.strip():
                out.append(f"Host {i} has no name.")
            if self.backend in ("ring", "jaccl", "jaccl-ring", "nccl") and not h.ips and (i == 1 or self.backend == "ring"):
                out.append(f"Host {i} ({h.ssh}) needs an IP address the other hosts can reach "
                           f"(the {self.backend} back-end connects by address).")
            for ip in h.ips:
                try:
                    ipaddress.ip_address(ip)
                except ValueError:
                    out.append(f"Host {i} ({h.ssh}): '{ip}' is not an IP address.")
        return out


def read_hostfile(path: str | Path) -> HostList:
    path = Path(path).expanduser()
    fix = 'A host file is JSON: {"backend": "ring", "hosts": [{"ssh": "mac1.local", "ips": ["192.168.1.10"]}, ...]}.'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"The host file '{path}' does not exist.", "Choose the JSON file mlx.launch uses (--hostfile).", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"The host file cannot be read ({exc}).", fix, file=path) from None
    except ValueError as exc:
        raise ConfigError(f"The host file is not valid JSON ({exc}).", fix, file=path) from None
    backend, envs, entries = "ring", [], data
    if isinstance(data, dict):
        backend = data.get("backend") or "ring"
        envs = data.get("envs") or []
        entries = data.get("hosts")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("The host file lists no hosts.", fix, file=path, field="hosts")
    hosts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("ssh"), str) or not entry["ssh"].strip():
            raise ConfigError(f"Host {i + 1} has no \"ssh\" name.", fix, file=path, field=f"hosts[{i}].ssh")
        ips = entry.get("ips") or []
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise ConfigError(f"Host {i + 1}: \"ips\" must be a list of addresses.", fix, file=path, field=f"hosts[{i}].ips")
        hosts.append(Host(entry["ssh"].strip(), tuple(ips), tuple(entry.get("rdma") or ())))
    if not isinstance(envs, list) or not all(isinstance(e, str) for e in envs):
        raise ConfigError('"envs" must be a list of "NAME=value" strings.', fix, file=path, field="envs")
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown back-end '{backend}'.", f"Use one of {', '.join(BACKENDS)}.", file=path, field="backend")
    return HostList(tuple(hosts), backend, tuple(envs))


def write_hostfile(path: str | Path, hosts: HostList) -> Path:
    from finetune_app.core import atomic

    return atomic.write_json(Path(path).expanduser(), hosts.to_json())
