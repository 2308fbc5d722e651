"""`finetune-app hosts`: check the machines of a data-parallel run before it starts.

`hosts check --hostfile F --model M --data D` asks every host (ssh; this machine directly)
whether it can run its part: Finetune installed, the model and data at the same paths, the same
files as the first host. `hosts probe` is what each host runs to answer (JSON, one line).
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("hosts", help="check the machines of a data-parallel run",
                       description="Check every host of an mlx.launch host file before training on them.")
    cmds = p.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    c = cmds.add_parser("check", help="reach every host and check it has Finetune, the model and the data")
    c.add_argument("--hostfile", required=True, help="mlx.launch host file (JSON)")
    c.add_argument("--model", required=True, help="model folder or hub id (the same path on every host)")
    c.add_argument("--data", required=True, help="dataset path (the same path on every host)")
    c.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for ssh to connect")
    c.add_argument("--json", action="store_true", help="print the answers as JSON")
    c.set_defaults(func=run_check)
    pr = cmds.add_parser("probe", help="say what this machine has (what `check` runs on each host)")
    pr.add_argument("--model", required=True)
    pr.add_argument("--data", required=True)
    pr.set_defaults(func=run_probe)


def print_checks(checks, stream=None) -> None:
    stream = stream or sys.stdout
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        print(f"{mark} rank {c.rank} {c.host.ssh}: {c.summary()}", file=stream)


def run_check(args) -> int:
    from finetune_app.core.cluster.check import check_hosts
    from finetune_app.core.cluster.hosts import read_hostfile

    hosts = read_hostfile(args.hostfile)
    checks = check_hosts(hosts, args.model, args.data, timeout=args.timeout)
    if args.json:
        print(json.dumps([{"rank": c.rank, "ssh": c.host.ssh, "ok": c.ok, "problems": c.problems,
                           "warnings": c.warnings, "info": c.info} for c in checks], indent=2))
    else:
        print_checks(checks)
        for p in hosts.problems():
            print(f"host file: {p}")
    return 0 if all(c.ok for c in checks) and not hosts.problems() else 5


def run_probe(args) -> int:
    from finetune_app.core.cluster.probe import main

    return main(["--model", args.model, "--data", args.data])
