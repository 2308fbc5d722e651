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
