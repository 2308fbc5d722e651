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
    total_steps: int = 0
    seed: int = 0
    rng: str = "reseeded per step from (seed, step)"


def save(run_dir: Path, model, adapter_config: dict, optimizer, state: TrainState, *, keep: int, train_config=None) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    dest = root / f"step-{state.step:07d}"
    with atomic.staged_dir(dest, overwrite=True) as stage:
        adapters.save(model, adapter_config, stage, train_config=train_config)
        opt_state = dict(tree_flatten(optimizer.state))
        mx.eval(opt_state)
        mx.save_safetensors(str(stage / OPTIMIZER_FILE), opt_state)
        (stage / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    rotate(root, keep)
    return dest


def rotate(root: Path, keep: int) -> None:
    steps = list_checkpoints(root.parent)
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


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


def restore(ckpt: Path, model, optimizer) -> TrainState:
    weights = mx.load(str(ckpt / adapters.ADAPTER_FILE))
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / OPTIMIZER_FILE)).items()))
    mx.eval(model.parameters(), optimizer.state)
    data = json.loads((ckpt / STATE_FILE).read_text())
    return TrainState(**{k: v for k, v in data.items() if k in TrainState.__dataclass_fields__})
