"""Is a VLM's processor the same with torch hidden from transformers as with it? (#16 vlmtorch, torchhide)

    python benchmarks/processor_torch_check.py [--families qwen2_vl,llava,...] [--work DIR]

`finetune-app train` hides torch from transformers for the VLM types in
core.families.SAME_PROCESSOR_WITHOUT_TORCH (transformers_without_torch.serves_the_same: the types
served through transformers' PIL processors only where transformers takes those files as torch-free,
not on 5.17). This builds each tiny model (finetune_app.testing.tiny_models) and, in two fresh
processes (torch as installed; torch hidden by `transformers_without_torch.hide()` for every
family), builds its processor as `mlx_vlm.load` does and runs its image processor on odd-sized RGB,
RGBA, grey, palette, tiny and large pictures (raw, and as core.data.images.to_rgb gives them). It
prints, per family, the outer processor and image processor classes (both, where they differ),
whether the pixel arrays are bit-identical, a load that fails (FAILED), and whether a training run
keeps torch for the type with this transformers. It exits 1 if any type a training run hides torch
for differs or fails (a type kept with torch is shown, not counted). Meaningful only where torch
(and torchvision) is importable: the GPU host, or PYTHONPATH with a folder that has them (put the
repository first there: the benchmarks folder, not the repository, is the script's path).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def pictures():
    rng = np.random.default_rng(0)
    def noise(w, h, c):
        base = np.linspace(0, 255, w * h * c).reshape(h, w, c) if c > 1 else np.linspace(0, 255, w * h).reshape(h, w)
        return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    yield "odd_rgb_333x217", Image.fromarray(noise(333, 217, 3), "RGB")
    yield "rgba_200x150", Image.fromarray(noise(200, 150, 4), "RGBA")
    yield "grey_97x311", Image.fromarray(noise(97, 311, 1), "L")
    yield "wide_1024x300", Image.fromarray(noise(1024, 300, 3), "RGB")
    yield "big_1001x777", Image.fromarray(noise(1001, 777, 3), "RGB")
    yield "small_31x45", Image.fromarray(noise(31, 45, 3), "RGB")
    p = Image.fromarray(noise(120, 90, 3), "RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
    yield "palette_120x90", p


def call(ip, im):
    errors = []
    for how in ("images_np", "images", "positional", "preprocess", "with_text"):
        try:
            if how == "images_np":
                r = ip(images=[im], return_tensors="np")
            elif how == "images":
                r = ip(images=[im])
            elif how == "positional":
                r = ip([im])
            elif how == "preprocess":
                r = ip.preprocess([im])
            else:  # a processor that takes the prompt too (DeepSeek-VL2)
                r = ip(text="<image>\nDescribe the picture.", images=[im])
            return how, r
        except Exception as e:  # noqa: BLE001
            errors.append(f"{how}: {type(e).__name__}: {str(e)[:120]}")
    raise RuntimeError("; ".join(errors))


def arrays(r, prefix=""):
    items = r.items() if hasattr(r, "items") else [("out", r)]
    res = {}
    for k, v in items:
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                res.update(arrays({f"{k}.{i}": x}, prefix))
            continue
        try:
            a = np.asarray(v.float().numpy() if hasattr(v, "numpy") and hasattr(v, "float") else v)
        except Exception:  # noqa: BLE001
            a = np.asarray(v)
        if a.dtype == object:
            continue
        res[prefix + k] = a
    return res


def _one_mode(mode: str, models: Path, out: Path) -> None:
    """(child) Every family's processor classes and pixel arrays, written to OUT."""
    if mode == "hidden":
        from finetune_app.core.patches import transformers_without_torch

        transformers_without_torch.hide()
    import numpy as np
    from mlx_vlm.utils import load_config, load_image_processor, load_processor

    from finetune_app.core.data.images import to_rgb

    found = {}
    for folder in sorted(p for p in models.iterdir() if p.is_dir()):
        try:
            image_processor = load_image_processor(folder)  # (as mlx_vlm.load: the module first, its processor patch)
            processor = load_processor(folder, True, eos_token_ids=load_config(folder).get("eos_token_id"))
        except Exception as e:  # noqa: BLE001  (a processor that cannot load here: a difference, shown)
            np.savez(out / f"{folder.name}.npz")
            found[folder.name] = {"processor": f"FAILED {type(e).__name__}: {str(e)[:300]}",
                                  "image_processor": "FAILED", "errors": {}}
            continue
        ip = image_processor or getattr(processor, "image_processor", None) or processor
        info = {"processor": f"{type(processor).__module__}.{type(processor).__qualname__}",
                "image_processor": f"{type(ip).__module__}.{type(ip).__qualname__}", "errors": {}}
        res = {}
        for name, im in pictures():
            for conv, pic in (("ours", to_rgb(im)), ("raw", im)):
                try:
                    res.update(arrays(call(ip, pic)[1], f"{name}|{conv}|"))
                except Exception as e:  # noqa: BLE001  (e.g. a processor that needs text too)
                    info["errors"][f"{name}|{conv}"] = str(e)[:200]
        np.savez(out / f"{folder.name}.npz", **res)
        found[folder.name] = info
    (out / "classes.json").write_text(json.dumps({"families": found, "torch": "torch" in sys.modules,
                                                  "torchvision": "torchvision" in sys.modules}))


