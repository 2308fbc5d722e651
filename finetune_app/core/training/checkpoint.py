"""Resumable checkpoints: adapter, optimizer state, step and data position, written atomically.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` built under a temporary name and renamed
into place, so a kill leaves either the whole checkpoint or none. The RNG needs no saved state:
the trainer reseeds from (seed, step) at every step, so randomness is a function of the step.
The learning rate is a function of the step too (schedule.py); the data order of (seed, epoch).
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from finetune_app.core import adapters, atomic
from finetune_app.core.run_folder import CHECKPOINTS, OPTIMIZER_FILE, STATE_FILE, STEP_DIR, checkpoint_name  # noqa: F401


class DamagedCheckpoint(Exception):
    """A checkpoint that must not be resumed from (unreadable, misfitting or non-finite); says why."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next micro-batch
    batch_in_epoch: int = 0  # next micro-batch within that epoch
    trained_tokens: int = 0
    best_val_loss: float | None = None
    val_loss: float | None = None  # the latest validation loss ...
    val_step: int | None = None  # ... and the step it was measured at (== step: this checkpoint's own)
    val_metrics: dict | None = None  # the latest scores of generations (eval_metrics) ...
    metrics_step: int | None = None  # ... and their step
    total_steps: int = 0
    seed: int = 0
    rng: str = "reseeded per step from (seed, step)"


