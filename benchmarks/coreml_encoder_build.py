"""Time building `fastvithd.mlpackage` for the REAL FastViTHD tower (mlx-vlm's default config).

Run:  python3 benchmarks/coreml_encoder_build.py [--verify] [--out DIR]

The tower gets random weights with non-trivial biases, BatchNorm statistics and layer scales (as
trained weights have), so coremltools' folding passes do the same work as for a real checkpoint.
Prints the build time, the package size and the peak memory; with --verify also times the numpy
evaluation of the graph definition and of the saved package at 1024 px and compares them.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def randomize(tower) -> None:
    """Random weights whose features still depend on the image (see tests/test_coreml_encoder.py:
    the reparameterised token mixers need their folded identity tap), with non-trivial BatchNorm
    statistics, biases and layer scales so coremltools' folding passes have real work."""
    import math

    import mlx.core as mx
    from mlx.utils import tree_flatten

    params = []
    for key, value in tree_flatten(tower.parameters()):
        if "layer_scale" in key:
            value = mx.random.uniform(0.05, 0.15, value.shape)
        elif "running_var" in key or key.endswith("bn.weight"):
            value = mx.random.uniform(0.5, 1.5, value.shape)
        elif key.endswith("bias") or "running_mean" in key:
            value = mx.random.normal(value.shape) * 0.02
        elif value.ndim == 4:
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            value = mx.random.normal(value.shape) * math.sqrt(2.0 / fan_in)
            if ".token_mixer.reparam_conv." in key or (
                    key.startswith("vision_model.network.") and key.count(".") == 4):
                eye = np.zeros(value.shape, np.float32)
                eye[:, value.shape[1] // 2, value.shape[2] // 2, 0] = 1.0
                value = value * 0.3 + mx.array(eye)
        else:
            value = mx.random.normal(value.shape) * math.sqrt(1.0 / value.shape[-1])
        params.append((key, value))
    tower.load_weights(params)
    tower.eval()
    mx.eval(tower.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models.fastvlm.config import VisionConfig
    from mlx_vlm.models.fastvlm.vision import VisionModel

    from finetune_app.core.export import coreml_encoder as ce

    cfg = VisionConfig()
    print("contract:", ce.verify_app_contract(cfg))
    mx.random.seed(0)
    tower = VisionModel(cfg)
    tower.eval()
    randomize(tower)
    n_params = sum(v.size for _, v in tree_flatten(tower.parameters()))
    print(f"tower parameters: {n_params / 1e6:.1f} M")

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="fastvithd-bench-"))
    dest = out_dir / "fastvithd.mlpackage"
    t0 = time.perf_counter()
    marks = []
    ce.build_fastvithd_mlpackage(
        tower, cfg, dest,
        progress=lambda f, m: marks.append((time.perf_counter() - t0, f, m)))
    build_s = time.perf_counter() - t0
    for t, f, m in marks:
        print(f"  {t:7.1f} s  {f:4.2f}  {m}")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"build: {build_s:.1f} s, package {size / 1e6:.1f} MB, peak RSS {_peak_rss_gb():.2f} GB")
    print(ce.check_mlpackage(dest, expected_width=3072))

    if args.verify:
        small = np.random.default_rng(1).random((2, 3, 256, 256), dtype=np.float32)
        t = time.perf_counter()
        _, f, _ = tower(mx.array(small.transpose(0, 2, 3, 1)))
        f = np.array(f).reshape(2, 16, -1)
        print(f"MLX tower at 256 px (batch 2): {time.perf_counter() - t:.1f} s; features max "
              f"{np.abs(f).max():.3g}, spread across images {np.abs(f[0] - f[1]).max():.3g}")
        t = time.perf_counter()
        g = ce.evaluate_graph_numpy(tower, cfg, small)
        print(f"numpy graph at 256 px: {time.perf_counter() - t:.1f} s; vs MLX "
              f"max|d|/max|f| = {np.abs(g - f).max() / np.abs(f).max():.2e}")
        x = np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32)
        t = time.perf_counter()
        g = ce.evaluate_graph_numpy(tower, cfg, x)
        print(f"numpy graph at 1024 px: {time.perf_counter() - t:.1f} s, {g.shape}")
        t = time.perf_counter()
        y = ce.evaluate_mlpackage_numpy(dest, x)
        print(f"numpy interpretation of the saved package: {time.perf_counter() - t:.1f} s")
        print(f"package vs graph: max|d|/max|g| = {np.abs(y - g).max() / np.abs(g).max():.2e}")
        print(f"peak RSS {_peak_rss_gb():.2f} GB")
    if args.out is None:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
