"""Rows encoded on a thread pool give exactly the sequential preparation: the same examples
(ids, masks, pixels, the family's mRoPE ids and cache keys), the same skipped rows with the same
located notices, and a run with the same losses."""

import json

import numpy as np
import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.data import encode_pool
from finetune_app.core.data.demo import make_shapes_dataset
from finetune_app.core.data.tokenize import Encoder
from finetune_app.core.families import family_for
from finetune_app.core.models import load_base
from finetune_app.core.training.prepare import prepare_examples
from finetune_app.core.training.trainer import Trainer


@pytest.fixture(scope="module")
def bad_rows_data(tmp_path_factory):
    """Shapes captions (JSONL) with an undecodable picture and a missing one."""
    dest = make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=14, n_valid=4, size=64,
                               seed=0, jsonl=True)
    rows = [json.loads(line) for line in (dest / "train.jsonl").read_text().splitlines()]
    pictures = sorted((dest / "images").iterdir()) if (dest / "images").is_dir() else []
    assert rows and pictures
    (dest / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    key = next(k for k in ("image", "images") if k in rows[0])
    rows[2][key] = "broken.png" if key == "image" else ["broken.png"]
    rows[5][key] = "gone.png" if key == "image" else ["gone.png"]
    (dest / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def prepare(model, data, workers, tmp_path):
    base = load_base(str(model))
    cfg = TrainConfig(model=str(model), data=str(data), output=str(tmp_path / "out"))
    family = family_for(base)
    family.start(cfg)
    encoder = Encoder(base, completion_only=cfg.completion_only, image_size=cfg.image_size,
                      image_features=family.image_features(), serve_target=cfg.serve_target)
    events = []
    got = prepare_examples(cfg, base, encoder, on_example=family.prepare_example, workers=workers,
                           progress=lambda phase, d, t: events.append((phase, d, t)))
    return got, events


def contents(ex):
    out = {"index": ex.index, "ids": ex.input_ids.tolist(), "mask": ex.target_mask.tolist(),
           "length": ex.model_length, "lazy": ex.lazy_images, "keys": list(ex.feature_keys),
           "images": {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in ex.images.items()}}
    rope = getattr(ex, "rope_positions", None)
    out["rope"] = None if rope is None else np.asarray(rope).tolist()
    return out


def test_threaded_preparation_equals_the_sequential_one(tiny_model, bad_rows_data, tmp_path):
    model = tiny_model("qwen2_vl")
    one, one_events = prepare(model, bad_rows_data, 1, tmp_path)
    many, many_events = prepare(model, bad_rows_data, 3, tmp_path)
    assert one.skipped == 2 and len(one.skipped_rows) == 2
    assert [contents(e) for e in many.train] == [contents(e) for e in one.train]
    assert [contents(e) for e in many.valid] == [contents(e) for e in one.valid]
    assert [s.line for s in many.samples] == [s.line for s in one.samples]
    assert many.problems == one.problems
    assert many.skip_notice() == one.skip_notice()
    assert "broken.png" in one.skip_notice() and "gone.png" in one.skip_notice()
    assert many_events == one_events  # tokenising k/M for every row, in order


def test_a_caller_that_stops_early_ends_the_workers(tiny_model, bad_rows_data):
    """A run stopped mid-preparation (an exception out of the loop) leaves no encoding threads."""
    import threading

    from finetune_app.core.data import open_dataset

    base = load_base(str(tiny_model("qwen2_vl")))
    dataset = open_dataset(bad_rows_data)
    rows = encode_pool.encoded_rows(dataset, Encoder(base).encode, list(range(len(dataset))), workers=3)
    sample, ex, failure = next(rows)
    assert failure is None and ex.input_ids.size
    rows.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("encode-")]


def test_a_run_has_the_same_losses_on_one_thread(tiny_model, bad_rows_data, tmp_path, monkeypatch):
    model = tiny_model("qwen2_vl")

    def losses(out, workers):
        monkeypatch.setattr(encode_pool, "default_workers", lambda: workers)
        cfg = TrainConfig(model=str(model), data=str(bad_rows_data), output=str(out), iters=4, batch_size=4,
                          sample_count=0, steps_per_report=1, steps_per_eval=2, learning_rate=1e-3)
        Trainer(cfg).run()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in rows if r.get("kind") in ("train", "val")]

    sequential = losses(tmp_path / "one", 1)
    assert len(sequential) >= 4
    assert losses(tmp_path / "many", 4) == sequential
