"""Agreement between generated and reference texts, with the libraries everyone cites.

BLEU and chrF come from sacreBLEU (corpus-level, default settings, with its signature string so a
number can be reproduced elsewhere); ROUGE-1/2/L from Google's `rouge-score` (F1, Porter stemming).
Exact match compares the stripped texts; normalised match compares them after SQuAD's answer
normalisation (lower case, no punctuation, no articles, single spaces). For caption and label
tasks, `label_slots` detects the label sets in the references themselves (the demo's colours and
shapes are one instance) and `label_accuracy` scores each slot.

Scales are the libraries' own: BLEU and chrF 0-100, ROUGE and matches 0-1.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# What evaluation during training can score (TrainConfig.eval_metrics): higher is better for each.
EVAL_METRICS = ("accuracy", "chrf", "rouge_l", "exact_match", "normalised_match", "bleu")


# ---- words and matches --------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation and articles removed, spaces squeezed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(output: str, reference: str) -> float:
    return float(output.strip() == reference.strip())


def normalised_match(output: str, reference: str) -> float:
    return float(normalise(output) == normalise(reference))


# ---- the libraries ------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def _bleu(effective_order: bool = False):
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=effective_order)


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def bleu(output: str, reference: str) -> float:
    """Sentence BLEU (sacreBLEU, effective order), 0-100: for one row; report corpus BLEU for a set."""
    return _bleu(effective_order=True).sentence_score(output, [reference]).score


def rouge(output: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one row (rouge-score, stemmed)."""
    scores = _rouge().score(reference, output)  # rouge-score takes (target, prediction)
    return {k: scores[k].fmeasure for k in ROUGE_TYPES}


def rouge_l(output: str, reference: str) -> float:
    return rouge(output, reference)["rougeL"]


def signatures() -> dict[str, str]:
    """sacreBLEU's signature strings of the corpus BLEU and chrF reported here (one reference
    per row; sacreBLEU fills in the reference count once a metric has scored something)."""
    from sacrebleu.metrics import BLEU, CHRF

    out = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        metric.corpus_score(["x"], [["x"]])
        out[name] = metric.get_signature().format()
    return out


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sacrebleu", "rouge-score", "mlx", "mlx-vlm", "mlx-lm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def row_scores(output: str, reference: str) -> dict[str, float]:
    """Every per-row score (what a row of a comparison shows)."""
    return {"exact_match": exact_match(output, reference), "normalised_match": normalised_match(output, reference),
            "bleu": bleu(output, reference), **{k if k != "rougeL" else "rouge_l": v for k, v in rouge(output, reference).items()}}


def corpus_stats(outputs: list[str], references: list[str]) -> dict:
    """Per-row sufficient statistics, so a metric can be recomputed on any resample of the rows
    (sacreBLEU's own paired bootstrap works this way)."""
    import numpy as np

    from finetune_app.core.patches.sacrebleu_stats import corpus_statistics

    b, c = _bleu(), _chrf()
    refs = [list(references)]
    rows = [rouge(o, r) for o, r in zip(outputs, references)]
    return {
        "bleu": np.asarray(corpus_statistics(b, list(outputs), refs), dtype=np.float64),
        "chrf": np.asarray(corpus_statistics(c, list(outputs), refs), dtype=np.float64),
        **{k: np.asarray([r[k] for r in rows]) for k in ROUGE_TYPES},
        "exact_match": np.asarray([exact_match(o, r) for o, r in zip(outputs, references)]),
        "normalised_match": np.asarray([normalised_match(o, r) for o, r in zip(outputs, references)]),
    }


def from_stats(name: str, stats) -> float:
    """The metric of a set of rows from their statistics (rows along the first axis)."""
    from finetune_app.core.patches.sacrebleu_stats import score_from_statistics

    if name == "bleu":
        return score_from_statistics(_bleu(), stats.sum(0).tolist()).score
    if name == "chrf":
        return score_from_statistics(_chrf(), stats.sum(0).tolist()).score
    return float(stats.mean()) if len(stats) else 0.0


