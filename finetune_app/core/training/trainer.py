"""The training loop: load, attach adapters, prepare data, train, evaluate, checkpoint.

Everything observable goes out as events (events.py); everything controllable comes in through a
Control (control.py). The loop owns its MLX arrays and runs on whichever thread calls `run()`
(MLX streams are thread-local, so the GUI's QThread calls it there).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from finetune_app.core import adapters, distributed, run_folder, trackers
from finetune_app.core.config import TrainConfig
from finetune_app.core.data.batching import Batch, collate, epoch_batches
from finetune_app.core.data.tokenize import Encoder, Example
from finetune_app.core.errors import ConfigError, FinetuneError
from finetune_app.core.models import BaseModel, load_base
from finetune_app.core.training import checkpoint as ckpt
from finetune_app.core.training import fastpath
from finetune_app.core.training.control import Control
from finetune_app.core.training.data_parallel import DataParallel
from finetune_app.core.training.events import (CheckpointSaved, MetricsLog, Notice, Progress,
                                               SampleItem, SampleReport, StateChanged, TrainReport, ValReport)
from finetune_app.core.training.forward import Forward
from finetune_app.core.training.optim import make_optimizer
from finetune_app.core.training.peers import PeerLost
from finetune_app.core.training.prepare import Prepared, prepare_examples
from finetune_app.core.training.schedule import learning_rate_at

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


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one optimizer step: randomness is a function of (seed, step)."""
    return (seed * 1_000_003 + step) % (2**63)


