"""Train / validation split that is stable as a dataset grows.

A row goes to validation when a hash of (seed, its content) falls below `valid_fraction`, so
adding rows never moves existing ones, and identical rows always land on the same side (no
leak). A dataset's own validation split (valid.jsonl, a `split` column, HF "validation") wins.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from finetune_app.core.errors import ConfigError

_SCALE = float(1 << 64)


def _unit(seed: int, key: str) -> float:
    data = f"{seed}\0{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def split(dataset_or_indices, *, valid_fraction: float = 0.1, seed: int = 0,
          min_valid: int = 1) -> tuple[list[int], list[int]]:
    """-> (train_indices, valid_indices), disjoint, each in ascending order.

    Accepts a Dataset (all rows), a Report (its usable rows; fastest, keys already computed), or a
    sequence of row indices / hashable ids (the value itself is the identity)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction must be in [0, 1), got {valid_fraction}.",
                          "Use e.g. 0.1 for 10% validation.", field="valid_fraction")
    dataset, indices, keys = _resolve(dataset_or_indices)
    if dataset is not None and getattr(dataset, "splits", None):
        return _own_split(dataset, indices, keys)
    if not indices:
        return [], []
    units = {i: _unit(seed, keys(i)) for i in indices}
    valid = {i for i in indices if units[i] < valid_fraction}
    if len(valid) == len(indices):  # a row or two that all hashed low: train on them instead
        valid = set()
    want = min(max(min_valid, 0), len(indices) - 1) if valid_fraction > 0 else 0
    if len(valid) < want:
        # small datasets: top up with the rows that came closest, still deterministic
        for i in sorted((i for i in indices if i not in valid), key=lambda i: (units[i], i)):
            if len(valid) >= want:
                break
            valid.add(i)
        valid = _close_duplicates(valid, indices, keys)
    return sorted(i for i in indices if i not in valid), sorted(valid)


def _resolve(obj):
    from finetune_app.core.data.dataset import Dataset
    from finetune_app.core.data.report import Report

    if isinstance(obj, Report):
        ds = obj.dataset
        known = obj.row_keys
        return ds, list(obj.usable_indices), (lambda i: known.get(i) or _row_key(ds, i))
    if isinstance(obj, Dataset):
        cache: dict[int, str] = {}
        for i, sample, _ in obj.iter_parsed():
            if sample is not None:
                from finetune_app.core.data.validation import sample_key

                cache[i] = sample_key(sample)
        return obj, list(range(len(obj))), (lambda i: cache.get(i) or _row_key(obj, i))
    if isinstance(obj, (str, bytes)) or not isinstance(obj, Iterable):
        raise ConfigError("split() takes a Dataset, a Report or a sequence of row indices.")
    items = list(obj)
    return None, items, (lambda i: repr(i))


def _row_key(dataset, i: int) -> str:
    """Fallback identity for a row that does not parse: where it is."""
    ref = dataset.rows[i]
    return f"{dataset.sources[ref.source].name}:{ref.line}:{ref.key}"


def _own_split(dataset, indices: Sequence[int], keys) -> tuple[list[int], list[int]]:
    rows = dataset.rows
    valid = [i for i in indices if rows[i].split == "valid"]
    valid_keys = {keys(i) for i in valid}
    train = [i for i in indices if rows[i].split != "valid" and keys(i) not in valid_keys]
    return sorted(train), sorted(valid)


def _close_duplicates(valid: set, indices, keys) -> set:
    """Rows identical to a validation row go to validation too."""
    vkeys = {keys(i) for i in valid}
    closed = valid | {i for i in indices if keys(i) in vkeys}
    return closed if len(closed) < len(indices) else set()  # all identical: nothing to hold out
