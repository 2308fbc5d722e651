"""The training loop: one optimizer step at a time, everything else in hooks (hooks.py).

`run` is the trainer (its state, data, step and events); a hook may stop the run before a step
(pause/stop agreement), add lazy arrays evaluated with the step (one host sync per step), and act
after it (reports, evaluation, checkpoints, the data-parallel fallback point). Randomness is a
function of (seed, step) and the data order of (seed, epoch), so a resumed run repeats exactly.
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


def train_loop(run, hooks, clock) -> str:
    """Train to `run.total_steps`: "finished", or "stopped" when a hook says stop before a step."""
    cfg, s = run.cfg, run.state
    for h in hooks:
        h.start(run)
    while s.step < run.total_steps:
        if any(h.before_step(run) for h in hooks):
            return "stopped"
        t0 = time.perf_counter()
        mx.random.seed(step_seed(cfg.seed, s.step))
        run.optimizer.learning_rate = learning_rate_at(
            s.step, peak=cfg.learning_rate, total_steps=run.total_steps, schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
        lr = run.optimizer.learning_rate.item()
        micro = [run.next_micro_batch() for _ in range(cfg.grad_accumulation)]  # global positions
        n_tok = sum(run.data.train[i].n_targets for pos in micro for i in pos)
        norm = sum(run.units(run.data.train[i]) for pos in micro for i in pos)  # the objective's count
        mine = [run.world.shard(pos) for pos in micro]  # data parallel: this rank's examples
        loss, grad_norm = run.step([run.make_batch(run.shard(pos)) for pos in micro], norm)
        lazy = [a for h in hooks for a in h.with_step(run)]
        with run.dp.collective(f"summing the gradients of step {s.step + 1}"):
            mx.eval(run.base.model.trainable_parameters(), run.optimizer.state, loss, run.step.metrics, *lazy)
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
