"""Agreement scores between generated and reference texts, for judging whether a fine-tune helped.

Simple and transparent on purpose: exact match, unigram/bigram overlap (BLEU-style precision with a
brevity penalty) and ROUGE-L F1, plus the demo's colour/shape accuracy."""

from __future__ import annotations

import math
import re
from collections import Counter

DEMO_COLOURS = ("red", "green", "blue", "yellow")
DEMO_SHAPES = ("circle", "square", "triangle")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def exact_match(output: str, reference: str) -> float:
    return float(" ".join(words(output)) == " ".join(words(reference)))


def bleu(output: str, reference: str, max_n: int = 2) -> float:
    out, ref = words(output), words(reference)
    if not out or not ref:
        return 0.0
    logs = []
    for n in range(1, max_n + 1):
        o = Counter(tuple(out[i:i + n]) for i in range(len(out) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        total = sum(o.values())
        if total == 0:
            break
        overlap = sum(min(c, r[g]) for g, c in o.items())
        logs.append(math.log((overlap + 1e-9) / total) if overlap else math.log(1e-9))
    if not logs:
        return 0.0
    brevity = 1.0 if len(out) > len(ref) else math.exp(1 - len(ref) / len(out))
    return brevity * math.exp(sum(logs) / len(logs))


def rouge_l(output: str, reference: str) -> float:
    out, ref = words(output), words(reference)
    if not out or not ref:
        return 0.0
    prev = [0] * (len(ref) + 1)
    for a in out:
        cur = [0]
        for j, b in enumerate(ref):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(out), lcs / len(ref)
    return 2 * p * r / (p + r)


def first_of(text: str, vocabulary) -> str | None:
    for w in words(text):
        if w in vocabulary:
            return w
    return None


def shapes_accuracy(outputs: list[str], references: list[str]) -> dict:
    """Demo task: does the caption name the right colour, and the right colour and shape?"""
    colour = both = 0
    for out, ref in zip(outputs, references):
        c_ok = first_of(out, DEMO_COLOURS) == first_of(ref, DEMO_COLOURS)
        s_ok = first_of(out, DEMO_SHAPES) == first_of(ref, DEMO_SHAPES)
        colour += c_ok
        both += c_ok and s_ok
    n = max(1, len(outputs))
    return {"colour": colour / n, "colour_and_shape": both / n, "n": len(outputs)}


def agreement(outputs: list[str], references: list[str]) -> dict:
    n = max(1, len(outputs))
    return {"exact_match": sum(map(exact_match, outputs, references)) / n,
            "bleu": sum(map(bleu, outputs, references)) / n,
            "rouge_l": sum(map(rouge_l, outputs, references)) / n, "n": len(outputs)}
