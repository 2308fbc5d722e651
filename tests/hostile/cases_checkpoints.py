"""Damaged checkpoints given to `train --resume` (issue #14): every one is refused with the file
named, or skipped for an older good one (saying so); never a traceback, never NaN resumed."""

from __future__ import annotations

import json

from hostile import case
from hostile.cases_run_folders import trained_run


def _only_step_2(run):
    """Leave one checkpoint (step 2), so a damaged one has nothing to fall back to."""
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-0000004")
    return run / "checkpoints" / "step-0000002"


def _nan(path, pick=lambda k: True):
    import mlx.core as mx

    tensors = dict(mx.load(str(path)))
    key = next(k for k, v in tensors.items() if pick(k) and v.size and mx.issubdtype(v.dtype, mx.floating))
    tensors[key] = mx.full(tensors[key].shape, float("nan"), dtype=tensors[key].dtype)
    mx.save_safetensors(str(path), tensors, metadata={"format": "mlx"})


def _resume(env, run, *, exit, says):
    env.expect("train", "--resume", run, "--iters", 6, "--quiet", exit=exit, says=says)


@case("checkpoint", "optimizer-state-is-garbage-bytes")
def _(env):
    run = trained_run(env)
    step = _only_step_2(run)
    (step / "optimizer.safetensors").write_bytes(b"\xff" * 64)
    _resume(env, run, exit=5, says=["No usable checkpoint", "step-0000002", "optimizer.safetensors", "new run"])


@case("checkpoint", "optimizer-state-of-another-shape")
def _(env):
    import mlx.core as mx

    run = trained_run(env)
    step = _only_step_2(run)
    tensors = dict(mx.load(str(step / "optimizer.safetensors")))
    key = next(k for k in tensors if k.endswith(".m"))
    tensors[key] = mx.zeros((3, 5))
    mx.save_safetensors(str(step / "optimizer.safetensors"), tensors)
    _resume(env, run, exit=5, says=["optimizer.safetensors", "does not fit", key])


@case("checkpoint", "optimizer-state-nan")
def _(env):
    run = trained_run(env)
    step = _only_step_2(run)
    _nan(step / "optimizer.safetensors", lambda k: k not in ("step", "learning_rate"))
    _resume(env, run, exit=5, says=["optimizer.safetensors", "NaN", "step-0000002"])


@case("checkpoint", "adapter-nan-falls-back")
def _(env):
    run = trained_run(env)
    _nan(run / "checkpoints" / "step-0000004" / "adapters.safetensors")
    _resume(env, run, exit=0, says=["step-0000004 is damaged", "adapters.safetensors", "NaN",
                                    "Resuming from step-0000002"])


@case("checkpoint", "adapter-of-another-rank")
def _(env):
    import mlx.core as mx

    run = trained_run(env)
    step = _only_step_2(run)
    tensors = dict(mx.load(str(step / "adapters.safetensors")))
    key = next(k for k in tensors if k.endswith("lora_a"))
    tensors[key] = mx.zeros((tensors[key].shape[0], 8))
    mx.save_safetensors(str(step / "adapters.safetensors"), tensors)
    _resume(env, run, exit=5, says=["adapters.safetensors", "does not fit", key])


@case("checkpoint", "state-json-garbage")
def _(env):
    run = trained_run(env)
    step = _only_step_2(run)
    (step / "state.json").write_bytes(b"\x00\x01not json")
    _resume(env, run, exit=5, says=["state.json", "step-0000002", "No usable checkpoint"])


@case("checkpoint", "state-json-is-a-list")
def _(env):
    run = trained_run(env)
    step = _only_step_2(run)
    (step / "state.json").write_text("[1, 2, 3]")
    _resume(env, run, exit=5, says=["state.json", "not a JSON object"])


@case("checkpoint", "state-json-negative-step")
def _(env):
    run = trained_run(env)
    step = _only_step_2(run)
    state = json.loads((step / "state.json").read_text())
    state["batch_in_epoch"] = -7
    (step / "state.json").write_text(json.dumps(state))
    _resume(env, run, exit=5, says=["state.json", "batch_in_epoch", "-7"])


@case("checkpoint", "state-json-says-another-step")
def _(env):
    run = trained_run(env)
    step = run / "checkpoints" / "step-0000004"
    state = json.loads((step / "state.json").read_text())
    state["step"] = 99999
    (step / "state.json").write_text(json.dumps(state))
    _resume(env, run, exit=0, says=["step-0000004 is damaged", "state.json", "99999", "Resuming from step-0000002"])


@case("checkpoint", "checkpoints-folder-is-a-file")
def _(env):
    import shutil

    run = trained_run(env)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder")
    env.keep(run / "checkpoints", run / "adapters.safetensors")
    _resume(env, run, exit=5, says=[str(run), "No usable checkpoint", "new run"])
