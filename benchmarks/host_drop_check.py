"""A host dropping out of a data-parallel run, on whatever back-end this machine has (NCCL on a
CUDA machine, ring elsewhere): launch two ranks through the app's launcher, kill rank 1 mid-run,
and report what the survivors did (message, exit codes, the step saved, seconds to give up),
then resume on one process and check the run finishes.

    python3 benchmarks/host_drop_check.py --work /tmp/drop [--backend nccl] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--backend", default=None)
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--kill-at", type=int, default=40)
    p.add_argument("--json-out", default=None)
    a = p.parse_args()

    import mlx.core as mx

    from finetune_app.core.cluster.hosts import Host, HostList
    from finetune_app.core.cluster.launch import DistributedRun
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.data.demo import make_instruction_dataset
    from finetune_app.testing.tiny_models import build_tiny_model
    from finetune_app.core.training import events as ev

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "llama"
    if not model.exists():
        build_tiny_model("llama", model, seed=0)
    data = work / "data"
    if not data.exists():
        make_instruction_dataset(data, n=200, seed=0)
    backend = a.backend or ("nccl" if mx.cuda.is_available() else "ring")
    run = work / f"run-{int(time.time())}"
    cfg = TrainConfig(model=str(model), data=str(data), output=str(run), iters=a.iters, batch_size=4,
                      steps_per_report=1, steps_per_eval=10**6, save_every=25, sample_count=0)
    here = Host("127.0.0.1", ("127.0.0.1",))
    seen, lines = [], []
    def say(line):
        lines.append(line)
        print(f"{time.perf_counter() - t0:7.1f}s | {line}", flush=True)

    def listen(event):
        seen.append(event)
        if not isinstance(event, ev.TrainReport) or event.step % 10 == 0:
            say(f"event {event}"[:200])

    t0 = time.perf_counter()
    launch = DistributedRun(HostList((here, here), backend), cfg, listeners=[listen], log=say,
                            env={"FINETUNE_RECORD_RUNS": "0", "FINETUNE_DROP_TAG": run.name})
    launch.start()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("o", launch.wait()))
    t.start()
    while not any(isinstance(e, ev.TrainReport) and e.step >= a.kill_at for e in seen):
        assert t.is_alive(), lines[-10:]
        time.sleep(0.02)
    victim = None
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                env = open(f"/proc/{name}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"MLX_RANK=1" in env and f"FINETUNE_DROP_TAG={run.name}".encode() in env:
                victim = int(name)
    t_kill = time.perf_counter()
    say(f"killing rank 1 (pid {victim})")
    os.kill(victim, signal.SIGKILL)
    t.join(300)
    gave_up = time.perf_counter() - t_kill
    o = result.get("o")
    resumed = subprocess.run([sys.executable, "-m", "finetune_app", "train", "--resume", str(run), "--iters",
                              str(a.iters), "--quiet"], capture_output=True, text=True,
                             env=dict(os.environ, FINETUNE_RECORD_RUNS="0"))
    report = {"backend": backend, "killed_at_step": max(e.step for e in seen if isinstance(e, ev.TrainReport)),
              "status": o.status if o else None, "saved_step": o.step if o else None,
              "message": o.message if o else None, "exits": {str(k): v for k, v in (o.exits if o else {}).items()},
              "seconds_to_give_up": round(gave_up, 2),
              "checkpoints": sorted(x.name for x in (run / "checkpoints").iterdir()),
              "resume_rc": resumed.returncode, "resume_tail": (resumed.stdout + resumed.stderr)[-300:]}
    print(json.dumps(report, indent=2))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
