"""What the loop does around each step, one concern per hook.

A hook may stop the run before a step (`before_step` returns True), add lazy arrays evaluated
together with the step (`with_step`: agreeing costs no extra host sync), act after the step, and
finish. Time a hook marks `off_clock` spends (evaluation, checkpoints, pauses) is left out of the
reported rates. Data-parallel training is these hooks plus the step's all-sum: agreement on
pause/stop, watched collectives and the last-good fallback (data_parallel.py), per-host rates.
"""

from __future__ import annotations

import contextlib
import time

import mlx.core as mx

from finetune_app.core.errors import FinetuneError
from finetune_app.core.training.events import EvalReport, FirstStep, Notice, StateChanged, TrainReport, process_age


class Clock:
    """Wall time of the run, minus what hooks spend off the clock."""

    def __init__(self):
        self.excluded = 0.0

    @contextlib.contextmanager
    def off(self, yes: bool = True):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if yes:
                self.excluded += time.perf_counter() - t0

    def now(self) -> float:
        return time.perf_counter() - self.excluded


class Hook:
    off_clock = False

    def start(self, run) -> None:
        pass

    def before_step(self, run) -> bool:
        return False

    def with_step(self, run) -> list:
        return []

    def after_step(self, run, done) -> None:
        pass

    def finish(self, run) -> None:
        pass


class Agreement(Hook):
    """Pause and stop, agreed by every process: each step also sums every process's requests
    (evaluated with the step), and the next step starts by reading that sum."""

    def __init__(self, dp, control, clock: Clock):
        self.dp, self.control, self.clock = dp, control, clock
        self.agreed = None

    def before_step(self, run) -> bool:
        dp, control = self.dp, self.control
        stop, _, pause = dp.read(self.agreed, control) if self.agreed is not None else dp.agree(control)
        if pause:
            run.emit(StateChanged("paused", step=run.state.step))
            with self.clock.off():
                while pause and not stop:  # the paused process(es) wait here, the others in agree()
                    control.wait_while_paused()
                    stop, _, pause = dp.agree(control, watched=False)
            if not stop:
                run.emit(StateChanged("resumed", step=run.state.step))
        return stop

    def with_step(self, run) -> list:
        self.agreed = self.dp.flag_sum(self.control)
        return [self.agreed] if self.agreed is not None else []


class Report(Hook):
    """TrainReport every `steps_per_report` steps and at the last: loss, rates, memory, ETA."""

    def __init__(self, clock: Clock, every: int, host_rates=lambda examples, tokens, seconds: ()):
        self.clock, self.every, self.host_rates = clock, every, host_rates  # per-host rates: data parallel
        self.step_times: list[float] = []
        self.last_loss = None
        self.first_done = False
        self._new_window()

    def _new_window(self):
        self.loss, self.steps, self.tokens, self.examples = mx.array(0.0), 0, 0, 0
        self.metrics: dict[str, float] = {}
        self.my_examples = self.my_tokens = 0
        self.t = self.clock.now()

    def start(self, run) -> None:
        mx.reset_peak_memory()
        self._new_window()

    def after_step(self, run, done) -> None:
        if not self.first_done:  # (#16) time to first step, in the event stream
            self.first_done = True
            run.emit(FirstStep(done.step, process_age(), time.perf_counter() - getattr(run, "t_start", time.perf_counter())))
        self.loss = self.loss + done.loss
        for k, v in done.metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v
        self.steps += 1
        self.tokens += done.tokens
        self.examples += done.examples
        self.my_examples += done.my_examples
        self.my_tokens += done.my_tokens
        self.step_times.append(done.seconds)
        if done.step % self.every and done.step != run.total_steps:
            return
        elapsed = max(self.clock.now() - self.t, 1e-9)
        self.last_loss = self.loss.item() / self.steps
        recent = self.step_times[-20:]
        s = run.state
        run.emit(TrainReport(
            step=done.step, total_steps=run.total_steps,
            epoch=s.epoch + s.batch_in_epoch / max(1, len(run.batches_of_epoch(s.epoch))),
            loss=self.last_loss, learning_rate=done.learning_rate, tokens_per_second=self.tokens / elapsed,
            examples_per_second=self.examples / elapsed,
            peak_memory_gb=mx.get_peak_memory() / 1e9, active_memory_gb=mx.get_active_memory() / 1e9,
            step_time=elapsed / self.steps, eta_seconds=(run.total_steps - done.step) * (sum(recent) / len(recent)),
            trained_tokens=s.trained_tokens,
            grad_norm=float(done.grad_norm.item()) if done.grad_norm is not None else None,
            hosts=self.host_rates(self.my_examples, self.my_tokens, elapsed),
            metrics={k: v / self.steps for k, v in self.metrics.items()}))
        self._new_window()


