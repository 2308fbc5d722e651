"""Demo data: deterministic, balanced, centred shapes with their own validation split."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
from PIL import Image

from finetune_app.core.data import open_dataset, split, validate
from finetune_app.core.data.demo import (
    COLOURS,
    SHAPES,
    make_instruction_dataset,
    make_shapes_dataset,
)


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_shapes_dataset(tmp_path):
    dest = make_shapes_dataset(tmp_path / "shapes", n_train=24, n_valid=12, size=32, seed=1)
    ds = open_dataset(dest)
    report = validate(ds)
    assert report.rows_usable == 36 and not report.problems
    train, valid = split(report)
    assert (len(train), len(valid)) == (24, 12)
    captions = Counter(ds.sample(i).answer for i in valid)
    assert len(captions) == 12 and set(captions.values()) == {1}  # balanced: every class once
    for i in train[:12]:
        s = ds.sample(i)
        _, colour, shape = s.answer.split()
        assert colour in COLOURS and shape in SHAPES
        arr = np.asarray(Image.open(s.images[0].path).convert("L"), dtype=float)
        ys, xs = np.nonzero(arr < arr[0, 0] - 40)  # shape pixels (darker than the background)
        assert abs(xs.mean() - 15.5) < 3 and abs(ys.mean() - 15.5) < 4  # centred
    again = make_shapes_dataset(tmp_path / "again", n_train=24, n_valid=12, size=32, seed=1)
    assert _digest(dest) == _digest(again)
    other = make_shapes_dataset(tmp_path / "other", n_train=24, n_valid=12, size=32, seed=2)
    assert _digest(dest) != _digest(other)


def test_instruction_dataset(tmp_path):
    dest = make_instruction_dataset(tmp_path / "txt", n=60, seed=0)
    ds = open_dataset(dest)
    report = validate(ds)
    assert ds.format == "alpaca" and not ds.has_images
    assert report.rows_usable == 66 and not report.problems  # distinct rows, no duplicates
    assert len(ds.splits["valid"]) == 6
    again = make_instruction_dataset(tmp_path / "again", n=60, seed=0)
    assert _digest(dest) == _digest(again)
