"""The training loop: load, attach adapters, prepare data, train, evaluate, checkpoint.

Everything observable goes out as events (events.py); everything controllable comes in through a
Control (control.py). The loop owns its MLX arrays and runs on whichever thread calls `run()`
(MLX streams are thread-local, so the GUI's QThread calls it there).
"""

from __future__ import annotations

import math
from functools import partial
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from finetune_app.core import adapters, distributed, estimates, run_folder, trackers
from finetune_app.core.config import TrainConfig
from finetune_app.core.data.batching import epoch_batches
from finetune_app.core.training.batch import ShapePlan
from finetune_app.core.vision_cache import run_groups
from finetune_app.core.training.memory import bounded_cache
from finetune_app.core.training import backend  # (#16 cputext) the CPU's step choices
from finetune_app.core.data.tokenize import Encoder, Example
from finetune_app.core.errors import ConfigError, FinetuneError
from finetune_app.core.models import BaseModel, load_base
from finetune_app.core.training import checkpoint as ckpt
from finetune_app.core.training.control import Control
from finetune_app.core.training.data_parallel import DataParallel
from finetune_app.core.training.events import (CheckpointSaved, MetricsLog, Notice, ObjectiveReport, Progress,
                                               SampleItem, SampleReport, StateChanged, ValReport)
from finetune_app.core.families import family_for
from finetune_app.core.training.objectives import objective
from finetune_app.core.training.step import Step
from finetune_app.core.training.optim import make_optimizer
from finetune_app.core.training.peers import PeerLost
from finetune_app.core.training.prepare import Prepared, prepare_examples
from finetune_app.core.training.reread import same_as_planned
from finetune_app.core.training import hooks
from finetune_app.core.training.hooks import Clock
from finetune_app.core.training.loop import builds_ahead, train_loop
from finetune_app.core.training import pairs
from finetune_app.core.training.reference import Reference

CONFIG_FILE = run_folder.CONFIG_FILE
METRICS_FILE = run_folder.METRICS_FILE


@dataclass
class RunResult:
    status: str  # finished / stopped (a failed run raises a FinetuneError)
    step: int
    total_steps: int
    final_loss: float | None
    final_val_loss: float | None
    run_dir: Path
    seconds: float