def fastvlm_feature_count(base: BaseModel) -> int:
    """Feature positions one FastVLM image expands into: (image side / 64)², 256 at 1024 px."""
    ip = getattr(base.processor, "image_processor", None)
    size = getattr(ip, "crop_size", None) or getattr(ip, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    side = int(side or base.config.get("vision_config", {}).get("image_size", 1024))
    return (side // 64) ** 2


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
        self._val_cache: list[float] = []
        self._lock: run_folder.RunLock | None = None
        self._created = False  # this run made the folder (removed again when it fails before writing)
        self.restart = False  # a run of ours that stopped before its first checkpoint, trained again
        self.dp = DataParallel(self)  # agreement, watched collectives, per-host rates (no-ops alone)

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
        if self.base is None:
            self.base = load_base(cfg.model, progress=lambda d, t, w: self.emit(Progress(f"downloading {w}", d, t)))
        base = self.base
        mx.random.seed(cfg.seed)
        self.adapter_config = adapters.attach(base, cfg)
        self.checkpoint_bytes = ckpt.estimate_checkpoint_bytes(base.model, cfg.fine_tune_type)
        if self.world.is_main:  # refuse to start when the disk cannot hold a checkpoint
            ckpt.check_disk_space(self.run_dir, self.checkpoint_bytes)
        if cfg.grad_checkpoint:
            from finetune_app.core.training.grad_checkpoint import enable

            enable(base.model.layers)
        self.forward = Forward(base)
        self.encoder = Encoder(base, completion_only=cfg.completion_only, image_size=cfg.image_size,
                               image_features=fastvlm_feature_count(base) if base.is_fastvlm else None,
                               serve_target=cfg.serve_target)
        self.emit(StateChanged("preparing"))
        # The fast path (cached frozen-tower features, compiled step) where the model allows it;
        # the reference path (the library's own forward, uncompiled) otherwise.
        self.fast = None
        kind = fastpath.supported(base, cfg)
        if kind and (cfg.compile or kind != "text"):
            self.fast = fastpath.FastPath(base, cfg, kind, compile=cfg.compile)
        data = prepare_examples(cfg, base, self.encoder,
                                progress=lambda phase, d, t: self.emit(Progress(phase, d, t)),
                                on_example=self.fast.prepare_example if self.fast else None)
        if data.skipped:
            self.emit(Notice(f"{data.skip_notice()} Run `finetune-app data check {cfg.data}` to see them all."))
        self.data = data
        self.train_lengths = [e.model_length for e in data.train]
        n_batches = len(epoch_batches(self.train_lengths, cfg.batch_size, seed=cfg.seed, epoch=0))
        self.steps_per_epoch = max(1, math.ceil(n_batches / cfg.grad_accumulation))
        self.total_steps = cfg.iters or max(1, math.ceil((cfg.epochs or 1.0) * self.steps_per_epoch))
        self.optimizer = make_optimizer(cfg.optimizer, cfg.learning_rate, cfg.weight_decay)
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
            cfg.save(self.run_dir / CONFIG_FILE)
        if self.world.is_main:
            self.listeners.insert(0, self.metrics)
            self.listeners += trackers.listeners_for(cfg, self.run_dir)  # report_to: TensorBoard, W&B, MLflow
        return data

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
            return
        if found is None:
            raise ConfigError(f"No usable checkpoint in '{self.run_dir}'" + (f" ({'; '.join(reasons)})." if reasons else "."),
                              "Start a new run in a fresh folder (the run folder's adapter, if any, is kept).",
                              file=self.run_dir / ckpt.CHECKPOINTS)
        self.state.total_steps = self.total_steps
        if self.world.is_main:
            self.metrics.truncate_after(self.state.step)
        self.emit(Notice(f"Resuming from {found.name} (step {self.state.step} of {self.total_steps})."))

    # ---- data --------------------------------------------------------------------------------
    def _batches_of_epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epoch_batches:
            self._epoch_batches = {epoch: epoch_batches(self.train_lengths, self.cfg.batch_size,
                                                        seed=self.cfg.seed, epoch=epoch)}
        return self._epoch_batches[epoch]

    def _next_micro_batch(self) -> list[int]:
        s = self.state
        batches = self._batches_of_epoch(s.epoch)
        if s.batch_in_epoch >= len(batches):
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            batches = self._batches_of_epoch(s.epoch)
        positions = batches[s.batch_in_epoch]
        s.batch_in_epoch += 1
        return positions

    def _materialise(self, ex: Example) -> Example:
        if not ex.lazy_images:
            return ex
        sample = self.data.dataset.sample(ex.index)
        return self.encoder.encode(sample, index=ex.index)

    def make_batch(self, examples: list[Example]):
        """A fast-path Plan or a reference-path Batch (both know their n_targets)."""
        if self.fast is not None:
            return self.fast.plan(examples)
        tok = self.base.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        return collate([self._materialise(e) for e in examples], pad, self.forward.image_token_index)

    # ---- the step ----------------------------------------------------------------------------
    def _loss(self, model, batch: Batch, norm: float):
        total, _ = self.forward.loss_sum(model, batch)
        return total / norm

    def train_step(self, batches: list, norm: float | None = None):
        """One optimizer step over the micro-batches (gradient accumulation): mean token loss.

        `norm` is the supervised-token count of the whole step (all ranks when data-parallel)."""
        if self.fast is not None:
            return self.fast.train_step(batches, self.optimizer, self.cfg.grad_clip, norm)
        model = self.base.model
        norm = float(norm if norm is not None else sum(b.n_targets for b in batches)) or 1.0
        loss_and_grad = nn.value_and_grad(model, lambda b: self._loss(model, b, norm))
        grads, loss = None, mx.array(0.0)
        for b in batches:
            l, g = loss_and_grad(b)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            loss = loss + l
        loss, grads = self.world.sum(loss), self.world.sum_tree(grads)
        grad_norm = None
        if self.cfg.grad_clip:
            grads, grad_norm = optim.clip_grad_norm(grads, self.cfg.grad_clip)
        self.optimizer.update(model, grads)
        return loss, grad_norm

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self) -> tuple[float, int]:
        model = self.base.model
        model.eval()
        bs = self.cfg.batch_size
        total, count = mx.array(0.0), mx.array(0)
        examples = self.data.valid
        for i, start in enumerate(range(0, len(examples), bs)):
            if self.cfg.val_batches and i >= self.cfg.val_batches:
                break
            if i % self.world.size != self.world.rank:  # data parallel: batches round robin
                continue
            batch = self.make_batch(examples[start:start + bs])
            s, n = self.fast.loss_of(batch) if self.fast is not None else self.forward.loss_sum(model, batch)
            total, count = total + s, count + n
            mx.eval(total, count)
        with self.dp.collective("summing the validation loss"):
            total, count = self.world.sum(total), self.world.sum(count)
            mx.eval(total, count)
        adapters.set_train_modes(model, self.cfg.fine_tune_type)
        n = int(count.item())
        return (float(total.item()) / n if n else float("nan")), n

    def sample_generations(self) -> tuple[SampleItem, ...]:
        from finetune_app.core.generate import GenerationSettings, generate_for_sample

        items = []
        settings = GenerationSettings(max_tokens=self.cfg.sample_max_tokens)
        for k, sample in enumerate(self.data.samples[: self.cfg.sample_count]):
            images = self.encoder.load_images(sample) if sample.images else []
            text = generate_for_sample(self.base, sample, images, settings=settings, encoder=self.encoder)
            ref = sample.images[0] if sample.images else None
            first = (str(ref.path) if ref.path else ref.describe()) if ref else ""
            items.append(SampleItem(index=self.data.valid[k].index, prompt=sample.prompt, reference=sample.answer,
                                    output=text, image=first))
        adapters.set_train_modes(self.base.model, self.cfg.fine_tune_type)
        return tuple(items)

    def _shard(self, positions: list[int]) -> list[Example]:
        """This rank's examples of a global micro-batch. A rank left without any gets a copy of
        one with nothing supervised, so it still joins the gradient sum with zeros."""
        mine = [self.data.train[i] for i in self.world.shard(positions)]
        if mine:
            return mine

        ex = self.data.train[positions[0]]
        return [dataclasses.replace(ex, target_mask=ex.target_mask & False)]

    def _evaluate_and_sample(self, step: int) -> float | None:
        if not self.data.valid:
            return None
        t0 = time.perf_counter()
        val_loss, n = self.evaluate()
        self.emit(ValReport(step=step, val_loss=val_loss, val_tokens=n, seconds=time.perf_counter() - t0))
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
            self._diverged(self.state.step, f"weights hold NaN or infinite values ({', '.join(bad[:3])})")
        ckpt.check_disk_space(self.run_dir, self.checkpoint_bytes, when="checkpoint")
        try:
            path = ckpt.save(self.run_dir, self.base.model, self.adapter_config, self.optimizer, self.state,
                             keep=self.cfg.keep_checkpoints, train_config=self.cfg, direct=direct)
            adapters.save(self.base.model, self.adapter_config, self.run_dir, direct=direct)
            on_disk = {run_folder.checkpoint_entry(int(ckpt.STEP_DIR.match(p.name).group(1)))
                       for p in ckpt.list_checkpoints(self.run_dir)}
            listed = (run_folder.read_manifest(self.run_dir) or {}).get("files", [])
            run_folder.record_files(self.run_dir, *sorted(on_disk), forget=tuple(
                f for f in listed if f.startswith(ckpt.CHECKPOINTS + "/") and f not in on_disk))
        except OSError as exc:
            raise run_folder.unwritable(self.run_dir, exc) from None
        self.emit(CheckpointSaved(step=self.state.step, path=str(path)))
        return path

    def _diverged(self, step: int, what: str) -> None:
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
        t_start = time.perf_counter()
        failed = True
        try:
            self.setup()
            self.dp.start()
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
            self.dp.close()
            self._release_run_dir(failed)

    def _loop(self, t_start: float) -> RunResult:
        cfg, s, model = self.cfg, self.state, self.base.model
        self.emit(StateChanged("started", step=s.step))
        window = self._new_window()
        step_times: list[float] = []
        last_loss = last_val = None
        mx.reset_peak_memory()
        self.dp.meet()
        agreed = None  # data parallel: the requests summed during the previous step
        while s.step < self.total_steps:
            stop, _, pause = self.dp.read(agreed, self.control) if agreed is not None else self.dp.agree(self.control)
            if pause:
                self.emit(StateChanged("paused", step=s.step))
                t_pause = time.perf_counter()
                while pause and not stop:  # the paused process(es) wait here, the others in agree()
                    self.control.wait_while_paused()
                    stop, _, pause = self.dp.agree(self.control, watched=False)
                window["t"] += time.perf_counter() - t_pause
                if not stop:
                    self.emit(StateChanged("resumed", step=s.step))
            if stop:
                return self._stop(t_start, last_loss, last_val)
            t0 = time.perf_counter()
            mx.random.seed(step_seed(cfg.seed, s.step))
            self.optimizer.learning_rate = learning_rate_at(
                s.step, peak=cfg.learning_rate, total_steps=self.total_steps, schedule=cfg.lr_schedule,
                warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
            lr = self.optimizer.learning_rate.item()
            micro = [self._next_micro_batch() for _ in range(cfg.grad_accumulation)]
            n_tok = sum(self.data.train[i].n_targets for pos in micro for i in pos)  # global
            mine = [self.world.shard(pos) for pos in micro]
            batches = [self.make_batch(self._shard(pos)) for pos in micro]
            loss, grad_norm = self.train_step(batches, n_tok)
            agreed = self.dp.flag_sum(self.control)
            with self.dp.collective(f"summing the gradients of step {s.step + 1}"):
                params = model.trainable_parameters()
                mx.eval(params, self.optimizer.state, loss, *([agreed] if agreed is not None else []))
            step_loss = float(loss.item())  # the same on every rank (summed): all stop together
            if not math.isfinite(step_loss):
                self._diverged(s.step + 1, f"the training loss is {step_loss}")
            s.step += 1
            s.trained_tokens += n_tok
            self.dp.keep_last_good(params)
            window["loss"] = window["loss"] + loss
            window["steps"] += 1
            window["tokens"] += n_tok
            window["examples"] += sum(len(pos) for pos in micro)
            window["my_examples"] += sum(len(m) for m in mine)
            window["my_tokens"] += sum(self.data.train[i].n_targets for m in mine for i in m)
            step_times.append(time.perf_counter() - t0)
            if s.step % cfg.steps_per_report == 0 or s.step == self.total_steps:
                elapsed = max(time.perf_counter() - window["t"], 1e-9)
                last_loss = window["loss"].item() / window["steps"]
                recent = step_times[-20:]
                eta = (self.total_steps - s.step) * (sum(recent) / len(recent))
                self.emit(TrainReport(
                    step=s.step, total_steps=self.total_steps,
                    epoch=s.epoch + s.batch_in_epoch / max(1, len(self._batches_of_epoch(s.epoch))),
                    loss=last_loss, learning_rate=lr, tokens_per_second=window["tokens"] / elapsed,
                    examples_per_second=window["examples"] / elapsed,
                    peak_memory_gb=mx.get_peak_memory() / 1e9, active_memory_gb=mx.get_active_memory() / 1e9,
                    step_time=elapsed / window["steps"], eta_seconds=eta, trained_tokens=s.trained_tokens,
                    grad_norm=float(grad_norm.item()) if grad_norm is not None else None,
                    hosts=self.dp.host_rates(window["my_examples"], window["my_tokens"], elapsed)))
                window = self._new_window()
            if s.step % cfg.steps_per_eval == 0 or s.step == self.total_steps:
                t_eval = time.perf_counter()
                last_val = self._evaluate_and_sample(s.step) if self.data.valid else last_val
                window["t"] += time.perf_counter() - t_eval
            if s.step % cfg.save_every == 0 and s.step < self.total_steps:
                t_save = time.perf_counter()
                self.save_checkpoint()
                window["t"] += time.perf_counter() - t_save
        self.save_checkpoint()
        self.emit(StateChanged("finished", step=s.step))
        return RunResult("finished", s.step, self.total_steps, last_loss, last_val, self.run_dir,
                         time.perf_counter() - t_start)

    @staticmethod
    def _new_window() -> dict:
        return dict(loss=mx.array(0.0), steps=0, tokens=0, examples=0, my_examples=0, my_tokens=0,
                    t=time.perf_counter())

    def _stop(self, t_start, last_loss, last_val) -> RunResult:
        self.emit(StateChanged("stopping", step=self.state.step))
        if self.control.save_on_stop and self.state.step > 0:
            self.save_checkpoint()
        self.emit(StateChanged("stopped", "stopped by the user", step=self.state.step))
        return RunResult("stopped", self.state.step, self.total_steps, last_loss, last_val, self.run_dir,
                         time.perf_counter() - t_start)


def train(config: TrainConfig, **kwargs) -> RunResult:
    return Trainer(config, **kwargs).run()
