"""Synthetic preference tasks (tests, benchmarks) and held-out preference accuracy.

- Shapes (VLMs): the demo's centred coloured shapes; the caption naming the right colour is
  chosen over one naming a wrong colour (the same shape word), so only looking at the image can
  rank the pair.
- Format (text): "Write the word W." with the word in square brackets chosen over the same word
  in another wrapping (parentheses, braces, angle brackets, quotes: one per row), so the
  preference is a format and held-out rows have words never seen in training.
Both are written in mlx-vlm's `--data DIR` layout (`train.jsonl` / `valid.jsonl`) as
`{"prompt", "chosen", "rejected"}` rows (+ `"images"`).

`preference_accuracy`: the fraction of pairs whose chosen answer has the higher log-probability
under the model as it is (adapter on), through the engine's own pair batches.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from finetune_app.core.atomic import staged_dir
from finetune_app.core.data.demo import CLASSES, COLOURS, SHAPES_PROMPT, _draw

WRAPS = ("({})", "{{{}}}", "<{}>", "'{}'")


def make_shapes_preferences(dest: str | Path, n_train: int = 96, n_valid: int = 48, size: int = 64,
                            seed: int = 0) -> Path:
    rng = random.Random(seed)
    dest = Path(dest)
    with staged_dir(dest) as stage:
        (stage / "images").mkdir()
        k = 0
        for split, n in (("train", n_train), ("valid", n_valid)):
            classes = [CLASSES[i % len(CLASSES)] for i in range(n)]
            rng.shuffle(classes)
            lines = []
            for colour, shape in classes:
                name = f"images/{k:05d}.png"
                _draw(colour, shape, size, rng).save(stage / name, optimize=False)
                wrong = rng.choice([c for c in COLOURS if c != colour])
                lines.append(json.dumps({"images": [name], "prompt": SHAPES_PROMPT, "chosen": f"a {colour} {shape}",
                                         "rejected": f"a {wrong} {shape}"}) + "\n")
                k += 1
            (stage / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    return dest


def _words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghiklmnoprstuw"
    seen: set[str] = set()
    while len(seen) < n:
        seen.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 6))))
    return sorted(seen)


def make_format_preferences(dest: str | Path, n_train: int = 96, n_valid: int = 48, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = _words(rng, n_train + n_valid)
    rng.shuffle(words)
    dest = Path(dest)
    with staged_dir(dest) as stage:
        for split, chunk in (("train", words[:n_train]), ("valid", words[n_train:])):
            lines = [json.dumps({"prompt": f"Write the word {w}.", "chosen": f"[{w}]",
                                 "rejected": rng.choice(WRAPS).format(w)}) + "\n" for w in chunk]
            (stage / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    return dest


def preference_accuracy(trainer, examples=None, batch_size: int = 8) -> float:
    """Held-out preference accuracy of the trainer's model: log p(chosen) > log p(rejected)."""
    import mlx.core as mx
    import numpy as np

    from finetune_app.core.training import pairs
    from finetune_app.core.training.objectives.logps import sequence_logps

    examples = trainer.data.valid if examples is None else examples
    right = 0
    for start in range(0, len(examples), batch_size):
        chunk = [trainer._materialise(e) for e in examples[start:start + batch_size]]
        batch = pairs.plan(trainer.family, chunk)
        lp, _ = sequence_logps(trainer.base.model, trainer.family, trainer.step.inputs(batch))
        lp = np.asarray(mx.stop_gradient(lp))
        right += int((lp[:len(chunk)] > lp[len(chunk):]).sum())
    return right / max(1, len(examples))


def runtime_preference_accuracy(model_dir, adapter, data_dir, split: str = "valid") -> float:
    """Held-out preference accuracy measured only through mlx-vlm's own path (`mlx_vlm.load(base,
    adapter_path)`, `apply_chat_template(..., num_images=1)`, `prepare_inputs`, one forward per
    answer): whichever trainer wrote the adapter, scored the same way. Shapes task rows."""
    import mlx.core as mx
    import numpy as np
    from PIL import Image
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load, prepare_inputs

    data_dir = Path(data_dir)
    model, processor = load(str(model_dir), adapter_path=str(adapter) if adapter else None)
    model.eval()
    config = json.loads((Path(model_dir) / "config.json").read_text())
    image_token = config.get("image_token_index", config.get("image_token_id"))
    n_answer = {}
    rows = [json.loads(line) for line in (data_dir / f"{split}.jsonl").read_text().splitlines()]
    right = 0
    for row in rows:
        image = Image.open(data_dir / row["images"][0]).convert("RGB")
        scores = []
        for side in ("chosen", "rejected"):
            prompt = apply_chat_template(processor, config, [{"role": "user", "content": row["prompt"]}],
                                         add_generation_prompt=True, num_images=1)
            full = apply_chat_template(processor, config, [{"role": "user", "content": row["prompt"]},
                                                           {"role": "assistant", "content": row[side]}],
                                       add_generation_prompt=False, num_images=1)
            inputs = prepare_inputs(processor, images=[image], prompts=[full], image_token_index=image_token,
                                    add_special_tokens=False, padding=False)
            start = n_answer.setdefault(prompt, prepare_inputs(processor, images=[image], prompts=[prompt],
                                                               image_token_index=image_token, add_special_tokens=False,
                                                               padding=False)["input_ids"].size)
            ids = np.array(inputs["input_ids"]).reshape(-1)
            kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")
                      and isinstance(v, mx.array)}
            logits = model(mx.array(ids[None]), inputs["pixel_values"], inputs["attention_mask"], **kwargs).logits[0]
            lp = logits.astype(mx.float32) - mx.logsumexp(logits.astype(mx.float32), axis=-1, keepdims=True)
            lp = np.asarray(lp)
            scores.append(sum(lp[t - 1, ids[t]] for t in range(start, len(ids))))
        right += scores[0] > scores[1]
    return right / max(1, len(rows))
