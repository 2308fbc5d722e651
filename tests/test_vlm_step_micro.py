"""benchmarks/vlm_step_micro.py compares like with like: on the same rows, ours' cached step, ours'
first-epoch step (tower in the step), ours' library path and mlx-vlm's trainer step compute the same
loss before any update (float32), and the FLOPs it reports follow sbs_flops' conventions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sbs_flops  # noqa: E402
import vlm_step_micro as vsm  # noqa: E402


@pytest.fixture(scope="module")
def setup(tiny_model):
    folder = Path(tiny_model("qwen2_vl"))
    cfg = json.loads((folder / "config.json").read_text())
    rows = vsm.make_rows(cfg, "112:2:12:6", batch=2, seed=0)  # two 112-px pictures a row (16 tokens each)
    return folder, rows


def first_loss(tool, folder, rows):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    cm = vsm.mlx_vlm_tool if tool.startswith("mlx_vlm") else vsm.ours_tool
    with cm(folder, SimpleNamespace(rank=4, lr=1e-4), tool) as run:
        one, facts, graph = run(rows)
        one()
        ops = vsm.count_ops(*[x for _, x in tree_flatten(graph()) if isinstance(x, mx.array)]) \
            if tool == "ours" else None
        return facts["first_loss"], facts, ops


def test_rows_have_the_asked_shape(setup):
    _, rows = setup
    r = rows[0]
    assert r["grid"].tolist() == [[1, 8, 8]] * 2 and r["pixels"].shape == (128, 1176)
    assert len(r["ids"]) == 12 + 2 * (16 + 2) + 6 and int(r["mask"][1:].sum()) == 6
    assert len(rows[1]["ids"]) < len(r["ids"])  # length-sorted, the first the longest


def test_every_tool_computes_the_same_first_loss(setup):
    folder, rows = setup
    ref, facts, ops = first_loss("ours", folder, rows)
    assert facts["fast"] and ops["nodes"] > ops["non_view"] > 0
    for tool in ("ours-e0", "ours-nocache", "mlx_vlm"):
        loss, facts, _ = first_loss(tool, folder, rows)
        assert loss == pytest.approx(ref, rel=1e-5, abs=1e-5), tool


def test_flops_follow_the_harness_conventions(setup):
    folder, rows = setup
    c = sbs_flops.model_counts(folder, rank=16)
    ours, e0, peer = (vsm.flops(c, rows, t) for t in ("ours", "ours-e0", "mlx_vlm"))
    assert ours["flops_tower"] == 0 and ours["flops_total"] == ours["flops_lm"]
    assert e0["flops_lm"] == ours["flops_lm"] and e0["flops_tower"] > 0
    tower = sum(sbs_flops.tower_flops(c, int(np.prod(g))) for r in rows for g in r["grid"])
    assert peer["flops_tower"] == pytest.approx(tower)
    head = 4 * c["vocab"] * c["hidden"]  # mlx-vlm's head at every position, ours' at the supervised ones
    extra = sum(len(r["ids"]) - int(r["mask"][1:].sum()) for r in rows) * head
    assert peer["flops_lm"] - ours["flops_lm"] == pytest.approx(extra)


def test_text_twin_steps_the_same_positions(setup, tmp_path):
    """`ours-text`: our text step on an mlx-lm qwen2 with the VLM's LM dimensions, over the same
    positions and supervised tokens as ours' cached VLM step, the same LM FLOPs."""
    import mlx.core as mx

    folder, rows = setup
    vlm = tmp_path / "vlm"
    vlm.symlink_to(folder)
    twin = vsm.build_text_twin(vlm, "float32")
    a, b = (json.loads((f / "config.json").read_text()) for f in (folder, twin))
    assert b["model_type"] == "qwen2" and all(a[k] == b[k] for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"))
    _, ours, _ = first_loss("ours", folder, rows)
    with vsm.ours_tool(folder, SimpleNamespace(rank=4, lr=1e-4, text_twin=twin), "ours-text") as run:
        one, facts, _ = run(rows)
        one()
    assert facts["positions"] == ours["positions"] and facts["supervised_k"] == ours["supervised_k"]
    assert mx.isfinite(mx.array(facts["first_loss"])).item()
    c = sbs_flops.model_counts(folder, rank=16)
    assert vsm.flops(c, rows, "ours-text") == vsm.flops(c, rows, "ours")
