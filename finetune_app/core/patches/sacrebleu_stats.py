"""Per-row sufficient statistics of corpus BLEU and chrF, and the score of any set of rows from
them: what resampling (bootstrap confidence intervals, paired tests) needs.

sacreBLEU computes its own paired bootstrap this way, through the metrics' private
``_extract_corpus_statistics`` and ``_compute_score_from_stats``; it has no public equivalent.
"""

from __future__ import annotations

WRITTEN_FOR = {"sacrebleu": "2.6.0"}


def still_needed() -> bool:
    """True while the metrics offer no public per-row statistics."""
    from sacrebleu.metrics import BLEU

    return not any(hasattr(BLEU, n) for n in ("extract_corpus_statistics", "corpus_statistics"))


def corpus_statistics(metric, outputs: list[str], references: list[list[str]]) -> list:
    """One row of statistics per output (references: one list per reference stream)."""
    return metric._extract_corpus_statistics(outputs, references)


def score_from_statistics(metric, totals: list):
    """The metric's score object for summed statistics."""
    return metric._compute_score_from_stats(totals)
