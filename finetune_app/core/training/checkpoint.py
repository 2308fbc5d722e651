"""Resumable checkpoints: adapter, optimizer state, step and data position, written atomically.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` built under a temporary name and renamed
into place, so a kill leaves either the whole checkpoint or none. The RNG needs no saved state:
the trainer reseeds from (seed, step) at every step, so randomness is a function of the step.
The learning rate is a function of the step too (schedule.py); the data order of (seed, epoch).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from finetune_app.core import adapters, atomic

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STEP_DIR = re.compile(r"^step-(\d{7,})$")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next micro-batch
    batch_in_epoch: int = 0  # next micro-batch within that epoch
    trained_tokens: int = 0
    best_val_loss: float | None = None
    val_loss: float | None = None  # the latest validation loss ...
    val_step: int | None = None  # ... and the step it was measured at (== step: this checkpoint's own)
    total_steps: int = 0
    seed: int = 0
    rng: str = "reseeded per step from (seed, step)"


def save(run_dir: Path, model, adapter_config: dict, optimizer, state: TrainState, *, keep: int, train_config=None,
         direct: bool = False) -> Path:
    """`direct`: everything is evaluated already; write without MLX's scheduler (tensor_files)."""
    from finetune_app.core import tensor_files

    root = Path(run_dir) / CHECKPOINTS
    dest = root / f"step-{state.step:07d}"
    with atomic.staged_dir(dest, overwrite=True) as stage:
        adapters.save(model, adapter_config, stage, train_config=train_config, direct=direct)
        tensor_files.save(stage / OPTIMIZER_FILE, dict(tree_flatten(optimizer.state)), direct=direct)
        (stage / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    rotate(root, keep)
    return dest


def rotate(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints and the one with the best validation loss."""
    steps = list_checkpoints(root.parent)
    if keep <= 0 or len(steps) <= keep:
        return
    kept = set(steps[-keep:])
    best = best_checkpoint(root.parent)
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


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the lowest validation loss measured at its step (earliest on ties)."""
    scored = [(v, i, c) for i, c in enumerate(list_checkpoints(run_dir))
              if (v := checkpoint_val_loss(c)) is not None and v == v]
    return min(scored)[2] if scored else None


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
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def is_valid(ckpt: Path) -> bool:
    try:
        json.loads((ckpt / STATE_FILE).read_text())
        json.loads((ckpt / adapters.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return _safetensors_ok(ckpt / adapters.ADAPTER_FILE) and _safetensors_ok(ckpt / OPTIMIZER_FILE)


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


def restore(ckpt: Path, model, optimizer) -> TrainState:
    weights = mx.load(str(ckpt / adapters.ADAPTER_FILE))
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / OPTIMIZER_FILE)).items()))
    mx.eval(model.parameters(), optimizer.state)
    data = json.loads((ckpt / STATE_FILE).read_text())
    return TrainState(**{k: v for k, v in data.items() if k in TrainState.__dataclass_fields__})
