"""The full evaluation (core.evaluation: metrics, perplexity, bootstrap intervals, eval.json and
report.html) on its own QThread, for the Compare tab.

The thread loads its own models (MLX streams are thread-local; the training model is never
touched) and frees its MLX state before it ends. Cancel is cooperative: the engine asks between
rows, keeps the rows finished in its cache, and a later start resumes after them. Results and
errors come back only as signals, queued to the GUI thread; an error is a message, never a
traceback.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QThread, Signal

if TYPE_CHECKING:  # the engine's evaluation is imported on the worker's thread, when first used
    from finetune_app.core.evaluation import EvalRequest
    from finetune_app.ui.caption_panel import CompareRequest


def eval_request(req: "CompareRequest", resamples: int = 1000) -> "EvalRequest":
    """The full evaluation of what a comparison compares: same models, rows and settings."""
    from finetune_app.core.evaluation import EvalRequest, Side

    return EvalRequest(model=req.model, after=Side(req.tuned), data=req.data, part=req.part, limit=req.limit,
                       valid_fraction=req.valid_fraction, seed=req.seed, prompt=req.prompt,
                       image_size=req.image_size, settings=req.settings, resamples=resamples)


class EvalWorker(QThread):
    """Signals: `status(text)`, `progressed(side, done, total)`, `finished_ok(result, report_path)`,
    `failed(message)`, `cancelled()`; exactly one of the last three, then QThread's `finished`."""

    status = Signal(str)
    progressed = Signal(str, int, int)
    finished_ok = Signal(object, str)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, request: "CompareRequest", out_dir: str | Path, *, resamples: int = 1000, parent=None):
        super().__init__(parent)
        self.setObjectName("finetune-eval")
        self.request = request
        self.resamples = resamples
        self.out_dir = Path(out_dir)
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop before the next row (the rows finished stay cached)."""
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:
        from finetune_app.core.evaluation import evaluate, write_outputs
        from finetune_app.core.evaluation.evaluate import Cancelled
        from finetune_app.ui.widgets import message_of
        from finetune_app.ui.workers import release_mlx_thread_state

        try:
            result = evaluate(eval_request(self.request, self.resamples), progress=False, status=self.status.emit,
                              cancelled=self._cancel.is_set, on_progress=self.progressed.emit)
            self.status.emit("writing the report…")
            _, report = write_outputs(result, self.out_dir)
            self.finished_ok.emit(result, str(report))
        except Cancelled:
            self.cancelled.emit()
        except BaseException as exc:  # shown in the tab, never as a traceback
            self.failed.emit(message_of(exc))
        finally:
            release_mlx_thread_state()


class Eta:
    """Rows per second over this session's rows (not those from the cache), as a readable ETA."""

    def __init__(self):
        self.start: float | None = None
        self.first = 0

    def update(self, done: int, total: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if self.start is None:
            self.start, self.first = now, done
            return ""
        rate = (done - self.first) / max(now - self.start, 1e-6)
        if done <= self.first or rate <= 0:
            return ""
        left = (total - done) / rate
        return "about " + (f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min") + " left"
