"""The frozen-tower feature cache fills while training runs (#16), and cached and uncached runs give
the same losses on the same compiled / uncompiled setting, at float32 and bfloat16.

Filled during the first epoch, the cache must change nothing but the time: the losses of every
step and every evaluation equal those of a run whose cache was filled before its first step, and
a run stopped in its first epoch and resumed (a fresh process starts with an empty cache) repeats
the uninterrupted run's losses."""

import json

import mlx.core as mx
import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.models import load_base
from finetune_app.core.training.control import Control
from finetune_app.core.training.events import StateChanged, TrainReport
from finetune_app.core.training.trainer import Trainer

MODELS = {"qwen2_vl": {}, "fastvlm": {"image_size": 128}}


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in rows if r.get("kind") in ("train", "val")]


def config(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output=str(out), epochs=2, batch_size=4, sample_count=0,
                steps_per_report=1, steps_per_eval=3, save_every=2, learning_rate=1e-3)
    return TrainConfig(**{**base, **kw})


def cached_count(trainer):
    fam = trainer.family
    return len(fam.cache.features) if hasattr(fam, "cache") else len(fam.features)


class UpFront(Trainer):
    """The old behaviour, for comparison: every image's features computed before the first step."""

    def setup(self):
        data = super().setup()
        self.family.plan(data.train + data.valid)
        return data


@pytest.mark.parametrize("family", list(MODELS))
def test_cache_fills_during_training_with_the_same_losses(family, tiny_model, shapes_data, tmp_path):
    model = tiny_model(family, **MODELS[family])
    at_start = []

    def watch(trainer):
        return lambda e: at_start.append(cached_count(trainer)) if isinstance(e, StateChanged) and e.state == "started" else None

    up = UpFront(config(model, shapes_data, tmp_path / "up"))
    up.listeners.append(watch(up))
    up.run()
    lazy = Trainer(config(model, shapes_data, tmp_path / "lazy"))
    lazy.listeners.append(watch(lazy))
    lazy.run()
    images = len(lazy.data.train) + len(lazy.data.valid)
    assert at_start == [images, 0], "filled up front vs nothing computed before the first step"
    assert cached_count(lazy) == images  # every image once, by the end
    assert lazy.family.fast and lazy.family.compiled
    expected = losses(tmp_path / "up")
    assert len(expected) >= 8
    assert losses(tmp_path / "lazy") == pytest.approx(expected, rel=1e-6)

    # stopped after step 3 (epoch 1 of 2, the cache partly filled), resumed in a new Trainer whose cache is empty
    control = Control()
    stopper = Trainer(config(model, shapes_data, tmp_path / "resumed"), control=control)
    stopper.listeners.append(lambda e: control.stop() if isinstance(e, TrainReport) and e.step == 3 else None)
    assert stopper.run().status == "stopped"
    assert 0 < cached_count(stopper) < images
    Trainer(config(model, shapes_data, tmp_path / "resumed"), resume=True).run()
    assert losses(tmp_path / "resumed") == losses(tmp_path / "lazy")  # exactly: the same tower groups (#16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("compiled", [True, False])
def test_cached_and_uncached_give_the_same_losses(dtype, compiled, tiny_model, shapes_data, tmp_path):
    """FastVLM: on one compile setting, cache on vs off. Compiled and uncached, the tower runs inside
    the compiled step; uncompiled and uncached, the library's forward (the reference path)."""
    model = tiny_model("fastvlm", image_size=128)
    runs = {}
    for cache in (True, False):
        base = load_base(str(model))
        if dtype == "bfloat16":
            base.model.set_dtype(mx.bfloat16)
        t = Trainer(config(model, shapes_data, tmp_path / f"cache-{cache}", epochs=1, compile=compiled,
                           cache_vision=cache, steps_per_eval=2), base=base)
        t.run()
        assert (t.family.fast, t.family.compiled, t.family.cached) == (cache or compiled, compiled, cache)
        assert (t.family.compiled_tower is not None) == (cache and compiled)  # the fill's tower compiled too
        runs[cache] = losses(tmp_path / f"cache-{cache}")
    assert len(runs[True]) >= 4
    # bf16 keeps 8 bits of mantissa: 2^-8 relative is one rounding of the loss itself. (Compared as
    # numbers: pytest.approx compares the (kind, step, loss) tuples with ==, i.e. exactly, and the
    # cached fast path's fused head rounds differently from the library path's logits.)
    assert [r[:2] for r in runs[False]] == [r[:2] for r in runs[True]]
    assert [r[2] for r in runs[False]] == pytest.approx([r[2] for r in runs[True]], rel=1e-5 if dtype == "float32" else 4e-3)


@pytest.mark.parametrize("family", list(MODELS))
def test_examples_kept_without_pixels_are_read_again_until_cached(family, tiny_model, shapes_data, tmp_path,
                                                                    monkeypatch):
    """Past the in-memory image budget, examples keep no pixels: the first batch needing one reads
    its image again (its features are not cached yet), later epochs use the cache alone."""
    from finetune_app.core.training import prepare

    model = tiny_model(family, **MODELS[family])
    short = dict(epochs=None, iters=8, steps_per_eval=4)  # an epoch (6 steps) and the start of the next
    Trainer(config(model, shapes_data, tmp_path / "kept", **short)).run()
    monkeypatch.setattr(prepare, "IMAGE_BUDGET_BYTES", 0)
    reads = []
    t = Trainer(config(model, shapes_data, tmp_path / "lazy", **short))
    materialise = t._materialise

    def spy(ex):
        out = materialise(ex)
        reads.append(out is not ex)
        return out

    t._materialise = spy
    t.run()
    assert all(e.lazy_images for e in t.data.train)
    images = len(t.data.train) + len(t.data.valid)
    assert reads.count(True) == images and cached_count(t) == images  # each image read once, not again in epoch 2
    # (#16 vlmpipe) encoded ahead on threads, in the order the run meets them: epoch 0's, and the
    # validation rows at the first evaluation (step 4; #16 vlmwarm)
    assert t.reread.served == len(t.data.train) + len(t.data.valid)
    assert losses(tmp_path / "lazy") == pytest.approx(losses(tmp_path / "kept"), rel=1e-6)
