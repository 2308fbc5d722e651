"""Console progress (cli/progress.py, tqdm): a redrawing bar on a terminal with every other line
printed above it; plain lines, no carriage returns, when the output is a file or a pipe."""

from __future__ import annotations

import io

from finetune_app.cli.progress import ConsolePrinter, fmt_seconds, fraction_printer
from finetune_app.core.training.events import CheckpointSaved, Notice, Progress, StateChanged, TrainReport


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def report(step: int, total: int = 40) -> TrainReport:
    return TrainReport(step=step, total_steps=total, epoch=step / total, loss=1.25 / step, learning_rate=1e-3,
                       tokens_per_second=1234.0, examples_per_second=5.5, peak_memory_gb=0.25, active_memory_gb=0.2,
                       step_time=0.1, eta_seconds=65.0 * (total - step) / total, trained_tokens=100 * step, grad_norm=0.5)


def events():
    yield StateChanged("preparing")
    for done in (0, 5, 10):
        yield Progress("tokenizing", done, 10)
    yield StateChanged("started")
    for step in (10, 20):
        yield report(step)
    yield Notice("2 rows were skipped")
    yield CheckpointSaved(20, "/runs/r/step-0000020")
    for step in (30, 40):
        yield report(step)
    yield StateChanged("finished")


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    printer = ConsolePrinter(out)
    for e in events():
        printer(e)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert "tokenizing: 10/10 (100.0%)" in lines
    assert "step 20/40 (50.0%) | loss 0.0625 | lr 1.00e-03 | 1,234 tok/s | 5.50 ex/s | peak 0.25 GB | grad 0.50 | ETA 00:32" in lines
    assert lines.index("note: 2 rows were skipped") == lines.index("step 20/40 (50.0%) | loss 0.0625 | lr 1.00e-03 | "
                                                                    "1,234 tok/s | 5.50 ex/s | peak 0.25 GB | grad 0.50 | "
                                                                    "ETA 00:32") + 1
    assert lines[-1] == "[finished]"


def test_quiet_keeps_steps_notes_and_the_end():
    out = io.StringIO()
    printer = ConsolePrinter(out, quiet=True)
    for e in events():
        printer(e)
    text = out.getvalue()
    assert "checkpoint saved" not in text and "[started]" not in text
    assert "step 40/40 (100.0%)" in text and "note: 2 rows were skipped" in text and text.endswith("[finished]\n")


def test_a_terminal_gets_tqdm_bars_and_lines_above_them():
    out = Terminal()
    printer = ConsolePrinter(out)
    for e in events():
        printer(e)
    text = out.getvalue()
    assert "\r" in text  # redrawn in place
    assert "tokenizing 100%|" in text and "| 10/10" in text
    assert "step 100%|" in text and "| 40/40" in text and "loss 0.0312" in text and "ETA 00:00" in text
    # the other lines sit on lines of their own, not glued to a bar
    assert any(line.strip() == "note: 2 rows were skipped" for line in text.replace("\r", "\n").splitlines())
    assert printer.steps is None and printer.phases == {}  # closed at the end


def test_a_resumed_run_starts_its_bar_at_its_step():
    out = Terminal()
    printer = ConsolePrinter(out)
    printer(report(30))
    assert printer.steps.n == 30 and printer.steps.total == 40
    printer(StateChanged("stopped", "stopped by the user"))
    assert "[stopped] stopped by the user" in out.getvalue()


def test_fraction_printer():
    out = io.StringIO()
    progress, close = fraction_printer(out)
    for f, m in ((0.0, "Loading"), (0.1, "Loading"), (0.5, "Writing"), (1.0, "Done")):
        progress(f, m)
    close()
    assert out.getvalue() == "[  0.0%] Loading\n[ 50.0%] Writing\n[100.0%] Done\n"
    tty = Terminal()
    progress, close = fraction_printer(tty)
    progress(0.25, "Writing the weights")
    progress(1.0, "Done")
    close()
    assert "Writing the weights" in tty.getvalue() and "\r" in tty.getvalue() and "1000/1000" in tty.getvalue()


def test_fmt_seconds():
    assert [fmt_seconds(s) for s in (-3, 0, 65, 3725)] == ["00:00", "00:00", "01:05", "1:02:05"]
