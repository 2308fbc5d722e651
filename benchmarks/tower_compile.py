"""The frozen Qwen-VL tower: mlx-vlm's own call (`get_input_embeddings`: the pixels cast to the
tower's dtype, the tower uncompiled), ours uncompiled and ours compiled per group signature
(families/qwen_vl.py), on groups of same-size pictures: median seconds per group after the first,
the dtype of the features, and the largest difference from mlx-vlm's features, in float32 and
bfloat16 (the tower's weights; the pixels come as the processor gives them, float32).

    python benchmarks/tower_compile.py --family qwen2_vl --image-size 448 --groups 12 --group 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import mlx.core as mx
import numpy as np

from finetune_app.core.families.qwen_vl import QwenVL, signature
from finetune_app.core.models import load_base
from finetune_app.testing.tiny_models import cached_tiny_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"))
    ap.add_argument("--model", help="a model folder (default: the tiny model of the family)")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--group", type=int, default=4)
    args = ap.parse_args()
    base = load_base(args.model or cached_tiny_model(args.family))
    fam = QwenVL(base)
    tower = base.model.vision_tower
    patch = tower.patch_embed.patch_size
    side = args.image_size // patch
    grids = np.array([[1, side, side]] * args.group)
    rows = int(grids.prod(1).sum())
    width = 3 * tower.patch_embed.temporal_patch_size * patch * patch
    rng = np.random.default_rng(0)
    groups = [rng.standard_normal((rows, width)).astype(np.float32) for _ in range(args.groups)]
    out = {"family": args.family, "image_size": args.image_size, "group": args.group, "groups": args.groups}
    for dtype in (mx.float32, mx.bfloat16):
        base.model.vision_tower.set_dtype(dtype)
        fam.compiled_towers.clear()
        def library(px, dtype=dtype):  # mlx-vlm's get_input_embeddings: the pixels in the tower's dtype
            kw = {} if fam.deepstack else {"output_hidden_states": False}
            out = tower(mx.array(px).astype(dtype), mx.array(grids), **kw)
            return out if isinstance(out, tuple) else (out,)

        uncompiled = lambda px: fam.tower_features(base.model, mx.array(px), mx.array(grids))  # noqa: E731
        compiled = lambda px: fam._compiled_tower(signature(grids), grids)(mx.array(px))  # noqa: E731
        name = str(dtype).split(".")[-1]
        calls = (("library", library), ("uncompiled", uncompiled), ("compiled", compiled))
        for label, call in calls:
            times = []
            for px in groups:
                t = time.perf_counter()
                mx.eval(call(px)[0])
                times.append(time.perf_counter() - t)
            out[f"{name}_{label}_first_s"] = round(times[0], 4)
            out[f"{name}_{label}_median_s"] = round(statistics.median(times[1:]), 4)
        ref = library(groups[0])[0]
        for label, call in calls[1:]:
            got = call(groups[0])[0]
            out[f"{name}_{label}_features"] = str(got.dtype).split(".")[-1]
            out[f"{name}_{label}_max_abs_diff"] = float(mx.abs(got.astype(mx.float32) - ref.astype(mx.float32)).max())
    print("TOWER " + json.dumps(out))


if __name__ == "__main__":
    main()
