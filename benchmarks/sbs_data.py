"""Realistic benchmark data for side_by_side.py, seeded: Alpaca-shaped text rows and captioned images.

Text: Alpaca's shape (instruction median ~12 words, 40% with an input of median ~15 words, answers
log-normal with median ~45 words and a long tail, capped at 400), English words in sentences, so the
tokens per word are a real tokenizer's (~1.3). VLM: generated pictures of 1-3 coloured shapes on a
tinted background, each with a multi-sentence caption that describes it (30-60 tokens under the
model's tokenizer), not a 5-token answer. Both in the `{"messages": [...]}` layout every tool reads
(train.jsonl / valid.jsonl; "images" paths relative to the folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = ("time year people way day thing world life hand part child eye place work week case point number "
         "group problem fact water light river stone paper window garden music city plant energy system "
         "question answer reason method result model data process change market story history example "
         "simple important different large small early recent common possible clear strong careful useful "
         "explain describe compare write list give make find show keep build choose improve measure share").split()
GLUE = "the of and to in is that for it as with on by this are from at or an which have can will".split()
COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40),
           "purple": (130, 50, 160), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245)}
TINTS = {"pale grey": (215, 215, 215), "light blue": (190, 215, 240), "cream": (245, 235, 205), "pale green": (200, 230, 200)}
SHAPES = ("circle", "square", "triangle")


def _sentence(rng, n: int) -> str:
    words = [rng.choice(GLUE) if rng.random() < 0.45 else rng.choice(WORDS) for _ in range(max(2, n))]
    return " ".join(words).capitalize() + "."


def _text(rng, n_words: int) -> str:
    out, left = [], n_words
    while left > 0:
        k = min(left, int(rng.integers(6, 20)))
        out.append(_sentence(rng, k))
        left -= k
    return " ".join(out)


def alpaca_lengths(rng, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words of instruction, input (0 = none) and answer for n rows."""
    instr = np.maximum(3, rng.lognormal(np.log(12), 0.5, n)).astype(int)
    inp = np.where(rng.random(n) < 0.4, np.maximum(2, rng.lognormal(np.log(15), 0.8, n)), 0).astype(int)
    ans = np.clip(rng.lognormal(np.log(45), 0.9, n), 2, 400).astype(int)
    return instr, inp, ans


def sample_text(n_words: int = 400, seed: int = 1) -> str:
    """Text like the rows', for measuring a tokenizer's tokens per word."""
    return _text(np.random.default_rng(seed), n_words)


def write_text(dest: Path, n_train: int, n_valid: int, seed: int = 0, tokens_per_word: float = 1.3) -> Path:
    """Word counts are scaled by 1.3 / tokens_per_word (the model's tokenizer on this text), so rows
    have Alpaca's token lengths also under a benchmark model's small tokenizer."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = 1.3 / tokens_per_word
    for split, n in (("train", n_train), ("valid", n_valid)):
        instr, inp, ans = (np.maximum(np.sign(x), (x * scale).astype(int)) for x in alpaca_lengths(rng, n))
        with open(dest / f"{split}.jsonl", "w") as f:
            for i in range(n):
                user = _text(rng, instr[i]) + (("\n\n" + _text(rng, inp[i])) if inp[i] else "")
                f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                                 {"role": "assistant", "content": _text(rng, ans[i])}]}) + "\n")
    return dest


def _picture(rng, size: int, tokens_per_word: float = 1.3):
    """One image and the caption that describes it."""
    from PIL import Image, ImageDraw

    tint = list(TINTS)[rng.integers(len(TINTS))]
    img = Image.new("RGB", (size, size), TINTS[tint])
    draw = ImageDraw.Draw(img)
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        shape, colour = SHAPES[rng.integers(3)], list(COLOURS)[rng.integers(len(COLOURS))]
        r = int(size * rng.uniform(0.08, 0.2))
        cx, cy = (int(size * rng.uniform(0.2, 0.8)) for _ in range(2))
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        where = ("upper" if cy < size / 2 else "lower") + " " + ("left" if cx < size / 2 else "right")
        big = "large" if r > size * 0.14 else "small"
        parts.append(f"A {big} {colour} {shape} sits in the {where} part of the picture.")
    caption = (f"The picture shows {len(parts)} simple shape{'s' if len(parts) > 1 else ''} on a {tint} background. "
               + " ".join(parts))
    words = max(4, round(rng.uniform(30, 60) / tokens_per_word))  # 30-60 tokens under this tokenizer
    tails = ["The edges are sharp and the colours are flat, with no shading or texture.",
             "Nothing else appears in the frame, and the shapes do not overlap much.",
             "The composition is plain, like a diagram drawn for a children's book."]
    while len(caption.split()) < words:  # a describing tail
        caption += " " + tails[rng.integers(len(tails))]
    return img, " ".join(caption.split()[:words]).rstrip(".,") + "."


def write_vlm(dest: Path, n_train: int, n_valid: int, size: int, seed: int = 0, tokens_per_word: float = 1.3) -> Path:
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        with open(dest / f"{split}.jsonl", "w") as f:
            for i in range(n):
                img, caption = _picture(rng, size, tokens_per_word)
                name = f"images/{split}-{i:05d}.png"
                img.save(dest / name)
                f.write(json.dumps({"images": [name], "messages": [
                    {"role": "user", "content": "Describe this picture in a few sentences."},
                    {"role": "assistant", "content": caption}]}) + "\n")
    return dest
