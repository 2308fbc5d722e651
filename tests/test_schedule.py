"""Learning-rate schedules (mlx.optimizers' cosine_decay / linear_schedule / join_schedules): the
rates equal the project's formula (transcribed here independently, in float64) to float32 rounding, and an optimizer
that owns the schedule continues it exactly after its state is saved and restored."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from finetune_app.core.training.optim import make_optimizer
from finetune_app.core.training.schedule import learning_rate_at, lr_schedule

OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion", "adagrad", "rmsprop", "adadelta", "adamax")


def reference(step, *, peak, total, schedule, warmup, min_ratio):
    """The schedule as the project defined it before it used mlx's (float64)."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    floor = peak * min_ratio
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (peak - floor) * (1 - progress)


CASES = [(s, w, total, r) for s in ("constant", "cosine", "linear") for w in (0, 1, 3, 10)
         for total in (1, 7, 100) for r in (0.0, 0.1)]


@pytest.mark.parametrize("schedule,warmup,total,min_ratio", CASES)
def test_rates_equal_the_formula(schedule, warmup, total, min_ratio):
    peak = 1e-3
    for step in range(0, total + warmup + 3):  # past the end too: the rate stays at its floor
        want = reference(step, peak=peak, total=total, schedule=schedule, warmup=warmup, min_ratio=min_ratio)
        got = learning_rate_at(step, peak=peak, total_steps=total, schedule=schedule, warmup_steps=warmup,
                               min_ratio=min_ratio)
        # float32 (MLX) against float64: the cosine's 1 + cos(pi * p) loses a few bits near its end
        assert abs(got - want) <= 1e-6 * peak, (step, got, want)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="sawtooth"):
        lr_schedule(1e-3, 10, "sawtooth")


def _train(opt, model, steps, start=0):
    rates = []
    for i in range(start, start + steps):
        x = mx.array([[0.5, -1.0, 2.0]]) * (i + 1)
        grads = nn.value_and_grad(model, lambda m: (m(x) ** 2).sum())(model)[1]
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        rates.append(opt.learning_rate.item())
    return rates


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_owns_the_schedule_and_resumes_exactly(name, tmp_path):
    kw = dict(peak=1e-2, total_steps=12, schedule="cosine", warmup_steps=3, min_ratio=0.1)
    sched = lr_schedule(kw["peak"], kw["total_steps"], kw["schedule"], kw["warmup_steps"], kw["min_ratio"])
    mx.random.seed(0)
    straight = nn.Linear(3, 2)
    start = dict(tree_flatten(straight.parameters()))
    rates = _train(make_optimizer(name, sched, 0.01), straight, 12)
    # update i used the rate of step i (the optimizer evaluates the schedule before counting the step)
    assert rates == pytest.approx([learning_rate_at(i, **kw) for i in range(12)], rel=0, abs=0)

    resumed = nn.Linear(3, 2)
    resumed.update(tree_unflatten(list(start.items())))
    opt = make_optimizer(name, sched, 0.01)
    first = _train(opt, resumed, 5)
    mx.save_safetensors(str(tmp_path / "opt.safetensors"), dict(tree_flatten(opt.state)))
    weights = dict(tree_flatten(resumed.parameters()))
    mx.eval(weights)

    again = nn.Linear(3, 2)  # a fresh process: new model and optimizer, state from disk
    again.update(tree_unflatten(list(weights.items())))
    opt2 = make_optimizer(name, sched, 0.01)
    opt2.init(again.trainable_parameters())
    opt2.state = tree_unflatten(list(mx.load(str(tmp_path / "opt.safetensors")).items()))
    rest = _train(opt2, again, 7, start=5)
    assert first + rest == rates
    for k, v in tree_flatten(straight.parameters()):
        assert mx.array_equal(v, dict(tree_flatten(again.parameters()))[k]).item(), (name, k)
