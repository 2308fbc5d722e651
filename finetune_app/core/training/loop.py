"""The training loop: one optimizer step at a time, everything else in hooks (hooks.py).

`run` is the trainer (its state, data, step and events); a hook may stop the run before a step
(pause/stop agreement), add lazy arrays evaluated with the step (one host sync per step), and act
after it (reports, evaluation, checkpoints, the data-parallel fallback point). Randomness is a
function of (seed, step) and the data order of (seed, epoch), so a resumed run repeats exactly.
The next step's batch is built while the device runs the step (`train_loop`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import mlx.core as mx

from finetune_app.core.training.schedule import learning_rate_at


@dataclass
class StepDone:
    step: int
    loss: mx.array  # evaluated: the mean loss of the step, the same on every rank
    grad_norm: mx.array | None
    learning_rate: float
    tokens: int  # supervised tokens of the whole step (all ranks)
    examples: int
    my_tokens: int  # this rank's share
    my_examples: int
    seconds: float
    metrics: dict = field(default_factory=dict)  # the objective's, per counted unit (floats)


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one optimizer step: randomness is a function of (seed, step)."""
    return (seed * 1_000_003 + step) % (2**63)


class _Ahead:
    """The next step's micro-batches, built while the device runs the step before (#16 loopipe):
    their global positions, the data position after them (committed when that step starts, so a
    checkpoint between the two records the data order of the steps it holds), this rank's
    batches, and what building them said or raised, handed over when the step starts, where the
    synchronous loop would have built them."""

    def __init__(self, run):
        s, acc = run.state, run.cfg.grad_accumulation
        here = (s.epoch, s.batch_in_epoch)
        try:
            self.micro = [run.next_micro_batch() for _ in range(acc)]  # global positions
            self.after = (s.epoch, s.batch_in_epoch)
        finally:
            s.epoch, s.batch_in_epoch = here
        self.events: list = []
        self.error: Exception | None = None
        self.batches: list = []
        run.emit = self.events.append  # (an instance attribute over the method, for this block only)
        try:
            self.batches = [run.make_batch(run.shard(pos)) for pos in self.micro]
        except Exception as exc:  # raised when the step starts, after the step before is reported
            self.error = exc
        finally:
            del run.emit

    def take(self, run) -> list:
        s = run.state
        s.epoch, s.batch_in_epoch = self.after
        for event in self.events:
            run.emit(event)
        if self.error is not None:
            raise self.error
        return self.batches


def builds_ahead(run) -> bool:
    """Whether the next step's batch may be built while the device runs a step. GRPO's batches
    are answers sampled from the weights that step makes (the sampling reads them back, and its
    rows are gathered across ranks and recorded as the step's): those are built in turn."""
    return getattr(run, "rollouts", None) is None


def train_loop(run, hooks, clock) -> str:
    """Train to `run.total_steps`: "finished", or "stopped" when a hook says stop before a step.

    One step in flight (#16 loopipe): the step's outputs are evaluated asynchronously and, while
    the device works, the host builds the next step's batch (re-reads, plans, tower fill, inputs);
    then it waits, checks the loss, and runs the hooks. Building a batch draws no random numbers
    (GRPO's, which do, are built in turn) and each step seeds its own, so the losses are those of
    the synchronous loop; the data position, the events and errors of a batch are handed over
    when its step starts, so checkpoints, stops and a divergence land on the same step."""
    cfg, s = run.cfg, run.state
    ahead = builds_ahead(run)
    for h in hooks:
        h.start(run)
    nxt: _Ahead | None = None
    while s.step < run.total_steps:
        if any(h.before_step(run) for h in hooks):
            return "stopped"
        t0 = time.perf_counter()
        mx.random.seed(step_seed(cfg.seed, s.step))
        lr = learning_rate_at(
            s.step, peak=cfg.learning_rate, total_steps=run.total_steps, schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
        run.optimizer.learning_rate = lr  # (a float32 value: the optimizer holds the same number)
        if nxt is None:
            nxt = _Ahead(run)
        micro, batches, nxt = nxt.micro, nxt.take(run), None
        n_tok = sum(run.data.train[i].n_targets for pos in micro for i in pos)
        norm = sum(run.units(run.data.train[i]) for pos in micro for i in pos)  # the objective's count
        mine = [run.world.shard(pos) for pos in micro]  # data parallel: this rank's examples
        loss, grad_norm = run.step(batches, norm)
        outputs = [run.base.model.trainable_parameters(), run.optimizer.state, loss, run.step.metrics,
                   *([grad_norm] if grad_norm is not None else []), *(a for h in hooks for a in h.with_step(run))]
        with run.dp.collective(f"summing the gradients of step {s.step + 1}"):
            if ahead and s.step + 1 < run.total_steps and not run.control.stop_requested:
                mx.async_eval(outputs)
                nxt = _Ahead(run)  # no collectives in it: every rank's collectives keep their order
            mx.eval(outputs)
        if not math.isfinite(loss.item()):
            run.diverged(s.step + 1, f"the training loss is {loss.item()}")
        s.step += 1
        s.trained_tokens += n_tok
        done = StepDone(step=s.step, loss=loss, grad_norm=grad_norm, learning_rate=lr, tokens=n_tok,
                        examples=sum(len(pos) for pos in micro), my_examples=sum(len(m) for m in mine),
                        my_tokens=sum(run.data.train[i].n_targets for m in mine for i in m),
                        seconds=time.perf_counter() - t0,
                        metrics={k: v.item() for k, v in run.step.metrics.items()})
        for h in hooks:
            with clock.off(h.off_clock):
                h.after_step(run, done)
    for h in hooks:
        h.finish(run)
    return "finished"
