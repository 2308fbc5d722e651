"""Terminal rendering of the engine's event stream: a progress bar with loss, speed and ETA."""

from __future__ import annotations

import sys

from finetune_app.core.training.events import (CheckpointSaved, Notice, Progress, ProgressThrottle, SampleReport, StateChanged,
                                               TrainReport, ValReport)


def fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def bar(done: int, total: int, width: int = 24) -> str:
    frac = 0 if total <= 0 else min(1.0, done / total)
    full = int(frac * width)
    return "[" + "#" * full + "." * (width - full) + f"] {frac * 100:5.1f}%"


class ConsolePrinter:
    """Prints events; on a terminal the step line redraws in place."""

    def __init__(self, stream=None, *, quiet: bool = False):
        self.out = stream or sys.stderr
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.quiet = quiet
        self.progress = ProgressThrottle(0.5)
        self._open_line = False

    def _line(self, text: str, *, transient: bool = False) -> None:
        if self.tty and transient:
            self.out.write("\r\033[K" + text)
            self._open_line = True
        else:
            if self._open_line:
                self.out.write("\n")
                self._open_line = False
            self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, event) -> None:
        if isinstance(event, TrainReport):
            extra = f" | grad {event.grad_norm:.2f}" if event.grad_norm is not None else ""
            self._line(f"step {event.step}/{event.total_steps} {bar(event.step, event.total_steps)} | loss {event.loss:.4f}"
                       f" | lr {event.learning_rate:.2e} | {event.tokens_per_second:,.0f} tok/s"
                       f" | {event.examples_per_second:.2f} ex/s | peak {event.peak_memory_gb:.2f} GB"
                       f"{extra} | ETA {fmt_seconds(event.eta_seconds)}")
        elif isinstance(event, ValReport):
            self._line(f"step {event.step}: validation loss {event.val_loss:.4f} ({event.val_tokens} tokens, {event.seconds:.1f} s)")
        elif isinstance(event, SampleReport) and not self.quiet:
            for item in event.items:
                who = item.image.rsplit("/", 1)[-1] if item.image else item.prompt[:40]
                self._line(f"  sample {who}: {item.output!r} (reference: {item.reference!r})")
        elif isinstance(event, Progress):
            if self.progress.due(event):
                self._line(f"{event.phase}: {bar(event.done, event.total)} ({event.done}/{event.total})",
                           transient=event.done < event.total)
        elif isinstance(event, CheckpointSaved) and not self.quiet:
            self._line(f"checkpoint saved at step {event.step}: {event.path}")
        elif isinstance(event, Notice):
            self._line(f"note: {event.message}")
        elif isinstance(event, StateChanged):
            if event.state == "failed":
                return  # the CLI prints the error itself
            if not self.quiet or event.state in ("finished", "stopped"):
                self._line(f"[{event.state}]" + (f" {event.reason}" if event.reason else ""))