class Trainer:
    def __init__(self, config: TrainConfig, *, listeners=(), control: Control | None = None,
                 resume: bool = False, base: BaseModel | None = None):
        self.cfg = config
        self.listeners = list(listeners)
        self.control = control or Control()
        self.resume = resume
        self.base = base
        self.run_dir = Path(config.output).expanduser()
        self.world = distributed.world()
        self.state = ckpt.TrainState(seed=config.seed)
        self._epoch_batches: dict[int, list[list[int]]] = {}
        self.reread = None  # (#16 vlmpipe) examples kept without pixels, encoded again ahead (reread.py)
        self._val_cache: list[float] = []
        self._generated: tuple[int, tuple] = (-1, ())  # (step, rows generated at it): see generate_rows
        self._lock: run_folder.RunLock | None = None
        self._created = False  # this run made the folder (removed again when it fails before writing)
        self.restart = False  # a run of ours that stopped before its first checkpoint, trained again
        # the data-parallel hook: watched collectives, last-good fallback, per-host rates (no-ops alone)
        self.dp = DataParallel(self.world, run_dir=self.run_dir, fine_tune_type=config.fine_tune_type,
                               emit=self.emit, save_step=self._save_step)

    # ---- events ------------------------------------------------------------------------------
    def emit(self, event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not kill a run
                import logging

                logging.getLogger(__name__).exception("event listener failed")

    # ---- setup -------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        """Own only what we made: the folder is new, empty or a run of ours, and one process at a
        time trains it (an OS lock held until run() returns or the process dies)."""
        d = self.run_dir
        if not self.world.is_main:  # rank 0 checks and writes the run folder
            return
        if self.resume:
            if not (d / CONFIG_FILE).is_file():
                raise ConfigError(f"'{d}' holds no run to resume (no {CONFIG_FILE}).",
                                  "Pass the run folder of an earlier `finetune-app train`.", file=d)
            self._lock = run_folder.RunLock(d).acquire()
            run_folder.check_resume_changes(TrainConfig.load(d / CONFIG_FILE), self.cfg, folder=d)
            run_folder.check_writable(d)
            return
        if d.is_dir():
            run_folder.check_not_locked(d)  # "in use by pid ..." says more than "already holds a run"
        mode = run_folder.check_new_output(d, data=self.cfg.data)
        run_folder.check_writable(d)
        self._created = mode == "new"
        self._lock = run_folder.RunLock(d).acquire()
        mode = run_folder.check_new_output(d, data=self.cfg.data)  # again, now that no one else can write
        self.restart = mode == "restart"
        try:
            run_folder.start_manifest(d)
            run_folder.record_sources(d, self.cfg)
        except OSError as exc:
            raise run_folder.unwritable(d, exc) from None

    def _release_run_dir(self, failed: bool) -> None:
        if self._lock is None:
            return
        if failed and self._created and not (self.run_dir / CONFIG_FILE).exists():
            try:  # refused before it wrote anything: leave no trace
                run_folder.delete_run_files(self.run_dir)
            except FinetuneError:
                pass
        self._lock.release()
        self._lock = None

    def setup(self) -> Prepared:
        cfg = self.cfg
        cfg.validate()
        trackers.require(cfg.report_to if self.world.is_main else None)  # said before the model loads
        self._check_run_dir()
        self.emit(StateChanged("loading"))
        if self.base is None:  # (#16 startup2) a text model's weights are read while LoRA attaches and rows tokenise
            self.base = load_base(cfg.model, progress=lambda d, t, w: self.emit(Progress(f"downloading {w}", d, t)),
                                  read_later=True)
        try:
            data = self._model_and_data(self.base)
        except BaseException:
            self.base.wait_for_weights()  # a failed read is the first error, as when the weights were read up front
            raise
        self.base.wait_for_weights()
        return self._after_data(data)

    def _model_and_data(self, base: BaseModel) -> Prepared:
        """LoRA attached, the family, objective and encoder made, the rows prepared: nothing here
        evaluates the base weights (load_base(read_later=True) may still be reading them)."""
        cfg = self.cfg
        mx.random.seed(cfg.seed)
        self.adapter_config = adapters.attach(base, cfg)
        self.checkpoint_bytes = ckpt.estimate_checkpoint_bytes(base.model, cfg.fine_tune_type)
        if self.world.is_main:  # refuse to start when the disk cannot hold a checkpoint
            ckpt.check_disk_space(self.run_dir, self.checkpoint_bytes)
        if cfg.grad_checkpoint:
            from finetune_app.core.training.grad_checkpoint import enable

            enable(base.model.layers)
        # The family plans batches: the fast path (cached frozen-tower features, compiled step)
        # where the model and settings allow it, the library's own forward otherwise.
        self.family = family_for(base)
        self.family.start(cfg)
        self.objective = objective(cfg.objective, cfg)
        self.pairs = "pairs" in self.objective.NEEDS  # preference objectives: batches of chosen/rejected pairs
        self.reference = (Reference(base.model, self.family, partial(pairs.plan, self.family))
                          if "reference_logps" in self.objective.NEEDS else None)
        self.rollouts = None  # GRPO: batches of sampled, scored and recorded answers (rollouts.py)
        if cfg.objective == "grpo":
            from finetune_app.core.training.rollouts import Rollouts

            self.rollouts = Rollouts(self)
        self.rollout = self.rollouts.rollout if self.rollouts else None
        self.encoder = Encoder(base, completion_only=cfg.completion_only, image_size=cfg.image_size,
                               image_features=self.family.image_features(),
                               serve_target=cfg.serve_target, pairs=self.pairs)
        if not self.pairs and self.rollouts is None:  # (#16 vlmwarm) pictures read ahead of their first batch, not up front
            self.encoder.sized = self.family.sized_processor(self.encoder.layout)
        self.emit(StateChanged("preparing"))
        data = base.while_reading(partial(  # (#16 textwarm) on a GPU: on a thread while the weights are read
            prepare_examples, cfg, base, self.encoder, progress=lambda phase, d, t: self.emit(Progress(phase, d, t)),
            on_example=self.family.prepare_example))
        if data.skipped:
            self.emit(Notice(f"{data.skip_notice()} Run `finetune-app data check {cfg.data}` to see them all."))
        return data

    def _after_data(self, data: Prepared) -> Prepared:
        cfg, base = self.cfg, self.base
        self.data = data
        self.train_lengths = [e.model_length for e in data.train]
        first = epoch_batches(self.train_lengths, cfg.batch_size, seed=cfg.seed, epoch=0)
        n_batches = len(first)
        if self.family.fast:  # (#16 vlmtower) the frozen tower runs on each epoch-0 batch's pictures in one call
            self.family.group_images(run_groups(first, data.train, data.valid, cfg.batch_size, self.world),
                                     reread=self._materialise)
        if backend.plan_shapes(self.family) and first:  # (#16) a few compiled shapes, chosen from the run's own batches
            self.family.buckets = ShapePlan([(len(b), max(self.train_lengths[i] for i in b),
                                              sum(data.train[i].n_targets for i in b)) for b in first])
        self.steps_per_epoch = max(1, math.ceil(n_batches / cfg.grad_accumulation))
        self.total_steps = estimates.total_steps(cfg, n_batches)
        self.optimizer = make_optimizer(cfg.optimizer, cfg.learning_rate, cfg.weight_decay)
        self.step = Step(base.model, self.optimizer, self.family, self.objective, grad_clip=cfg.grad_clip,
                         world=self.world)
        self.state = ckpt.TrainState(seed=cfg.seed, total_steps=self.total_steps)
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE)
        if self.resume:
            for what in run_folder.changed_sources(self.run_dir, cfg) if self.world.is_main else ():
                self.emit(Notice(f"{what[0].upper() + what[1:]} changed on disk since this run started; "
                                 "the run continues with it as it is now."))
            self._restore()
            if self.world.is_main:  # an extension (more steps or epochs) is remembered
                run_folder.start_manifest(self.run_dir)  # runs made before manifests get one
                cfg.save(self.run_dir / CONFIG_FILE)
        elif self.world.is_main:
            if self.restart:
                self.emit(Notice(f"'{self.run_dir}' holds a run of ours that stopped before its first checkpoint: "
                                 "training it again from step 0."))
                self.metrics.truncate_after(0)
                run_folder.truncate_rewards(self.run_dir, 0)
            cfg.save(self.run_dir / CONFIG_FILE)
        if self.world.is_main:
            self.listeners.insert(0, self.metrics)
            self.listeners += trackers.listeners_for(cfg, self.run_dir)  # report_to: TensorBoard, W&B, MLflow
        return data

    def units(self, example: Example) -> int:
        """What one example counts for in the step's loss normaliser: its supervised tokens, or
        (GRPO) its G sampled answers."""
        return self.rollouts.units(example) if self.rollouts is not None else example.units

    def _restore(self) -> None:
        if self.world.is_main:
            ckpt.remove_stale_staging(self.run_dir)
        found, reasons = None, []
        for candidate in reversed(ckpt.list_checkpoints(self.run_dir)):
            try:
                ckpt.check_complete(candidate)
                self.state = ckpt.restore(candidate, self.base.model, self.optimizer, self.cfg.fine_tune_type)
            except ckpt.DamagedCheckpoint as bad:
                reasons.append(f"{candidate.name}: {bad}")
                self.emit(Notice(f"Checkpoint {candidate.name} is damaged ({bad}); falling back to an earlier one."))
                continue
            found = candidate
            break
        if (found is None and not reasons and not (self.run_dir / adapters.ADAPTER_FILE).exists()
                and (self.run_dir / CONFIG_FILE).is_file()):  # (a rank that cannot see the run folder fails)
            # killed before its first checkpoint: nothing to lose, start again with its own settings
            self.emit(Notice(f"The run in '{self.run_dir}' stopped before its first checkpoint: "
                             "starting again from step 0 with its saved settings."))
            self.state.total_steps = self.total_steps
            if self.world.is_main:
                self.metrics.truncate_after(0)
                run_folder.truncate_rewards(self.run_dir, 0)
            return
        if found is None:
            raise ConfigError(f"No usable checkpoint in '{self.run_dir}'" + (f" ({'; '.join(reasons)})." if reasons else "."),
                              "Start a new run in a fresh folder (the run folder's adapter, if any, is kept).",
                              file=self.run_dir / ckpt.CHECKPOINTS)
        self.state.total_steps = self.total_steps
        if self.world.is_main:
            self.metrics.truncate_after(self.state.step)
            run_folder.truncate_rewards(self.run_dir, self.state.step)
        self.emit(Notice(f"Resuming from {found.name} (step {self.state.step} of {self.total_steps})."))

    # ---- data --------------------------------------------------------------------------------
    def batches_of_epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epoch_batches:  # (#16 loopipe) kept with its neighbour: the loop looks a step ahead
            self._epoch_batches = {k: v for k, v in self._epoch_batches.items() if abs(k - epoch) == 1}
            self._epoch_batches[epoch] = epoch_batches(self.train_lengths, self.cfg.batch_size,
                                                       seed=self.cfg.seed, epoch=epoch)
        return self._epoch_batches[epoch]

    def next_micro_batch(self) -> list[int]:
        s = self.state
        batches = self.batches_of_epoch(s.epoch)
        if s.batch_in_epoch >= len(batches):
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            batches = self.batches_of_epoch(s.epoch)
        positions = batches[s.batch_in_epoch]
        s.batch_in_epoch += 1
        return positions

    def _materialise(self, ex: Example) -> Example:
        """An example whose images were dropped for memory, read again (unless its cached tower
        features stand in for them); the family names the fresh one's images again."""
        if not self._unread(ex):
            return ex
        fresh = self.reread.take(ex.index) if self.reread is not None else None  # (#16 vlmpipe) encoded ahead
        if fresh is None:
            fresh = self.encoder.encode(self.data.dataset.sample(ex.index), index=ex.index)
        same_as_planned(ex, fresh)  # (#16 vlmwarm: counted from its header, planned before it was read)
        if not any(p.target_mask.any() for p in ex.parts):  # a rank's empty stand-in (`shard`) stays empty
            fresh = fresh.without_targets()
        for part in fresh.parts:
            self.family.prepare_example(part)
        return fresh

    def _unread(self, ex: Example) -> bool:
        """Kept without its pictures (prepare's memory budget), and its tower features not all cached."""
        return ex.lazy_images and not all(self.family.ready(p) for p in ex.parts)

    def _plan_reread(self):
        """(#16 vlmpipe) The examples this rank will read again, in the order the rest of epoch 0
        and the validation meet them (its pictures at the first evaluation), encoded a few batches
        ahead on threads (reread.py)."""
        from finetune_app.core.training.reread import Reread

        s, data = self.state, self.data
        if not self.family.fast or s.epoch > 0 or not any(e.lazy_images for e in data.train + data.valid):
            return None
        rank, size, bs = self.world.rank, self.world.size, self.cfg.batch_size
        ga, every = self.cfg.grad_accumulation, max(1, self.cfg.steps_per_eval or self.total_steps)
        batches = self.batches_of_epoch(0)[s.batch_in_epoch:self.total_steps * ga]
        # the first evaluation: after its step, and after the next step's batches (built during it: loop.py)
        ahead = 1 if builds_ahead(self) else 0
        cut = min((s.step // every + 1) * every + ahead, self.total_steps) * ga - s.batch_in_epoch
        valid = [data.valid[k:k + bs] for k in range(0, len(data.valid), bs)][:self.cfg.val_batches or None]
        valid = [e for i, b in enumerate(valid) if i % size == rank for e in b]
        planned = [data.train[i] for b in batches[:cut] for i in self.world.shard(b)] + valid + \
            [data.train[i] for b in batches[cut:] for i in self.world.shard(b)]
        rows = [e.index for e in planned if self._unread(e)]
        return Reread(data.dataset, self.encoder, list(dict.fromkeys(rows))) if rows else None

    # ---- (#18) a row whose lazily read image became unreadable mid-run is skipped, not fatal ----
    def _readable(self, examples: list[Example]) -> list[Example]:
        """The examples with their images read again; a row that can no longer be read is left out
        (for the rest of the run) with a located notice, as the validation's skipped rows are."""
        from finetune_app.core.errors import DataError
        from finetune_app.core.training.prepare import _row_problem, where

        unreadable = self.__dict__.setdefault("_unreadable_rows", set())
        kept = []
        for ex in examples:
            if ex.index in unreadable:
                continue
            try:
                kept.append(self._materialise(ex))
            except (FinetuneError, OSError, ValueError) as exc:
                unreadable.add(ex.index)
                p = _row_problem(None, ex.index, self.data.dataset, exc)
                self.emit(Notice(f"Skipped a row that can no longer be read: {where(p)}: {p.message.rstrip('.')}. "
                                 "The run goes on without it; fix the file to train on it again."))
        if not kept:
            raise DataError("Every row of this batch can no longer be read (see the notices above).",
                            "Check that the dataset's images are still there, then resume the run.")
        return kept
    # ---- end (#18) ----

    def make_batch(self, examples: list[Example], split: str = "train"):
        """The family's Batch for these examples (fast path or library path); GRPO's sampled
        and scored answers to them."""
        examples = self._readable(examples)
        if self.rollouts is not None:
            return self.rollouts.batch(examples, split)
        if self.pairs:  # preference pairs: chosen then rejected rows, with what the objective needs (pairs.py)
            return pairs.plan(self.family, examples, self.reference)
        return self.family.plan(examples)

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self) -> tuple[float, int]:
        model = self.base.model
        model.eval()
        bs = self.cfg.batch_size
        total, count = mx.array(0.0), mx.array(0)
        held_out = pairs.HeldOut(self.objective.METRICS) if self.pairs else None  # preference metrics, held out
        examples = self.data.valid
        for i, start in enumerate(range(0, len(examples), bs)):
            if self.cfg.val_batches and i >= self.cfg.val_batches:
                break
            if i % self.world.size != self.world.rank:  # data parallel: batches round robin
                continue
            batch = self.make_batch(examples[start:start + bs], split="valid")
            s, n = self.step.loss_sum(batch)
            total, count = total + s, count + n.astype(mx.int32)  # counted exactly
            mx.eval(total, count, *(held_out.add(self.step.eval_metrics) if held_out else ()))
        with self.dp.collective("summing the validation loss"):
            total, count = self.world.sum(total), self.world.sum(count)
            mx.eval(total, count, *(held_out.summed(self.world).values() if held_out else ()))
        adapters.set_train_modes(model, self.cfg.fine_tune_type)
        if self.rollouts is not None:  # GRPO: the held-out reward (this rank's share)
            self.rollouts.report_held_out()
        n = int(count.item())
        if held_out is not None and n and self.world.is_main:
            self.emit(ObjectiveReport(step=self.state.step, split="valid",
                                      metrics={k: float(v.item()) / n for k, v in held_out.sums.items()}))
        return (float(total.item()) / n if n else float("nan")), n

    def sample_generations(self) -> tuple[SampleItem, ...]:
        return self.generate_rows(self.cfg.sample_count)

    def generate_rows(self, n: int) -> tuple[SampleItem, ...]:
        """Greedy generations for the first `n` validation rows, in the run's prompt layout (rows
        already generated at this step, for the samples or the scores, are reused: same weights)."""
        from finetune_app.core.generate import GenerationSettings, generate_for_sample

        step, done = self._generated
        items = list(done[:n]) if step == self.state.step else []
        settings = GenerationSettings(max_tokens=self.cfg.sample_max_tokens)
        for k, sample in enumerate(self.data.samples[len(items):n], start=len(items)):
            images = self.encoder.load_images(sample) if sample.images else []
            text = generate_for_sample(self.base, sample, images, settings=settings, encoder=self.encoder)
            ref = sample.images[0] if sample.images else None
            first = (str(ref.path) if ref.path else ref.describe()) if ref else ""
            items.append(SampleItem(index=self.data.valid[k].index, prompt=sample.prompt, reference=sample.answer,
                                    output=text, image=first))
        adapters.set_train_modes(self.base.model, self.cfg.fine_tune_type)
        if step != self.state.step or len(items) > len(done):
            self._generated = (self.state.step, tuple(items))
        return tuple(items)

    def shard(self, positions: list[int]) -> list[Example]:
        """This rank's examples of a global micro-batch. A rank left without any gets a copy of
        one with nothing supervised, so it still joins the gradient sum with zeros."""
        mine = [self.data.train[i] for i in self.world.shard(positions)]
        if mine:
            return mine

        return [self.data.train[positions[0]].without_targets()]  # (keeps what a family attached, e.g. mRoPE ids)

    def evaluate_and_sample(self, step: int) -> float | None:
        if not self.data.valid:
            return None
        t0 = time.perf_counter()
        val_loss, n = self.evaluate()
        unit = "pairs" if self.pairs else "answers" if self.rollouts is not None else "tokens"
        self.emit(ValReport(step=step, val_loss=val_loss, val_tokens=n, seconds=time.perf_counter() - t0, unit=unit))
        self.state.val_loss, self.state.val_step = val_loss, step
        if self.state.best_val_loss is None or val_loss < self.state.best_val_loss:
            self.state.best_val_loss = val_loss
        if self.cfg.sample_count and self.world.is_main:
            self.emit(SampleReport(step=step, items=self.sample_generations()))
        return val_loss

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, *, direct: bool = False) -> Path | None:
        if not self.world.is_main:
            return None
        bad = ckpt.non_finite_weights(self.base.model, self.cfg.fine_tune_type, direct=direct)
        if bad:  # never write a checkpoint of NaN weights over good ones
            self.diverged(self.state.step, f"weights hold NaN or infinite values ({', '.join(bad[:3])})")
        ckpt.check_disk_space(self.run_dir, self.checkpoint_bytes, when="checkpoint")
        try:
            path = ckpt.save(self.run_dir, self.base.model, self.adapter_config, self.optimizer, self.state,
                             keep=self.cfg.keep_checkpoints, train_config=self.cfg, direct=direct,
                             best_by=self.cfg.best_by)
            ckpt.mark_best(self.run_dir, self.cfg.best_by)
            adapters.save(self.base.model, self.adapter_config, self.run_dir, direct=direct, same_as=path)
            on_disk = {run_folder.checkpoint_entry(int(ckpt.STEP_DIR.match(p.name).group(1)))
                       for p in ckpt.list_checkpoints(self.run_dir)}
            listed = (run_folder.read_manifest(self.run_dir) or {}).get("files", [])
            run_folder.record_files(self.run_dir, *sorted(on_disk), forget=tuple(
                f for f in listed if f.startswith(ckpt.CHECKPOINTS + "/") and f not in on_disk))
        except OSError as exc:
            raise run_folder.unwritable(self.run_dir, exc) from None
        self.emit(CheckpointSaved(step=self.state.step, path=str(path)))
        return path

    def _save_step(self, params, optimizer_state, state) -> Path | None:
        """A checkpoint of given values (the data-parallel fallback: the last finished step)."""
        self.base.model.update(params)
        self.optimizer.state = optimizer_state
        self.state = state
        return self.save_checkpoint(direct=True)  # MLX's stream may be stuck in the dead collective

    def diverged(self, step: int, what: str) -> None:
        """Stop as failed: the last good checkpoint stays (nothing is written from these weights)."""
        last = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last good checkpoint ({last[-1].name}) is kept" if last else "no checkpoint was written yet"
        raise FinetuneError(
            f"Training diverged at step {step}: {what}. The run stopped as failed; {kept} and nothing was "
            "saved from the diverged weights.",
            f"Lower the learning rate (it was {self.cfg.learning_rate:g}) and continue with "
            f"`finetune-app train --resume {self.run_dir} --learning-rate LR`, or start a new run.",
            file=self.run_dir)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        t_start = self.t_start = time.perf_counter()
        failed = True
        try:
            with bounded_cache():  # (#16) held memory: MLX's buffer cache bounded for the run
                self.setup()
                result = self._loop(t_start)
            failed = False
            return result
        except FinetuneError as err:
            if isinstance(err, PeerLost):  # DataParallel.on_peer_lost reported it
                raise
            self.emit(StateChanged("failed", err.message, step=self.state.step))
            raise
        except Exception as exc:
            self.emit(StateChanged("failed", f"Unexpected error: {type(exc).__name__}: {exc}", step=self.state.step))
            raise
        finally:
            if self.reread is not None:
                self.reread.close()
            self.dp.close()
            self._release_run_dir(failed)

    def _loop(self, t_start: float) -> RunResult:
        cfg = self.cfg
        self.emit(StateChanged("started", step=self.state.step))
        clock = Clock()
        self.reread = self._plan_reread()
        report = hooks.Report(clock, cfg.steps_per_report, host_rates=self.dp.host_rates)
        evaluate = hooks.Evaluate(cfg.steps_per_eval)
        scores = [hooks.ScoreGenerations(cfg.steps_per_eval, cfg.eval_metrics, cfg.eval_samples)] if cfg.eval_metrics else []
        status = train_loop(self, [self.dp, hooks.Agreement(self.dp, self.control, clock), report, evaluate, *scores,
                                   hooks.Checkpoints(cfg.save_every)], clock)
        if status == "stopped":
            self.emit(StateChanged("stopping", step=self.state.step))
            if self.control.save_on_stop and self.state.step > 0:
                self.save_checkpoint()
            self.emit(StateChanged("stopped", "stopped by the user", step=self.state.step))
        else:
            self.emit(StateChanged("finished", step=self.state.step))
        return RunResult(status, self.state.step, self.total_steps, report.last_loss, evaluate.last_val,
                         self.run_dir, time.perf_counter() - t_start)


def train(config: TrainConfig, **kwargs) -> RunResult:
    return Trainer(config, **kwargs).run()
