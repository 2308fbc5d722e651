"""Terminal rendering of the engine's event stream and of an export's progress, with tqdm.

On a terminal, training steps and each preparation phase get a tqdm bar that redraws in place,
and every other line is printed above it (`tqdm.write`). When the stream is not a terminal (a log
file, a pipe, a test) there are no bars and no carriage returns: one plain line per report.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from finetune_app.core.training.objective_metrics import text as objective_text
from finetune_app.core.training.events import (CheckpointSaved, Notice, ObjectiveReport, Progress, ProgressThrottle,
                                               SampleReport, StateChanged, EvalReport, TrainReport, ValReport)

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt}{postfix}"


def fmt_seconds(s: float) -> str:
    return tqdm.format_interval(max(0, int(s)))


def is_terminal(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def terminal_bar(stream, total: int, desc: str, *, initial: int = 0, postfix: str | None = None) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, postfix=postfix, file=stream, bar_format=BAR_FORMAT,
                dynamic_ncols=True, mininterval=0.2, leave=True)


class ConsolePrinter:
    """Prints events: a step bar (terminal) or one line per report."""

    def __init__(self, stream=None, *, quiet: bool = False):
        self.out = stream or sys.stderr
        self.tty = is_terminal(self.out)
        self.quiet = quiet
        self.progress = ProgressThrottle(0.5)
        self.steps: tqdm | None = None
        self.phases: dict[str, tqdm] = {}
        self.rewards: dict = {}  # GRPO: the last training ObjectiveReport's metrics, shown on the next step line

    def _line(self, text: str) -> None:
        if self.tty:
            tqdm.write(text, file=self.out)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def _train(self, event: TrainReport) -> None:
        extra = f" | grad {event.grad_norm:.2f}" if event.grad_norm is not None else ""
        extra += objective_text({**event.metrics, **self.rewards})
        stats = (f"loss {event.loss:.4f} | lr {event.learning_rate:.2e} | {event.tokens_per_second:,.0f} tok/s"
                 f" | {event.examples_per_second:.2f} ex/s | peak {event.peak_memory_gb:.2f} GB{extra}"
                 f" | ETA {fmt_seconds(event.eta_seconds)}")
        if not self.tty:
            pct = 100 * min(1.0, event.step / max(event.total_steps, 1))
            self._line(f"step {event.step}/{event.total_steps} ({pct:.1f}%) | {stats}")
            return
        if self.steps is None:
            self.steps = terminal_bar(self.out, event.total_steps, "step", initial=event.step, postfix=stats)
        self.steps.total = event.total_steps
        self.steps.set_postfix_str(stats, refresh=False)
        self.steps.update(event.step - self.steps.n)

    def _phase(self, event: Progress) -> None:
        if not self.progress.due(event):
            return
        if not self.tty:
            pct = 100 * min(1.0, event.done / max(event.total, 1))
            self._line(f"{event.phase}: {event.done}/{event.total} ({pct:.1f}%)")
            return
        bar = self.phases.get(event.phase)
        if bar is None:
            bar = self.phases[event.phase] = terminal_bar(self.out, event.total, event.phase)
        bar.total = event.total
        bar.update(event.done - bar.n)
        if event.done >= event.total:
            bar.close()
            del self.phases[event.phase]

    def close(self) -> None:
        for bar in [self.steps, *self.phases.values()]:
            if bar is not None:
                bar.close()
        self.steps, self.phases = None, {}

    def __call__(self, event) -> None:
        if isinstance(event, TrainReport):
            self._train(event)
        elif isinstance(event, ObjectiveReport):
            if event.split == "train":
                self.rewards = dict(event.metrics)
            else:
                self._line(f"step {event.step}: held-out{objective_text(event.metrics).replace(' |', '', 1)}")
        elif isinstance(event, ValReport):
            self._line(f"step {event.step}: validation loss {event.val_loss:.4f} ({event.val_tokens} {event.unit}, {event.seconds:.1f} s)")
        elif isinstance(event, EvalReport):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items())
            self._line(f"step {event.step}: scores on {event.n} validation rows: {scores or 'none'} ({event.seconds:.1f} s)")
        elif isinstance(event, SampleReport) and not self.quiet:
            for item in event.items:
                who = item.image.rsplit("/", 1)[-1] if item.image else item.prompt[:40]
                self._line(f"  sample {who}: {item.output!r} (reference: {item.reference!r})")
        elif isinstance(event, Progress):
            self._phase(event)
        elif isinstance(event, CheckpointSaved) and not self.quiet:
            self._line(f"checkpoint saved at step {event.step}: {event.path}")
        elif isinstance(event, Notice):
            self._line(f"note: {event.message}")
        elif isinstance(event, StateChanged):
            if event.state in ("finished", "stopped", "failed"):
                self.close()
            if event.state == "failed":
                return  # the CLI prints the error itself
            if not self.quiet or event.state in ("finished", "stopped"):
                self._line(f"[{event.state}]" + (f" {event.reason}" if event.reason else ""))


def fraction_printer(stream):
    """(progress(fraction, message), close()) for work reported as a fraction (export): a bar on a
    terminal, otherwise a line whenever the message changes."""
    state: dict = {"bar": None, "msg": None}

    def progress(fraction: float, message: str) -> None:
        if is_terminal(stream):
            done = int(fraction * 1000)
            if state["bar"] is None:
                state["bar"] = terminal_bar(stream, 1000, message[:60], initial=done)
            bar = state["bar"]
            bar.set_description_str(message[:60], refresh=False)
            bar.update(done - bar.n)
        elif message != state["msg"]:
            stream.write(f"[{fraction * 100:5.1f}%] {message}\n")
            stream.flush()
        state["msg"] = message

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    return progress, close
