"""The frozen tower runs on groups of pictures (#16): each epoch-0 batch's images in one call, and a
process whose cache lacks an image (a resumed run) recomputes it with the same companions, so its
features equal the uninterrupted run's (vision_cache.py; test_vision_cache_fill.py checks that a
resumed run's losses equal the uninterrupted run's exactly)."""

import json
from collections import Counter

import mlx.core as mx

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.control import Control
from finetune_app.core.training.events import TrainReport
from finetune_app.core.training.trainer import Trainer


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in rows if r.get("kind") in ("train", "val")]


def config(model, data, out):
    # 24 training and 8 validation images, batch 4: an epoch is 6 steps
    return TrainConfig(model=str(model), data=str(data), output=str(out), epochs=1, batch_size=4,
                       sample_count=0, steps_per_report=1, steps_per_eval=3, learning_rate=1e-3)


def test_the_tower_runs_on_epoch0_batches_and_regroups_them_when_met_again(tiny_model, shapes_data, tmp_path):
    model = tiny_model("qwen2_vl")
    whole = Trainer(config(model, shapes_data, tmp_path / "whole"))
    whole.run()
    calls = whole.family.cache.calls
    assert Counter(calls) == {4: 6 + 2}, "one call per epoch-0 batch and per validation batch, none later"

    # a batch of images from three epoch-0 batches, met by a fresh process: three calls of whole groups,
    # giving the uninterrupted run's features (small data keeps the epochs' batches alike, so build one)
    fresh = Trainer(config(model, shapes_data, tmp_path / "fresh"))
    data = fresh.setup()
    mixed = [data.train[b[0]] for b in fresh.batches_of_epoch(0)[:3]]
    fresh.family.plan(mixed)
    assert fresh.family.cache.calls == [4, 4, 4]
    for key, feats in fresh.family.cache.features.items():
        assert mx.array_equal(feats, whole.family.cache.features[key]).item()
    fresh._release_run_dir(failed=False)
