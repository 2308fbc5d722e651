"""On the CPU back-end the text step is not compiled and batches are padded on their own
(core/training/backend.py, #16 cputext); the losses equal the compiled, shape-planned run's."""

import mlx.core as mx

from finetune_app.core.config import TrainConfig
from finetune_app.core.training import backend
from finetune_app.core.training.events import TrainReport
from finetune_app.core.training.trainer import Trainer
from tests.test_memory_bounds import write_rows


def run(tiny_model, tmp_path, name, monkeypatch, cpu_compile: str | None, family="llama", data=None, **kw):
    if cpu_compile is None:
        monkeypatch.delenv(backend.CPU_COMPILE_ENV, raising=False)
    else:
        monkeypatch.setenv(backend.CPU_COMPILE_ENV, cpu_compile)
    settings = dict(epochs=1, batch_size=2, valid_fraction=0.2, val_batches=2, sample_count=0, save_every=1000,
                    steps_per_eval=1000, steps_per_report=1, grad_clip=None)
    cfg = TrainConfig(model=str(tiny_model(family)), data=str(data or tmp_path / "data.jsonl"), output=str(tmp_path / name),
                      **{**settings, **kw})
    losses = []
    trainer = Trainer(cfg, listeners=[lambda e: losses.append(e.loss) if isinstance(e, TrainReport) else None])
    result = trainer.run()
    return trainer, losses, result.final_val_loss


def test_cpu_runs_the_fast_text_step_uncompiled_with_the_compiled_losses(tiny_model, tmp_path, monkeypatch):
    assert backend.on_cpu()  # this suite runs on the CPU back-end
    write_rows(tmp_path / "data.jsonl", 10)
    user, user_losses, user_val = run(tiny_model, tmp_path, "user", monkeypatch, None)
    assert user.family.fast and not user.family.compiled  # the fast path (supervised head), uncompiled
    assert user.family.buckets is None  # no shared shape plan: each batch padded on its own
    compiled, comp_losses, comp_val = run(tiny_model, tmp_path, "compiled", monkeypatch, "1")
    assert compiled.family.fast and compiled.family.compiled and compiled.family.buckets is not None
    assert len(user_losses) == len(comp_losses) >= 3
    assert max(abs(a - b) for a, b in zip(user_losses, comp_losses)) < 1e-4, (user_losses, comp_losses)
    assert abs(user_val - comp_val) < 1e-4
    # the setting still decides: --no-compile is the library path, on every back-end
    assert not backend.compile_step(False)
    monkeypatch.setenv(backend.CPU_COMPILE_ENV, "0")
    assert not backend.compile_step(True)
    with mx.stream(mx.cpu):
        assert backend.on_cpu()


def test_cpu_runs_a_vlm_step_and_its_tower_uncompiled_with_the_compiled_losses(tiny_model, shapes_data, tmp_path,
                                                                              monkeypatch):
    """Qwen2-VL on the CPU back-end: the cached fast path, uncompiled (step and frozen tower: no C++
    kernel builds), with the losses of the compiled one."""
    short = dict(data=shapes_data, epochs=None, iters=3)
    user, user_losses, user_val = run(tiny_model, tmp_path, "vlm-user", monkeypatch, None, "qwen2_vl", **short)
    assert user.family.fast and not user.family.compiled and user.family.compiled_calls == 0
    assert user.family.buckets is None
    compiled, comp_losses, comp_val = run(tiny_model, tmp_path, "vlm-compiled", monkeypatch, "1", "qwen2_vl", **short)
    assert compiled.family.compiled and compiled.family.buckets is not None
    assert len(user_losses) == len(comp_losses) == 3
    assert max(abs(a - b) for a, b in zip(user_losses, comp_losses)) < 1e-4, (user_losses, comp_losses)
    assert abs(user_val - comp_val) < 1e-4