class Evaluate(Hook):
    """Validation loss (and sample generations) every `steps_per_eval` steps and at the last."""

    off_clock = True

    def __init__(self, every: int):
        self.every = every
        self.last_val = None

    def after_step(self, run, done) -> None:
        if run.data.valid and (done.step % self.every == 0 or done.step == run.total_steps):
            self.last_val = run.evaluate_and_sample(done.step)


class ScoreGenerations(Hook):
    """Evaluation during training (TrainConfig.eval_metrics): at each evaluation, greedy
    generations for the first `rows` validation rows in the run's own prompt layout, scored with
    core/scoring.py, as an EvalReport. Runs after Evaluate and before Checkpoints, so a checkpoint
    at that step records the scores (the best checkpoint may be chosen by one). Rank 0 only."""

    off_clock = True
    LABEL_ROWS = 5000  # label sets are detected from (at most) this many of the dataset's answers

    def __init__(self, every: int, names, rows: int):
        self.every, self.names, self.rows = every, list(names), rows
        self.slots = []
        self.last: dict | None = None

    def start(self, run) -> None:
        from finetune_app.core import scoring

        if not run.world.is_main:
            return
        if not run.data.valid:
            run.emit(Notice("No validation rows: the scores of evaluation during training (eval_metrics) are "
                            "left out" + (", and no checkpoint is marked as best." if run.cfg.best_by != "val_loss" else ".")))
            return
        if "accuracy" not in self.names:
            return
        try:  # as `finetune-app eval`: the labels of the whole dataset, not only the rows scored
            ds = run.data.dataset
            refs = [s.answer for s in ds.samples(range(min(len(ds), self.LABEL_ROWS)))]
        except (FinetuneError, OSError, ValueError):  # a row the trainer skipped as unreadable: the split's answers
            refs = [s.answer for s in run.data.samples]
        self.slots = scoring.label_slots(refs)
        if not self.slots:
            run.emit(Notice("No label set was found in the dataset's answers (free text): the accuracy score is "
                            "left out of the evaluation during training"
                            + (", and no checkpoint is marked as best." if run.cfg.best_by == "accuracy" else ".")))

    def after_step(self, run, done) -> None:
        from finetune_app.core import scoring

        if not (run.data.valid and run.world.is_main and (done.step % self.every == 0 or done.step == run.total_steps)):
            return
        t0 = time.perf_counter()
        items = run.generate_rows(self.rows)
        metrics = scoring.metric_values(self.names, [i.output for i in items], [i.reference for i in items], self.slots)
        run.state.val_metrics, run.state.metrics_step = metrics, done.step
        self.last = metrics
        run.emit(EvalReport(step=done.step, metrics=metrics, n=len(items), seconds=time.perf_counter() - t0,
                            items=items))


class Checkpoints(Hook):
    """A checkpoint every `save_every` steps, and one when training finishes."""

    off_clock = True

    def __init__(self, every: int):
        self.every = every

    def after_step(self, run, done) -> None:
        if done.step % self.every == 0 and done.step < run.total_steps:
            run.save_checkpoint()

    def finish(self, run) -> None:
        run.save_checkpoint()
