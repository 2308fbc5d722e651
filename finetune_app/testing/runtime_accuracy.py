"""Held-out accuracy on the demo shapes task measured ONLY through mlx-vlm's standard path
(test and benchmark support): `mlx_vlm.load(base, adapter_path)` +
`apply_chat_template(processor, config, prompt, num_images=1)` + greedy `mlx_vlm.generate`,
no code of this project in between; that is what users of the adapter get."""

from __future__ import annotations

import json
from pathlib import Path


def mlx_vlm_shapes_accuracy(model_dir, adapter_dir, data_dir, *, max_tokens: int = 8) -> tuple[dict, list[str]]:
    """Score `valid.jsonl` of a `make_shapes_dataset(..., jsonl=True)` folder."""
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template

    from finetune_app.core.scoring import shapes_accuracy

    data_dir = Path(data_dir)
    model, processor = load(str(model_dir), adapter_path=str(adapter_dir))
    outputs, refs = [], []
    for line in (data_dir / "valid.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        prompt = apply_chat_template(processor, model.config, row["messages"][0]["content"], num_images=1)
        out = generate(model, processor, prompt, image=[str(data_dir / row["images"][0])],
                       max_tokens=max_tokens, temperature=0.0, verbose=False)
        outputs.append(getattr(out, "text", out))
        refs.append(row["messages"][-1]["content"])
    return shapes_accuracy(outputs, refs), outputs
