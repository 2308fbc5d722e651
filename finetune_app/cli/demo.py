"""`finetune-app demo`: the headless demo. Trains a tiny model on the bundled shapes task and
prints what it learned: held-out captions before and after, and the accuracy."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a tiny model on the demo shapes data and show what it learned (no display needed)")
    from finetune_app.testing import DEMO_FAMILY

    p.add_argument("--family", default=DEMO_FAMILY, help=f"tiny model family ({DEMO_FAMILY}, fastvlm, ...)")
    p.add_argument("--iters", type=int, default=None, help="training steps (default: the demo's own)")
    p.add_argument("--dir", default=None, help="working folder (default: a temporary folder)")
    p.set_defaults(func=run)


def held_out_captions(base, samples, encoder) -> list[str]:
    from finetune_app.core.generate import GenerationSettings, generate_for_sample

    settings = GenerationSettings(max_tokens=12)
    return [generate_for_sample(base, s, encoder.load_images(s), settings=settings, encoder=encoder) for s in samples]


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from finetune_app.cli.progress import ConsolePrinter
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.data import open_dataset, split
    from finetune_app.core.data.demo import make_shapes_dataset
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.models import load_base
    from finetune_app.core.scoring import shapes_accuracy
    from finetune_app.core.runner import start_run
    from finetune_app.testing.tiny_models import cached_tiny_model

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="finetune-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"Finetune demo: a tiny random-weight {args.family} model learns to caption coloured shapes.")
    print(f"Working folder: {work}")
    model_dir = cached_tiny_model(args.family)
    data_dir = work / "shapes"
    if not data_dir.exists():
        make_shapes_dataset(data_dir, n_train=300, n_valid=48, size=64, seed=0)
    dataset = open_dataset(data_dir)
    _, valid_idx = split(dataset)
    valid = [dataset.sample(i) for i in valid_idx]
    refs = [s.answer for s in valid]

    base = load_base(model_dir)
    encoder = Encoder(base)
    before = held_out_captions(base, valid, encoder)
    acc_before = shapes_accuracy(before, refs)

    cfg = TrainConfig(model=str(model_dir), data=str(data_dir), output=str(work / f"run-{int(time.time())}"),
                      iters=args.iters or 600, epochs=None, batch_size=4, learning_rate=1e-3, lora_rank=16,
                      lora_alpha=16.0, lr_schedule="cosine", steps_per_report=50, steps_per_eval=200,
                      save_every=200, sample_count=2)
    t0 = time.perf_counter()
    start_run(cfg, base=base, listeners=[ConsolePrinter(quiet=True)], record=False)  # a demo is no run to keep
    seconds = time.perf_counter() - t0
    after = held_out_captions(base, valid, encoder)
    acc_after = shapes_accuracy(after, refs)

    print("\nHeld-out images (never trained on):")
    print(f"  {'image':<24} {'reference':<20} {'before':<24} after")
    for s, b, a in list(zip(valid, before, after))[:8]:
        name = s.images[0].describe().rsplit("/", 1)[-1] if s.images else "-"
        print(f"  {name:<24} {s.answer:<20} {b[:22]!r:<24} {a!r}")
    print(f"\nColour right: {acc_before['colour']:.0%} before -> {acc_after['colour']:.0%} after; "
          f"colour and shape right: {acc_before['colour_and_shape']:.0%} -> {acc_after['colour_and_shape']:.0%} "
          f"({acc_after['n']} held-out images, {cfg.iters} steps, {seconds:.0f} s).")
    print(f"Adapter: {cfg.output} (load it with mlx_vlm.load('{model_dir}', adapter_path='{cfg.output}'))")
    return 0