def save(run_dir: Path, model, adapter_config: dict, optimizer, state: TrainState, *, keep: int, train_config=None,
         direct: bool = False, best_by: str = "val_loss") -> Path:
    """`direct`: everything is evaluated already; write without MLX's scheduler (tensor_files)."""
    from finetune_app.core import tensor_files

    root = Path(run_dir) / CHECKPOINTS
    dest = root / checkpoint_name(state.step)
    with atomic.staged_dir(dest, overwrite=True) as stage:
        adapters.save(model, adapter_config, stage, train_config=train_config, direct=direct)
        tensor_files.save(stage / OPTIMIZER_FILE, dict(tree_flatten(optimizer.state)), direct=direct)
        (stage / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    rotate(root, keep, best_by)
    return dest


def rotate(root: Path, keep: int, best_by: str = "val_loss") -> None:
    """Keep the newest `keep` checkpoints and the best one (by `best_by`)."""
    steps = list_checkpoints(root.parent)
    if keep <= 0 or len(steps) <= keep:
        return
    kept = set(steps[-keep:])
    best = best_checkpoint(root.parent, best_by)
    if best is not None:
        kept.add(best)
    for old in steps:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_val_loss(ckpt: Path) -> float | None:
    """The validation loss measured at this checkpoint's own step (None: not evaluated there)."""
    try:
        data = json.loads((Path(ckpt) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if data.get("val_loss") is None or data.get("val_step") != data.get("step"):
        return None
    return float(data["val_loss"])


def checkpoint_score(ckpt: Path, by: str = "val_loss") -> float | None:
    """`by` at this checkpoint's own step: its validation loss, or a score of eval_metrics (None:
    not measured there)."""
    if by == "val_loss":
        return checkpoint_val_loss(ckpt)
    try:
        data = json.loads((Path(ckpt) / STATE_FILE).read_text())
        value = data["val_metrics"][by] if data.get("metrics_step") == data.get("step") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def best_checkpoint(run_dir: Path, by: str = "val_loss") -> Path | None:
    """The checkpoint with the lowest validation loss, or the highest score `by`, measured at its
    step (earliest on ties)."""
    sign = 1.0 if by == "val_loss" else -1.0
    scored = [(sign * v, i, c) for i, c in enumerate(list_checkpoints(run_dir))
              if (v := checkpoint_score(c, by)) is not None and v == v]
    return min(scored)[2] if scored else None


def mark_best(run_dir: Path, best_by: str = "val_loss") -> None:
    """best_checkpoint.json names the best checkpoint by `best_by` (kept through rotation); none
    measured (yet) by it: no mark, not a stale one of another setting."""
    from finetune_app.core import run_folder

    best = best_checkpoint(run_dir, best_by)
    if best is None:
        run_folder.best_path(run_dir).unlink(missing_ok=True)
        return
    step = run_folder.checkpoint_step(best)
    run_folder.write_best(run_dir, step, best_by, checkpoint_score(best, best_by))
    run_folder.record_files(run_dir, run_folder.BEST_FILE)


# ---- disk space -----------------------------------------------------------------------------------
DISK_MARGIN = 16 * 2**20  # bytes kept free beyond the estimate (metrics, config, file system slack)


def estimate_checkpoint_bytes(model, fine_tune_type: str = "lora") -> int:
    """One checkpoint: the adapter (trainable weights) plus the optimizer state (up to two
    moments of the same size, Adam-style): 3x the trainable-parameter bytes."""
    weights = adapters.trainable_weights(model, fine_tune_type)
    return 3 * sum(int(v.nbytes) for v in weights.values())


def free_bytes(path: Path) -> int:
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk_space(run_dir: Path, checkpoint_bytes: int, *, when: str = "start") -> None:
    """Refuse (FinetuneError with the figures) when the disk cannot hold one more checkpoint and the
    run folder's adapter copy (a third of a checkpoint) beside it."""
    from finetune_app.core.errors import FinetuneError

    need = checkpoint_bytes + checkpoint_bytes // 3 + DISK_MARGIN
    free = free_bytes(run_dir)
    if free < need:
        mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
        what = "cannot start" if when == "start" else "stopped before writing its next checkpoint"
        raise FinetuneError(
            f"Not enough disk space: the run {what}. A checkpoint needs about {mb(need)} "
            f"({mb(checkpoint_bytes)} of adapter and optimizer state, plus the adapter copy and a margin) "
            f"but only {mb(free)} is free on the disk holding '{run_dir}'.",
            "Free some space (delete old runs in the run history), keep fewer checkpoints, "
            "or choose a run folder on another disk.", file=run_dir)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _safetensors_ok(path: Path) -> bool:
    """Header parses and the file holds every byte the header promises (catches truncation)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                return False
            (n,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if n > size - 8:  # a garbage length (it would read past the end, or overflow)
                return False
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, struct.error):
        return False


def check_complete(ckpt: Path) -> None:
    """Raise DamagedCheckpoint naming the first file that is missing, unreadable or cut short."""
    for name in (STATE_FILE, adapters.CONFIG_FILE):
        try:
            json.loads((ckpt / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            raise DamagedCheckpoint(f"{name} is missing or not valid JSON") from None
    for name in (adapters.ADAPTER_FILE, OPTIMIZER_FILE):
        if not _safetensors_ok(ckpt / name):
            raise DamagedCheckpoint(f"{name} is missing, truncated or not a safetensors file")


def is_valid(ckpt: Path) -> bool:
    try:
        check_complete(ckpt)
    except DamagedCheckpoint:
        return False
    return True


def latest_valid(run_dir: Path) -> tuple[Path | None, list[Path]]:
    """The newest checkpoint that reads back whole, and the newer ones skipped as damaged."""
    skipped = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        if is_valid(ckpt):
            return ckpt, skipped
        skipped.append(ckpt)
    return None, skipped


def remove_stale_staging(run_dir: Path) -> None:
    """Staging folders a killed save left behind (never a checkpoint; see atomic.staged_dir)."""
    root = Path(run_dir) / CHECKPOINTS
    for stage in root.glob(".step-*.staging-*") if root.is_dir() else ():
        shutil.rmtree(stage, ignore_errors=True)


def read_state(ckpt: Path) -> TrainState:
    """The checkpoint's state.json, checked: a JSON object whose counters are whole numbers >= 0
    and whose step is the folder's own."""
    try:
        data = json.loads((Path(ckpt) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DamagedCheckpoint(f"{STATE_FILE} cannot be read ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise DamagedCheckpoint(f"{STATE_FILE} is not a JSON object")
    for key in ("step", "epoch", "batch_in_epoch", "trained_tokens"):
        v = data.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DamagedCheckpoint(f"{STATE_FILE} field '{key}' is {v!r}, not a whole number >= 0")
    m = STEP_DIR.match(Path(ckpt).name)
    if m and int(m.group(1)) != data.get("step"):
        raise DamagedCheckpoint(f"{STATE_FILE} says step {data.get('step')}, but the folder is {Path(ckpt).name}")
    for key in ("best_val_loss", "val_loss"):
        if data.get(key) is not None and (isinstance(data[key], bool) or not isinstance(data[key], (int, float))):
            data[key] = None
    for key in ("val_step", "metrics_step"):
        if data.get(key) is not None and not isinstance(data.get(key), int):
            data[key] = None
    if data.get("val_metrics") is not None and not isinstance(data["val_metrics"], dict):
        data["val_metrics"] = None
    return TrainState(**{k: v for k, v in data.items() if k in TrainState.__dataclass_fields__})


def _load_tensors(path: Path) -> dict:
    try:
        return dict(mx.load(str(path)))
    except Exception as exc:  # the library raises RuntimeError/ValueError for garbage headers
        raise DamagedCheckpoint(f"{path.name} cannot be read ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None


def _not_finite(tensors: dict) -> list[str]:
    checks = {k: mx.all(mx.isfinite(v)) for k, v in tensors.items() if mx.issubdtype(v.dtype, mx.inexact)}
    if not checks:
        return []
    oks = mx.stack(list(checks.values())).tolist()  # one read-back, not one per tensor
    return [k for k, ok in zip(checks, oks) if not ok]


def _non_finite(name: str, tensors: dict) -> None:
    bad = _not_finite(tensors)
    if bad:
        raise DamagedCheckpoint(f"{name} holds NaN or infinite values ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''})")


def _not_finite_direct(tensors: dict) -> list[str]:
    """As _not_finite, reading the evaluated buffers without MLX's scheduler (see tensor_files:
    after a lost peer the stream may be stuck in a dead collective)."""
    import numpy as np

    views = {mx.float32: (np.uint32, 0x7F800000), mx.float16: (np.uint16, 0x7C00), mx.bfloat16: (np.uint16, 0x7F80)}
    bad = []
    for k, v in tensors.items():
        if v.dtype not in views or not v.size:
            continue
        kind, exponent = views[v.dtype]
        bits = np.frombuffer(memoryview(v).cast("B"), dtype=kind)
        if np.any((bits & exponent) == exponent):  # all exponent bits set: inf or NaN
            bad.append(k)
    return bad


def non_finite_weights(model, fine_tune_type: str, *, direct: bool = False) -> list[str]:
    """Names of trainable weights holding NaN or infinity (none: safe to checkpoint)."""
    weights = adapters.trainable_weights(model, fine_tune_type)
    return _not_finite_direct(weights) if direct else _not_finite(weights)


def restore(ckpt: Path, model, optimizer, fine_tune_type: str = "lora") -> TrainState:
    """Load a checkpoint into the model and optimizer after checking all of it first (state,
    tensor names, shapes, finiteness): a DamagedCheckpoint leaves model and optimizer untouched."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    weights = _load_tensors(ckpt / adapters.ADAPTER_FILE)
    opt = _load_tensors(ckpt / OPTIMIZER_FILE)
    params = dict(tree_flatten(model.parameters()))
    trainable = adapters.trainable_weights(model, fine_tune_type)
    misfit = [f"{k} {tuple(v.shape)}" + (f" vs model {tuple(params[k].shape)}" if k in params else " (no such parameter)")
              for k, v in weights.items() if k not in params or params[k].shape != v.shape]
    missing = [k for k in trainable if k not in weights]
    if misfit or missing:
        what = "; ".join(misfit[:2] + [f"{k} missing" for k in missing[:2]])
        raise DamagedCheckpoint(f"{adapters.ADAPTER_FILE} does not fit the model's adapter ({what})")
    optimizer.init(model.trainable_parameters())  # lazy zeros: the state's expected names and shapes
    expected = {k: v.shape for k, v in tree_flatten(optimizer.state)}
    odd = [f"{k} {tuple(v.shape)}" for k, v in opt.items() if k not in expected or expected[k] != v.shape]
    odd += [f"{k} missing" for k in expected if k not in opt]
    if odd:
        raise DamagedCheckpoint(f"{OPTIMIZER_FILE} does not fit the model's adapter and optimizer ({'; '.join(odd[:3])})")
    _non_finite(adapters.ADAPTER_FILE, weights)
    _non_finite(OPTIMIZER_FILE, opt)
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = tree_unflatten(list(opt.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state
