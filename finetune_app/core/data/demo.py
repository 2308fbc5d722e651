"""Demo datasets that a tiny model can visibly learn, generated offline and deterministically.

Shapes: "a {colour} {shape}" captions of a CENTRED shape of random size with slight colour jitter
on a plain light background. Centred matters: measured with tiny random vision towers, the shape
at a random position is not learnable (the random tower loses shape under translation; colour+shape
stays at 38-63%), while centred shapes reach 97-100% (docs: shared/reference/mlx-findings.md).
Instructions: Alpaca rows with one deterministic answer each (capitals, small sums and
differences in words, successors).
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from finetune_app.core.atomic import staged_dir

COLOURS = {"red": (214, 48, 49), "green": (46, 160, 67), "blue": (40, 90, 220),
           "yellow": (235, 195, 20)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [(c, s) for c in COLOURS for s in SHAPES]


def _draw(colour: str, shape: str, size: int, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randint(232, 248) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    fill = tuple(max(0, min(255, v + rng.randint(-18, 18))) for v in COLOURS[colour])
    half = rng.uniform(0.22, 0.40) * size  # shape radius: 44-80% of the image across
    c = (size - 1) / 2
    draw = ImageDraw.Draw(im)
    if shape == "circle":
        draw.ellipse([c - half, c - half, c + half, c + half], fill=fill)
    elif shape == "square":
        s = half * 0.9
        draw.rectangle([c - s, c - s, c + s, c + s], fill=fill)
    else:
        dy = -half / 6  # put the centroid (not the bounding box) at the centre
        draw.polygon([(c, c - half + dy), (c + half * 0.95, c + half * 0.75 + dy),
                      (c - half * 0.95, c + half * 0.75 + dy)], fill=fill)
    return im


SHAPES_PROMPT = "Describe the image."


def make_shapes_dataset(dest: str | Path, n_train: int = 300, n_valid: int = 60, size: int = 64,
                        seed: int = 0, *, overwrite: bool = False, jsonl: bool = False) -> Path:
    """Write `dest/images/*.png` + `dest/captions.csv` (filename, caption, split).

    The `split` column marks the validation rows, which open_dataset() reads as the dataset's own
    validation split. Classes are balanced within each split. Deterministic for a given seed.
    With `jsonl`, write mlx-vlm's `--data DIR` layout instead: `train.jsonl` / `valid.jsonl` rows
    `{"images": ["images/N.png"], "messages": [user SHAPES_PROMPT, assistant caption]}` (the same
    images and captions)."""
    rng = random.Random(seed)
    dest = Path(dest)
    with staged_dir(dest, overwrite=overwrite) as stage:
        (stage / "images").mkdir()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["filename", "caption", "split"])
        k = 0
        rows: dict[str, list[str]] = {"train": [], "valid": []}
        for split_name, n in (("train", n_train), ("valid", n_valid)):
            classes = [CLASSES[i % len(CLASSES)] for i in range(n)]
            rng.shuffle(classes)
            for colour, shape in classes:
                name = f"{k:05d}.png"
                _draw(colour, shape, size, rng).save(stage / "images" / name, optimize=False)
                writer.writerow([name, f"a {colour} {shape}", split_name])
                rows[split_name].append(json.dumps({"images": [f"images/{name}"], "messages": [
                    {"role": "user", "content": SHAPES_PROMPT},
                    {"role": "assistant", "content": f"a {colour} {shape}"}]}) + "\n")
                k += 1
        if jsonl:
            for split_name, lines in rows.items():
                (stage / f"{split_name}.jsonl").write_text("".join(lines), encoding="utf-8")
        else:
            (stage / "captions.csv").write_text(buf.getvalue(), encoding="utf-8")
    return dest


_CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Peru": "Lima", "Norway": "Oslo", "Sweden": "Stockholm",
    "Poland": "Warsaw", "Greece": "Athens", "Ireland": "Dublin", "Austria": "Vienna",
    "Chile": "Santiago", "Cuba": "Havana", "Finland": "Helsinki", "Hungary": "Budapest",
    "Russia": "Moscow", "China": "Beijing", "India": "New Delhi", "Mexico": "Mexico City",
}
_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()


def _instruction_pool() -> list[dict]:
    rows = []
    for country, city in _CAPITALS.items():
        rows.append({"instruction": f"What is the capital of {country}?", "input": "",
                     "output": f"{city}."})
        rows.append({"instruction": "Name the capital city of this country.", "input": country,
                     "output": f"{city}."})
    for a in range(11):
        for b in range(11):
            rows.append({"instruction": "Add the two numbers and answer in words.",
                         "input": f"{_NUMBERS[a]} and {_NUMBERS[b]}",
                         "output": f"{_NUMBERS[a + b]}."})
    for a in range(11):
        for b in range(a + 1):
            rows.append({"instruction": "Subtract the second number from the first and answer in "
                         "words.", "input": f"{_NUMBERS[a]} minus {_NUMBERS[b]}",
                         "output": f"{_NUMBERS[a - b]}."})
    for n in range(20):
        rows.append({"instruction": f"What number comes after {_NUMBERS[n]}?", "input": "",
                     "output": f"{_NUMBERS[n + 1]}."})
        rows.append({"instruction": f"What number comes before {_NUMBERS[n + 1]}?", "input": "",
                     "output": f"{_NUMBERS[n]}."})
    return rows


def make_instruction_dataset(dest: str | Path, n: int = 200, seed: int = 0, *,
                             n_valid: int | None = None, overwrite: bool = False) -> Path:
    """Write `dest/train.jsonl` and `dest/valid.jsonl` of distinct Alpaca rows (no duplicates).

    n_valid defaults to n // 10; n + n_valid can be at most 275 (the distinct rows there are)."""
    n_valid = max(1, n // 10) if n_valid is None else n_valid
    pool = _instruction_pool()
    if n + n_valid > len(pool):
        raise ValueError(f"at most {len(pool)} distinct instruction rows; asked for {n + n_valid}")
    random.Random(seed).shuffle(pool)
    dest = Path(dest)
    with staged_dir(dest, overwrite=overwrite) as stage:
        for name, rows in (("train", pool[:n]), ("valid", pool[n:n + n_valid])):
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            (stage / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return dest
