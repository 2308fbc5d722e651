"""The event stream every front end consumes: the CLI prints it, the GUI turns it into signals,
the run folder's metrics.jsonl records it. Events are plain dataclasses (no Qt, no MLX arrays)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic as _monotonic
from typing import Callable

_IMPORTED = _monotonic()

STATES = ("loading", "preparing", "started", "paused", "resumed", "stopping", "stopped", "finished", "failed")


@dataclass(frozen=True)
class StateChanged:
    state: str  # one of STATES
    reason: str = ""  # for "failed": the readable message; for "stopped": why
    step: int = 0


@dataclass(frozen=True)
class Progress:
    """Work before training starts (download, tokenising, caching)."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class HostRate:
    """One process of a data-parallel run over a report window (its shard of the global batch)."""

    rank: int
    host: str
    examples_per_second: float
    tokens_per_second: float
    peak_memory_gb: float


@dataclass(frozen=True)
class TrainReport:
    step: int
    total_steps: int
    epoch: float
    loss: float  # mean over the report window, per supervised token
    learning_rate: float
    tokens_per_second: float  # supervised (answer) tokens per second
    examples_per_second: float
    peak_memory_gb: float
    active_memory_gb: float
    step_time: float  # seconds per optimizer step over the window
    eta_seconds: float
    trained_tokens: int
    grad_norm: float | None = None
    hosts: tuple[HostRate, ...] = ()  # data-parallel runs: each process's share, rank order
    # the objective's own (DPO/ORPO: reward_accuracy, reward_margin, chosen_logps, ...), window means
    metrics: dict = field(default_factory=dict)
    kind: str = field(default="train", init=False)


@dataclass(frozen=True)
class ValReport:
    step: int
    val_loss: float
    val_tokens: int  # what the loss is averaged over: supervised tokens, or `unit`
    seconds: float
    unit: str = "tokens"  # "pairs" (DPO, ORPO), "answers" (GRPO)
    kind: str = field(default="val", init=False)


@dataclass(frozen=True)
class SampleItem:
    index: int
    prompt: str
    reference: str
    output: str
    image: str = ""  # path of the (first) image, when there is one


@dataclass(frozen=True)
class SampleReport:
    step: int
    items: tuple[SampleItem, ...]
    kind: str = field(default="samples", init=False)


@dataclass(frozen=True)
class EvalReport:
    """Scores (TrainConfig.eval_metrics, from core/scoring.py) of greedy generations for the first
    `n` validation rows; `items` are those rows' outputs, so the numbers can be recomputed."""

    step: int
    metrics: dict  # name -> value (BLEU and chrF 0-100, the rest 0-1)
    n: int
    seconds: float
    items: tuple[SampleItem, ...] = ()
    kind: str = field(default="eval", init=False)


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: str
    kind: str = field(default="checkpoint", init=False)


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not an error (skipped rows, fallbacks)."""

    message: str


@dataclass(frozen=True)
class FirstStep:
    """This process's first optimizer step has completed: what a user waits for before training
    shows progress (loading, data preparation, tower-feature caching, compilation; #16)."""

    step: int
    seconds_since_process_start: float  # from the OS's record of the process start
    seconds_since_run_start: float  # from Trainer.run (setup included)
    kind: str = field(default="first_step", init=False)


@dataclass(frozen=True)
class ObjectiveReport:
    """What an objective measures beyond its loss, per step (GRPO: reward mean and spread, KL)."""

    step: int
    metrics: dict
    split: str = "train"  # "train", or "valid" for held-out evaluations
    kind: str = field(default="objective", init=False)


Event = (StateChanged | Progress | FirstStep | TrainReport | ValReport | SampleReport | EvalReport | CheckpointSaved | Notice
         | ObjectiveReport)
Listener = Callable[[Event], None]


def to_dict(event) -> dict:
    d = dataclasses.asdict(event)
    d.setdefault("kind", type(event).__name__)
    return d


_KINDS = {"train": TrainReport, "first_step": FirstStep, "val": ValReport, "samples": SampleReport, "eval": EvalReport, "checkpoint": CheckpointSaved,
          "objective": ObjectiveReport,
          "StateChanged": StateChanged, "Progress": Progress, "Notice": Notice}


def from_dict(d: dict):
    """The event `to_dict` wrote (events cross a process boundary in distributed runs)."""
    d = dict(d)
    cls = _KINDS[d.pop("kind")]
    if cls is TrainReport:
        d["hosts"] = tuple(HostRate(**h) for h in d.get("hosts", ()))
    elif cls in (SampleReport, EvalReport):
        d["items"] = tuple(SampleItem(**i) for i in d.get("items", ()))
    return cls(**d)


def process_age() -> float:
    """Seconds since this process started: Linux's /proc, else `ps` (macOS), else since this
    module was imported (close to the start for the CLI)."""
    import os
    import time

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import subprocess

        out = subprocess.run(["ps", "-o", "etime=", "-p", str(os.getpid())], capture_output=True, text=True,
                             timeout=5).stdout.strip()  # [[dd-]hh:]mm:ss
        days, _, rest = out.rpartition("-")
        parts = [int(x) for x in rest.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return (int(days or 0) * 24 + parts[0]) * 3600 + parts[1] * 60 + parts[2]
    except Exception:
        return time.monotonic() - _IMPORTED


class ProgressThrottle:
    """Tokenising reports every row; a reader wants a few a second. `due(event)`: pass this
    Progress on (the last one of a phase always passes)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last = 0.0

    def due(self, event: Progress) -> bool:
        import time

        now = time.monotonic()
        if event.done >= event.total or now - self._last >= self.interval:
            self._last = now
            return True
        return False


EVENT_MARK = "FINETUNE-EVENT "  # a line of rank 0's stdout that carries one event (distributed runs)


class EventLines:
    """Prints each event as one marked JSON line: how rank 0 of an `mlx.launch` run reports to
    the machine that launched it (core/cluster/launch.py reads them back with `parse_line`)."""

    def __init__(self, stream=None):
        import sys

        self.stream = stream or sys.stdout
        self.progress = ProgressThrottle(0.1)

    def __call__(self, event) -> None:
        if isinstance(event, Progress) and not self.progress.due(event):
            return
        self.stream.write(EVENT_MARK + json.dumps(to_dict(event)) + "\n")
        self.stream.flush()


def parse_line(line: str):
    """The event on a line EventLines wrote, else None."""
    at = line.find(EVENT_MARK)
    if at < 0:
        return None
    try:
        return from_dict(json.loads(line[at + len(EVENT_MARK):]))
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """Appends train/val/sample/eval reports (and the time to first step) to metrics.jsonl, one JSON object per line.

    Each line is written whole and flushed; a line cut short by a kill is dropped on read, and
    resume truncates the file to the checkpoint's step so no step appears twice."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __call__(self, event) -> None:
        if isinstance(event, (TrainReport, ValReport, SampleReport, EvalReport, CheckpointSaved, ObjectiveReport, FirstStep)):
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(to_dict(event)) + "\n")
                fh.flush()

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        rows = []
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return rows
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a partial last line from a kill
        return rows

    def truncate_after(self, step: int) -> None:
        from finetune_app.core import atomic

        rows = [r for r in self.read(self.path) if r.get("step", 0) <= step]
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