def _hidden_by_training(models: Path) -> dict[str, bool]:
    """Per family: whether `finetune-app train` hides torch for it with this transformers."""
    from finetune_app.core.patches.transformers_without_torch import serves_the_same

    return {p.name: serves_the_same("vlm", json.loads((p / "config.json").read_text()).get("model_type", ""))
            for p in models.iterdir() if p.is_dir()}


def _compare(a: Path, b: Path, hidden_by_training: dict[str, bool]) -> bool:
    import numpy as np
    import transformers

    ca, cb = (json.loads((d / "classes.json").read_text()) for d in (a, b))
    print(f"transformers {transformers.__version__}; torch imported: as installed {ca['torch']} "
          f"(torchvision {ca['torchvision']}), hidden {cb['torch']}")
    same_all = True
    for fam, ia in sorted(ca["families"].items()):
        ib = cb["families"][fam]
        za, zb = np.load(a / f"{fam}.npz"), np.load(b / f"{fam}.npz")
        differ = [k for k in sorted(set(za.files) | set(zb.files)) if k not in za.files or k not in zb.files
                  or za[k].dtype != zb[k].dtype or not np.array_equal(za[k], zb[k])]
        compared = len(za.files) > 0 and len(zb.files) > 0  # (every call refused: nothing shown, not SAME)
        same = (compared and ia["processor"] == ib["processor"] and ia["image_processor"] == ib["image_processor"]
                and not differ)
        hides = hidden_by_training.get(fam, True)
        same_all &= same or not hides  # (a type training leaves torch for may differ: it is not hidden)
        failed = ia["image_processor"] == "FAILED" or ib["image_processor"] == "FAILED"
        verdict = "SAME" if same else "FAILED" if failed else "DIFFERENT" if compared else "UNCHECKED"
        print(f"{fam:15s} {verdict}  {len(za.files)} arrays, {len(differ)} differ {differ[:3]}; "
              f"{len(ia['errors'])} calls refused" + ("" if hides else "; training keeps torch for it here"))
        for what in ("processor", "image_processor"):
            shown = ia[what] if ia[what] == ib[what] else f"{ia[what]}  vs hidden  {ib[what]}"
            print(f"{'':17s}{what}: {shown}")
    return same_all


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="", help="comma-separated tiny families (default: every tiny VLM family)")
    p.add_argument("--work", default=None, help="folder for the models and outputs (default: a temporary one)")
    p.add_argument("--child", nargs=3, metavar=("MODE", "MODELS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _one_mode(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    from finetune_app.testing.tiny_models import VLM_FAMILIES, build_tiny_model

    work = Path(args.work or tempfile.mkdtemp(prefix="processor-torch-"))
    models = work / "models"
    for fam in [f for f in args.families.split(",") if f] or sorted(VLM_FAMILIES):
        build_tiny_model(fam, models / fam, seed=0, overwrite=False)
    for mode in ("installed", "hidden"):
        t = time.perf_counter()
        (work / mode).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "--child", mode, str(models), str(work / mode)], check=True)
        print(f"{mode}: {time.perf_counter() - t:.1f} s")
    sys.exit(0 if _compare(work / "installed", work / "hidden", _hidden_by_training(models)) else 1)


if __name__ == "__main__":
    main()
