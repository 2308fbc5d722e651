"""Qwen-VL's mRoPE ids are built on the host (families/qwen_vl.py `rope_positions`, #16 vlmpipe):
they equal mlx-vlm's own `get_rope_index` for every prepared row (one picture, two pictures of
different sizes, none) in Qwen2-, 2.5- and 3-VL."""

import mlx.core as mx
import numpy as np
import pytest

from finetune_app.core.families import family_for
from finetune_app.core.models import load_base


def library_ids(base, ids, grid):
    lm = base.model.language_model
    pos, _ = lm.get_rope_index(mx.array(ids[None]), None if grid is None else mx.array(grid), None, None)
    pos = np.asarray(pos)
    return np.broadcast_to(pos[None], (3, *pos.shape))[:, 0] if pos.ndim == 2 else pos[:, 0]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_host_rope_ids_equal_the_library(family, tiny_model, monkeypatch):
    base = load_base(str(tiny_model(family)))
    fam = family_for(base)
    cfg = base.model.config
    merge = cfg.vision_config.spatial_merge_size
    rng = np.random.default_rng(0)
    rows = []
    for grids in ([(1, 8, 8)], [(1, 4, 6), (1, 8, 4)], []):  # one picture, two sizes, text only
        ids = list(rng.integers(10, 100, 5))
        for t, h, w in grids:
            ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // merge**2) + list(rng.integers(10, 100, 3))
        ids += list(rng.integers(10, 100, 7))
        rows.append((np.array(ids, np.int32), np.array(grids, np.int64) if grids else None))
    library = fam._library_rope_positions
    monkeypatch.setattr(fam, "_library_rope_positions", lambda *a: pytest.fail("took the library's call"))
    for ids, grid in rows:
        got = fam.rope_positions(ids, grid)
        want = library_ids(base, ids, grid)
        assert got.dtype == np.int32 and got.shape == (3, len(ids))
        np.testing.assert_array_equal(got, want)
    odd = np.array([5, cfg.image_token_id, 6, cfg.image_token_id, 7], np.int32)  # pads not in one run
    monkeypatch.setattr(fam, "_library_rope_positions", library)
    np.testing.assert_array_equal(fam.rope_positions(odd, np.array([[1, 2, 2]])), library(odd, np.array([[1, 2, 2]])))
