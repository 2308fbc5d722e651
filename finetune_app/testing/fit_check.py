"""The memory estimate (core/estimates.py) against a measured run: what the form and `data check`
predict vs `mx.get_peak_memory()` of a real training run, for the tests (tiny models, CPU) and the
benchmark harness (real-sized models, GPU; the issue wants them within 15% there).

    from finetune_app.testing.fit_check import predicted_vs_measured
    print(predicted_vs_measured(model_dir, data_dir, batch_size=4, iters=5))

Run it in a fresh process: the measured peak is MLX's since the process started (loading and
preparing included), counted as the harness counts every tool's; arrays another caller still holds
when it starts are subtracted (in a test process, earlier tests' leftovers).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def predicted_vs_measured(model: str | Path, data: str | Path, *, output: str | Path | None = None,
                          **settings) -> dict:
    """Train `settings` (TrainConfig fields; default one epoch) and return the predicted and
    measured peaks in GB and their ratio. The prediction uses the data's own longest padded row and
    supervised share, as the form does once it has read the dataset."""
    import mlx.core as mx

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.models import describe
    from finetune_app.core.training.batch import padded_length
    from finetune_app.core.training.trainer import Trainer

    held = mx.get_active_memory()  # arrays alive before this run (none in a fresh process) are not its own
    out = Path(output or tempfile.mkdtemp(prefix="fit-check-")) / "run"
    base_settings = dict(epochs=1, iters=None, sample_count=0, steps_per_eval=10**6, save_every=10**6, valid_fraction=0.0)
    cfg = TrainConfig(model=str(model), data=str(data), output=str(out), **{**base_settings, **settings})
    trainer = Trainer(cfg)
    trainer.run()
    measured = mx.get_peak_memory() - held
    info = describe(trainer.base)
    train = trainer.data.train
    seq = padded_length(max(e.model_length for e in train))
    supervised = sum(e.n_targets for e in train) / max(1, sum(e.model_length for e in train))
    images = None
    features = getattr(trainer.family, "features", None)
    if features:  # a VLM: its largest batch's pictures (first epoch: the tower ran) and the cached features
        from finetune_app.core import estimates

        merge = (trainer.base.config.get("vision_config") or {}).get("spatial_merge_size", 2) ** 2
        rows = sorted((sum(features[k].shape[0] for k in e.feature_keys) for e in train), reverse=True)
        patches = tuple(r * merge for r in rows[:cfg.batch_size])
        width = max((f.shape[-1] for f in features.values()), default=0)  # (FastVLM stores before the projector)
        images = estimates.ImageLoad(patches=patches, cached=sum(f.shape[0] for f in features.values()), tower=True,
                                     cached_width=width)
    predicted = planner_gb(cfg, info, trainer.base.config, seq_len=seq, supervised=supervised, images=images)
    return {"model": str(model), "batch_size": cfg.batch_size, "seq_len": seq, "supervised_share": round(supervised, 3),
            "predicted_gb": round(predicted, 4), "measured_gb": round(measured / 1e9, 4),
            "ratio": round(predicted * 1e9 / measured, 3) if measured else None}


def planner_gb(cfg, info, config: dict, *, seq_len: int, supervised: float, images=None) -> float:
    """The planner's MLX peak (GB) for `cfg` on a model (`describe()`'s info, its config.json):
    `run_memory_gb(overhead=False)`, the call the form and `data check` make, without the process
    overhead (MLX's peak is what `mx.get_peak_memory()` measures)."""
    from finetune_app.core import estimates

    return estimates.run_memory_gb(cfg, parameters=info.parameters, dtype=info.dtype, quantization=info.quantization,
                                   sizes=estimates.model_sizes(config), seq_len=seq_len, supervised=supervised,
                                   images=images, overhead=False)


if __name__ == "__main__":  # python -m finetune_app.testing.fit_check MODEL DATA [batch_size]
    import sys

    print(json.dumps(predicted_vs_measured(sys.argv[1], sys.argv[2],
                                           batch_size=int(sys.argv[3]) if len(sys.argv) > 3 else 4)))
