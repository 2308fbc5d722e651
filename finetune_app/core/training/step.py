"""One optimizer step for every path: value-and-grad over the micro-batches (gradient
accumulation), the sum across data-parallel ranks, clipping and the update; compiled with
`mx.compile` where the family's inputs are plain arrays.

A step of one micro-batch is one compiled function (forward, backward, all-sum, clip, update).
With accumulation, the compiled part is the forward/backward of a micro-batch; gradients are added
on the device and summed across ranks once. Nothing is read back to the host here: the loop
evaluates the step's outputs together with the parameters (one sync per step).
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from finetune_app.core.training.objectives.logps import with_extra


class Step:
    def __init__(self, model, optimizer, family, objective, *, grad_clip: float | None = None, world=None):
        from finetune_app.core.distributed import world as current_world

        self.model, self.optimizer, self.family, self.objective = model, optimizer, family, objective
        self.grad_clip = grad_clip
        self.world = world or current_world()
        self._fns: dict[str, object] = {}
        self.metrics: dict[str, mx.array] = {}  # the last step's objective metrics (lazy), per counted unit
        self.shapes: set = set()  # distinct input shapes the step has seen (compiled: one trace each)

    def inputs(self, batch):
        """What the objective gets: the family's inputs plus the batch's `extra` arrays (its NEEDS)."""
        x = with_extra(self.family.inputs(batch), batch)
        if isinstance(x, dict):
            self.shapes.add(tuple(sorted((k, getattr(v, "shape", None)) for k, v in x.items() if hasattr(v, "shape"))))
        return x

    def loss_sum(self, batch) -> tuple[mx.array, mx.array]:
        """Summed loss and its count for one batch, no gradients (validation, perplexity)."""
        total, count, self.eval_metrics = self.objective.loss(self.model, self.family, self.inputs(batch))
        return total, count

    def _grads(self):
        def scaled(norm, x):
            total, _, metrics = self.objective.loss(self.model, self.family, x)
            return total / norm, metrics

        return nn.value_and_grad(self.model, scaled)

    def _build(self, accumulate: bool):
        model, optimizer, world, clip = self.model, self.optimizer, self.world, self.grad_clip
        loss_and_grad = self._grads()
        if accumulate:
            fn, state = loss_and_grad, [model.state, mx.random.state]
        else:
            def fn(norm, x):
                (loss, metrics), grads = loss_and_grad(norm, x)
                loss, grads = world.sum(loss), world.sum_tree(grads)  # data parallel: sum the shards
                metrics = {k: world.sum(v) / norm for k, v in metrics.items()}
                grad_norm = mx.array(0.0)
                if clip:
                    grads, grad_norm = optim.clip_grad_norm(grads, clip)
                optimizer.update(model, grads)
                return loss, grad_norm, metrics
            state = [model.state, optimizer.state, mx.random.state]
        if not self.family.compiled:
            return fn
        # value_and_grad swaps traced arrays into the model: the model state is an output too
        return partial(mx.compile, inputs=state, outputs=state)(fn)

    def __call__(self, batches: list, norm: float | None = None):
        """Mean loss over the step's counted units (tokens; pairs), and the gradient norm (None without
        clipping); the objective's metrics, per unit, in `self.metrics` (lazy, evaluated with the step).
        `norm`: the count of the whole step (all ranks when data-parallel); the batches' own by default."""
        if norm is None:
            norm = sum(b.units if b.units is not None else b.n_targets for b in batches)
        norm = mx.array(float(norm) or 1.0)
        if not self._fns:  # (#16 vlmpipe) the optimizer's state made before the first trace, as its first
            self.optimizer.init(self.model.trainable_parameters())  # update would: else the state the
            # compiled step captures changes after step 1, and step 2 traces again (one more trace)
        if len(batches) == 1:
            fn = self._fns.get("full") or self._fns.setdefault("full", self._build(False))
            loss, grad_norm, self.metrics = fn(norm, self.inputs(batches[0]))
            return loss, (grad_norm if self.grad_clip else None)
        fn = self._fns.get("acc") or self._fns.setdefault("acc", self._build(True))
        grads, loss, metrics = None, mx.array(0.0), {}
        for b in batches:
            (l, m), g = fn(norm, self.inputs(b))
            grads = g if grads is None else tree_map(mx.add, grads, g)
            loss = loss + l
            metrics = {k: metrics.get(k, 0.0) + v for k, v in m.items()}
        loss, grads = self.world.sum(loss), self.world.sum_tree(grads)
        self.metrics = {k: self.world.sum(v) / norm for k, v in metrics.items()}
        grad_norm = None
        if self.grad_clip:
            grads, grad_norm = optim.clip_grad_norm(grads, self.grad_clip)
        self.optimizer.update(self.model, grads)
        return loss, grad_norm
