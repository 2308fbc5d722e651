"""benchmarks/side_by_side.py's mlx_tune tool gets the work the other text tools get (read back with
the driver's own parser), runs under the interpreter named for it, and only its runs see mlx-tune's
folder (its datasets<4 is older than mlx-vlm 0.7.10 accepts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_mlx_tune_tool_matches_mlx_lm(tmp_path):
    sys.path.insert(0, str(BENCH))
    import sbs_mlx_tune
    import side_by_side as sbs

    a = argparse.Namespace(lr=2e-4, batch_size=3, rank=8, max_length=1024, report_every=5, mlx_vlm_flags="",
                           mlx_tune_python="/venv/bin/python", mlx_tune_site=str(tmp_path / "site"), peers_site=None)
    tune = sbs.tool_argv("mlx_tune", tmp_path / "model", tmp_path / "data", tmp_path / "out", a, steps=7, epochs=1)
    lm = sbs.tool_argv("mlx_lm", tmp_path / "model", tmp_path / "data", tmp_path / "lm", a, steps=7, epochs=1)
    assert tune[:2] == ["/venv/bin/python", str(BENCH / "peak_probe.py")] and tune[2:4] == ["-m", "sbs_mlx_tune"]
    t = sbs_mlx_tune.build_parser().parse_args(tune[4:])

    def flag(name):
        return lm[lm.index(name) + 1]

    assert (t.steps, t.batch_size, t.lr, t.max_length, t.seed) == (
        int(flag("--iters")), int(flag("--batch-size")), float(flag("--learning-rate")),
        int(flag("--max-seq-length")), int(flag("--seed")))
    assert (t.rank, t.model, t.data, t.output) == (8, str(tmp_path / "model"), str(tmp_path / "data"), str(tmp_path / "out"))

    paths = sbs.tool_env("mlx_tune", tmp_path / "cache", a)["PYTHONPATH"].split(":")
    assert str(BENCH) in paths and a.mlx_tune_site in paths
    assert a.mlx_tune_site not in sbs.tool_env("mlx_lm", tmp_path / "cache2", a)["PYTHONPATH"].split(":")
