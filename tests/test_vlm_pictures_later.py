"""(#16 vlmwarm) With the frozen-tower cache on, preparation counts each picture from its header
and decodes none; the pictures are read ahead of their first batch. The examples must be exactly
what decoding up front gives (ids, mask, grids, then pixels and mRoPE ids), for odd picture sizes
and the processor's max_pixels clamp; a run's losses must not change; a picture whose header reads
but whose body does not (a truncated JPEG) skips its row with a located notice, never a crash."""

import json

import numpy as np
import pytest
from PIL import Image

from finetune_app.core.config import TrainConfig
from finetune_app.core.data import open_dataset
from finetune_app.core.data.tokenize import Encoder
from finetune_app.core.families import family_for
from finetune_app.core.families.qwen_vl import QwenVL
from finetune_app.core.models import load_base
from finetune_app.core.training import events as ev
from finetune_app.core.training.trainer import Trainer

# (width, height): non-multiples of 28/32, tiny (the min_pixels floor), very wide, over the tiny
# processor's max_pixels (112²: clamped), an exact multiple, a tall one
SIZES = [(61, 37), (9, 13), (900, 47), (300, 250), (56, 56), (40, 170)]


def picture(size, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def write_rows(dest, names_per_row):
    with open(dest / "train.jsonl", "w") as f:
        for k, names in enumerate(names_per_row):
            f.write(json.dumps({"images": names, "messages": [
                {"role": "user", "content": "What is in this picture?"},
                {"role": "assistant", "content": f"Shapes and colours, row {k}, in a short caption."}]}) + "\n")


@pytest.fixture(scope="module")
def odd_pictures(tmp_path_factory):
    dest = tmp_path_factory.mktemp("odd")
    (dest / "images").mkdir()
    names = []
    for i, size in enumerate(SIZES):
        names.append(f"images/{i}.png")
        picture(size, i).save(dest / names[-1])
    rotated = picture((70, 30), 99)  # a JPEG stored sideways: EXIF orientation 6 (upright 30 x 70)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(dest / "images/rot.jpg", exif=exif)
    rows = [[n] for n in names] + [["images/rot.jpg"], [names[0], names[2]]]  # (and two pictures in one row)
    write_rows(dest, rows)
    return dest


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("image_size", [None, 48])
def test_counted_from_headers_equals_decoded(family, image_size, tiny_model, odd_pictures):
    base = load_base(str(tiny_model(family)))
    fam = family_for(base)
    fam.start(TrainConfig(model="m", data="d", output="o"))
    plain = Encoder(base, image_size=image_size)
    enc = Encoder(base, image_size=image_size)
    enc.sized = fam.sized_processor(enc.layout)
    assert enc.sized is not None
    dataset = open_dataset(odd_pictures)
    grids = set()
    for i in range(len(dataset)):
        sample = dataset.sample(i)
        want = plain.encode(sample, i)
        lazy = enc.encode_sized(sample, i)
        assert lazy.lazy_images and "pixel_values" not in lazy.images
        assert lazy.input_ids.dtype == want.input_ids.dtype and np.array_equal(lazy.input_ids, want.input_ids)
        assert np.array_equal(lazy.target_mask, want.target_mask) and lazy.model_length == want.model_length
        g, wg = lazy.images["image_grid_thw"], want.images["image_grid_thw"]
        assert g.dtype == wg.dtype and np.array_equal(g, wg)
        grids.update(map(tuple, wg.tolist()))
        read = enc.encode(sample, i)  # what the trainer reads ahead of the row's first batch
        for k, v in want.images.items():
            assert read.images[k].dtype == v.dtype and np.array_equal(read.images[k], v)
        fam.prepare_example(lazy)
        fam.prepare_example(read)
        assert lazy.feature_keys == read.feature_keys and len(lazy.feature_keys) == want.n_images
        assert np.array_equal(lazy.rope_positions, read.rope_positions)
    ip = base.processor.image_processor
    over = plain.encode(dataset.sample(3), 3).images["image_grid_thw"][0]  # 300 x 250, or 48 x 40
    if image_size is None:  # clamped to the processor's max_pixels
        assert int(np.prod(over[1:])) * ip.patch_size ** 2 <= ip.max_pixels < 300 * 250
    assert len(grids) >= 5


def test_pictures_decoded_up_front_where_they_are_needed_every_epoch(tiny_model):
    """Cache off (the tower runs on pixels each epoch) or tower trained: pixels held as before."""
    base = load_base(str(tiny_model("qwen2_vl")))
    fam, layout = family_for(base), Encoder(base).layout
    for off in ({"cache_vision": False}, {"train_vision": True}):
        fam.start(TrainConfig(model="m", data="d", output="o", **off))
        assert fam.sized_processor(layout) is None


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in rows if r.get("kind") in ("train", "val")]


def config(model, data, out):
    return TrainConfig(model=str(model), data=str(data), output=str(out), epochs=2, batch_size=4, sample_count=0,
                       steps_per_report=1, steps_per_eval=2, save_every=100, learning_rate=1e-3)


def test_a_run_reading_pictures_later_has_the_up_front_losses(tiny_model, shapes_data, tmp_path, monkeypatch):
    model = tiny_model("qwen2_vl")
    later = Trainer(config(model, shapes_data, tmp_path / "later"))
    later.run()
    assert all(e.lazy_images for e in later.data.train + later.data.valid)
    # every picture read once, on the encoding threads, in the order the run met it (validation at step 2)
    assert later.reread.served == len(later.data.train) + len(later.data.valid)
    monkeypatch.setattr(QwenVL, "sized_processor", lambda self, layout: None)
    up = Trainer(config(model, shapes_data, tmp_path / "up"))
    up.run()
    assert not any(e.lazy_images for e in up.data.train)
    assert losses(tmp_path / "later") == losses(tmp_path / "up")


def test_a_truncated_jpeg_skips_its_row_when_read(tiny_model, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    names = []
    for i in range(9):
        names.append(f"images/{i}.jpg")
        picture((64, 48), i).save(data / names[-1], quality=90)
    whole = (data / names[3]).read_bytes()
    (data / names[3]).write_bytes(whole[:len(whole) // 3])  # its header reads, its body does not
    write_rows(data, [[n] for n in names])
    notices = []
    cfg = TrainConfig(model=str(tiny_model("qwen2_vl")), data=str(data), output=str(tmp_path / "run"),
                      epochs=2, batch_size=4, valid_fraction=0.0, sample_count=0, steps_per_eval=100,
                      save_every=100, steps_per_report=1)
    t = Trainer(cfg, listeners=[lambda e: notices.append(e.message) if isinstance(e, ev.Notice) else None])
    result = t.run()
    assert t.data.skipped == 0  # counted from its header: kept by preparation
    assert result.status == "finished" and result.step == 6
    skipped = [n for n in notices if "can no longer be read" in n]
    assert len(skipped) == 1 and "3.jpg" in skipped[0] and "train.jsonl line " in skipped[0], notices
