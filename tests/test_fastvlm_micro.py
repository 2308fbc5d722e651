"""benchmarks/fastvlm_micro.py measures what bounds FastVLM's cached-vs-uncached wall ratio (#16):
the trainer's cached and uncached steps on the same rows (both compiled, the same positions), the
first epoch's compiled tower call, FastViTHD's FLOPs by kind; and side_by_side.py's phases (c, u,
F from ours' report windows) that the fastvlm summary prints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import fastvlm_micro as fm  # noqa: E402


def test_micro_runs_the_trainers_cached_and_uncached_steps(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINETUNE_CPU_COMPILE", "1")  # (the children: the compiled step the GPU runs)
    folder = tiny_model("fastvlm", image_size=64)
    out = tmp_path / "micro.json"
    assert fm.main(["--model", str(folder), "--px", "64", "--pictures", "2", "--steps", "1",
                    "--parts", "tower,flops,cached,uncached", "--part-timeout", "1200", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for part in ("cached", "uncached"):
        assert "error" not in r[part], r[part]
        assert r[part]["compiled"] and r[part]["fast"], r[part]
        assert r[part]["s"] > 0
    assert r["cached"]["positions"] == r["uncached"]["positions"]  # the same rows, the cache the only difference
    assert r["cached"]["supervised"] == r["uncached"]["supervised"]
    assert r["tower"]["compiled_like_trainer"] is True
    assert r["tower"]["features"][0][0] == 1  # (64 / 64)^2 features a picture
    prof = r["profile"]
    assert {"conv1x1", "linear", "attention"} <= set(prof["by_kind"])
    assert sum(k["gflop"] for k in prof["by_kind"].values()) == pytest.approx(prof["tflop"] * 1e3, rel=0.02, abs=1e-3)
    pred = r["predicted"]["T_u_minus_c"]
    assert pred["ceiling"] < 3 and set(pred) >= {"ratio_40", "ratio_400", "T_over_c"}


def test_fastvithd_flops_at_1024px_are_the_architectures():
    """The real tower's count (lazy: nothing evaluated): ~0.49 TFLOP a 1024-px picture, 89% in the
    ConvFFN's 1x1 convolutions (what docs/performance.md's arithmetic uses)."""
    import mlx.core as mx
    from mlx_vlm.models.fastvlm.config import VisionConfig
    from mlx_vlm.models.fastvlm.vision import VisionModel

    spec = importlib.util.spec_from_file_location("sbs", BENCH / "side_by_side.py")
    sbs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sbs)
    tower = VisionModel(VisionConfig.from_dict({**sbs.FASTVITHD, "model_type": "llava_qwen2"}))
    r = fm.tower_profile(type("M", (), {"vision_tower": tower})(), mx.zeros((1, 3, 1024, 1024)), sync=False)
    assert r["tflop"] == pytest.approx(0.487, abs=0.005)
    assert r["by_kind"]["conv1x1"]["gflop"] / (r["tflop"] * 1e3) == pytest.approx(0.886, abs=0.01)
    assert r["by_stage"][-1]["out"] == [1, 16, 16, 3072]


def test_harness_phases_from_report_windows():
    spec = importlib.util.spec_from_file_location("sbs", BENCH / "side_by_side.py")
    sbs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sbs)
    # 40 rows, batch 4: 10 steps an epoch, 30 in all, reported every 5 steps
    run = {"rows": 40, "batch_size": 4, "steps": 30, "wall_s": 20.0,
           "step_times": [[5, 0.5], [10, 0.06], [15, 0.02], [20, 0.02], [25, 0.03], [30, 0.02]]}
    ph = sbs.phases(run)
    assert ph["epoch1_step_s"] == 0.06 and ph["later_step_s"] == 0.02  # (the first window, with the traces, left out)
    assert ph["fixed_s"] == pytest.approx(20.0 - 5 * (0.5 + 0.06 + 0.02 + 0.02 + 0.03 + 0.02))
    assert sbs.phases({**run, "step_times": run["step_times"][:-1]})["fixed_s"] is None  # a cut run: no F
    ratios = {"ours-nocache/warm": {"speedup_wall": 1.1}}
    nocache = {**run, "tool": "ours-nocache", "cache": "warm",
               "step_times": [[5, 0.5], [10, 0.05], [15, 0.05], [20, 0.05], [25, 0.05], [30, 0.05]]}
    sbs.fastvlm_phases([{**run, "tool": "ours", "cache": "warm"}, nocache], ratios)
    ph = ratios["ours-nocache/warm"]["phases"]
    assert ph["c_s"] == 0.02 and ph["u_s"] == 0.05 and ph["T_s"] == pytest.approx(0.03)
    assert ph["ceiling"] == pytest.approx(3 * 0.05 / 0.09)


def test_harness_counts_fastvithds_flops(tiny_model, tmp_path):
    """The info child counts a FastVLM picture's tower FLOPs (a convolutional tower has no patches),
    so the fastvlm runs' total FLOPs include the tower each tool runs (uncached: every epoch)."""
    import subprocess

    spec = importlib.util.spec_from_file_location("sbs", BENCH / "side_by_side.py")
    sbs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sbs)
    import sbs_data

    folder = tiny_model("fastvlm", image_size=64)
    data = tmp_path / "data"
    sbs_data.write_vlm(data, 4, 2, 64, tokens_per_word=1.3)
    out = subprocess.run([sys.executable, str(BENCH / "side_by_side.py"), "--child-info",
                          json.dumps({"model": str(folder), "data": str(data)})], capture_output=True, text=True)
    info = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("INFO "))[5:])
    assert info["conv_image_flops"] > 0 and all(r["images"] == 1 for r in info["rows"])
    c = sbs.sbs_flops.model_counts(Path(folder), 16) | {"conv_image_flops": info["conv_image_flops"]}
    once = sbs.sbs_flops.run_flops(c, info["rows"], 3, "supervised", 1)
    every = sbs.sbs_flops.run_flops(c, info["rows"], 3, "supervised", 3)
    assert once["flops_tower"] == pytest.approx(len(info["rows"]) * info["conv_image_flops"])
    assert every["flops_total"] - every["flops_lm"] == pytest.approx(3 * once["flops_tower"])
