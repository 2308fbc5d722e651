"""The event stream every front end consumes: the CLI prints it, the GUI turns it into signals,
the run folder's metrics.jsonl records it. Events are plain dataclasses (no Qt, no MLX arrays)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
    kind: str = field(default="train", init=False)


@dataclass(frozen=True)
class ValReport:
    step: int
    val_loss: float
    val_tokens: int
    seconds: float
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
class CheckpointSaved:
    step: int
    path: str
    kind: str = field(default="checkpoint", init=False)


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not an error (skipped rows, fallbacks)."""

    message: str


Event = StateChanged | Progress | TrainReport | ValReport | SampleReport | CheckpointSaved | Notice
Listener = Callable[[Event], None]


def to_dict(event) -> dict:
    d = dataclasses.asdict(event)
    d.setdefault("kind", type(event).__name__)
    return d


class MetricsLog:
    """Appends train/val/sample reports to metrics.jsonl, one JSON object per line.

    Each line is written whole and flushed; a line cut short by a kill is dropped on read, and
    resume truncates the file to the checkpoint's step so no step appears twice."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __call__(self, event) -> None:
        if isinstance(event, (TrainReport, ValReport, SampleReport, CheckpointSaved)):
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