def corpus_scores(outputs: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacreBLEU), mean ROUGE-1/2/L F1, exact and normalised match."""
    from sacrebleu import corpus_bleu, corpus_chrf

    if not outputs:
        return {"n": 0}
    stats = corpus_stats(outputs, references)
    out = {name: from_stats(name, s) for name, s in stats.items() if name not in ("bleu", "chrf")}
    out["bleu"] = corpus_bleu(list(outputs), [list(references)]).score
    out["chrf"] = corpus_chrf(list(outputs), [list(references)]).score
    out["n"] = len(outputs)
    return out


def metric_values(names, outputs: list[str], references: list[str], slots: list["LabelSlot"] | None = None) -> dict[str, float]:
    """The chosen EVAL_METRICS of a set of rows (evaluation during training). "accuracy" is the
    label accuracy over every detected slot (`accuracy/<slot>` each; nothing without slots)."""
    from sacrebleu import corpus_bleu, corpus_chrf

    out: dict[str, float] = {}
    n = len(outputs)
    for name in names:
        if name == "accuracy":
            slots = label_slots(references) if slots is None else slots
            if slots:
                acc = label_accuracy(outputs, references, slots)
                out["accuracy"] = acc["all"] if len(slots) > 1 else acc[slots[0].name]
                out.update({f"accuracy/{s.name}": acc[s.name] for s in slots} if len(slots) > 1 else {})
        elif name == "chrf":
            out["chrf"] = corpus_chrf(list(outputs), [list(references)]).score
        elif name == "bleu":
            out["bleu"] = corpus_bleu(list(outputs), [list(references)]).score
        elif name == "rouge_l":
            out["rouge_l"] = sum(rouge_l(o, r) for o, r in zip(outputs, references)) / n if n else 0.0
        elif name == "exact_match":
            out["exact_match"] = sum(map(exact_match, outputs, references)) / n if n else 0.0
        elif name == "normalised_match":
            out["normalised_match"] = sum(map(normalised_match, outputs, references)) / n if n else 0.0
        else:
            raise ValueError(f"unknown metric {name!r} (one of {', '.join(EVAL_METRICS)})")
    return out


def agreement(outputs: list[str], references: list[str]) -> dict:
    """The summary a comparison shows: exact/normalised match, corpus BLEU and chrF, ROUGE-L."""
    s = corpus_scores(outputs, references)
    if not outputs:
        return {"exact_match": 0.0, "normalised_match": 0.0, "bleu": 0.0, "chrf": 0.0, "rouge_l": 0.0, "n": 0}
    return {"exact_match": s["exact_match"], "normalised_match": s["normalised_match"], "bleu": s["bleu"],
            "chrf": s["chrf"], "rouge_l": s["rougeL"], "n": s["n"]}


# ---- label sets detected from the data ----------------------------------------------------------

# Names for a detected slot whose values all belong to one of these vocabularies.
KNOWN_VOCABULARIES = {
    "colour": {"red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white", "grey", "gray",
               "brown", "cyan", "magenta", "violet", "gold", "silver", "beige", "navy", "teal"},
    "shape": {"circle", "square", "triangle", "rectangle", "star", "hexagon", "pentagon", "oval", "ellipse",
              "diamond", "heart", "cross", "line", "dot", "cube", "sphere", "cone", "cylinder"},
    "number": {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
               *map(str, range(100))},
    "answer": {"yes", "no"},
}
MAX_LABELS = 30  # a slot with more distinct values than this is free text, not a label


@dataclass(frozen=True)
class LabelSlot:
    """One label set: a word position of a templated reference ("a {colour} {shape}"), or the
    whole reference when the references are a few short labels. `values` are normalised words
    (position slots) or normalised phrases (whole-reference labels)."""

    name: str
    values: tuple[str, ...]
    position: int | None = None  # None: the whole reference is the label

    def of(self, text: str) -> str | None:
        """The label a text names: the first of `values` it mentions (longest phrase first at a place)."""
        norm = " " + " ".join(words(text)) + " "
        best = None
        for v in self.values:
            at = norm.find(" " + v + " ")
            if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(v) > len(best[1]))):
                best = (at, v)
        return best[1] if best else None

    def to_dict(self) -> dict:
        return {"name": self.name, "values": list(self.values), "position": self.position}


def _slot_name(values: set[str], position: int | None, taken: set[str]) -> str:
    for name, vocab in KNOWN_VOCABULARIES.items():
        if values <= vocab and name not in taken:
            return name
    return "label" if position is None else f"word {position + 1}"


def label_slots(references: list[str]) -> list[LabelSlot]:
    """The label sets the references use, or [] for free text.

    Whole labels: at least two distinct, short (≤ 4 words) references that repeat (fewer distinct
    values than rows, at most MAX_LABELS). Templates: most references have the same number of
    words; a position whose word varies over 2..MAX_LABELS values (fewer than the rows), disjoint
    from the other varying positions, is a slot."""
    refs = [words(r) for r in references if r.strip()]
    n = len(refs)
    if n < 2:
        return []
    phrases = Counter(" ".join(r) for r in refs)
    if all(len(r) <= 4 for r in refs) and 2 <= len(phrases) <= min(MAX_LABELS, n - 1):
        positional = _positional_slots(refs)
        if positional:
            return positional
        return [LabelSlot(_slot_name(set(phrases), None, set()), tuple(sorted(phrases)), None)]
    return _positional_slots(refs)


def _positional_slots(refs: list[list[str]]) -> list[LabelSlot]:
    length, count = Counter(len(r) for r in refs).most_common(1)[0]
    if length == 0 or count < max(2, 0.8 * len(refs)):
        return []
    same = [r for r in refs if len(r) == length]
    columns = [set(r[i] for r in same) for i in range(length)]
    varying = [i for i, col in enumerate(columns) if 2 <= len(col) <= MAX_LABELS and len(col) < len(same)]
    if len(varying) != sum(1 for col in columns if len(col) >= 2):
        return []  # some position is free text: not a template
    slots, taken = [], set()
    for i in varying:
        if any(columns[i] & columns[j] for j in varying if j != i):
            return []  # the same word in two slots: cannot tell which slot an output names
        name = _slot_name(columns[i], None if length == 1 else i, taken)
        taken.add(name)
        slots.append(LabelSlot(name, tuple(sorted(columns[i])), i))
    return slots


def label_hits(outputs: list[str], references: list[str], slots: list[LabelSlot]) -> dict[str, list[float]]:
    """Per row and slot: 1.0 when the output names the reference's label; with several slots,
    "all" is 1.0 when every slot is right."""
    hits: dict[str, list[float]] = {s.name: [] for s in slots}
    if len(slots) > 1:
        hits["all"] = []
    for out, ref in zip(outputs, references):
        row = [s.of(out) is not None and s.of(out) == s.of(ref) for s in slots]
        for s, ok in zip(slots, row):
            hits[s.name].append(float(ok))
        if len(slots) > 1:
            hits["all"].append(float(all(row)))
    return hits


def label_accuracy(outputs: list[str], references: list[str], slots: list[LabelSlot] | None = None) -> dict:
    """Accuracy per detected label slot (and over all of them): {"colour": .75, "shape": .5, "all": .5, "n": 8}."""
    slots = label_slots(references) if slots is None else slots
    hits = label_hits(outputs, references, slots)
    out = {k: (sum(v) / len(v) if v else 0.0) for k, v in hits.items()}
    out["n"] = len(outputs)
    return out


# The demo's task ("a {colour} {shape}") as one instance of the above.
DEMO_COLOURS = ("red", "green", "blue", "yellow")
DEMO_SHAPES = ("circle", "square", "triangle")
DEMO_SLOTS = [LabelSlot("colour", DEMO_COLOURS, 1), LabelSlot("shape", DEMO_SHAPES, 2)]


def shapes_accuracy(outputs: list[str], references: list[str]) -> dict:
    """Demo task: does the caption name the right colour, and the right colour and shape?"""
    acc = label_accuracy(outputs, references, DEMO_SLOTS)
    return {"colour": acc["colour"], "colour_and_shape": acc["all"], "n": acc["n"]}
