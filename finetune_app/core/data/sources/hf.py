"""Hugging Face datasets: saved with `save_to_disk`, or fetched from the hub where allowed.

Rows are read through the Arrow format so images stay as encoded bytes (no PIL decode while
indexing or validating text), and ClassLabel integers are turned into their names so templates
like "Describe {label}" read naturally.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from finetune_app.core.data.formats.common import RowError, SourceCtx
from finetune_app.core.data.sources import Source
from finetune_app.core.errors import DataError, Problem

VALID_SPLITS = ("validation", "valid", "val", "dev", "eval")
_CHUNK = 512


def _datasets():
    try:
        import datasets
    except ImportError:  # pragma: no cover - installed with the app
        raise DataError("reading Hugging Face datasets needs the 'datasets' package.",
                        "Install it: python3 -m pip install datasets") from None
    datasets.disable_progress_bars()
    return datasets


def load_disk(path: Path):
    """`datasets.load_from_disk` with errors turned into DataError."""
    ds = _datasets()
    try:
        return ds.load_from_disk(str(path))
    except Exception as exc:  # the library raises many kinds for a damaged folder
        raise DataError("cannot read the Hugging Face dataset folder "
                        f"({type(exc).__name__}: {exc}).",
                        "Save it again with dataset.save_to_disk(folder).", file=path) from None


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub, so that no network means an answer now, not after the
    libraries' retries (about half a minute)."""
    host = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((host.hostname or "huggingface.co",
                                  host.port or (80 if host.scheme == "http" else 443)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(name: str):
    """`datasets.load_dataset(name)`; offline or unknown ids become a DataError."""
    if not _offline() and not _hub_reachable():
        raise DataError(f"dataset not found: '{name}' is not a local file or folder, and the "
                        "Hugging Face hub cannot be reached to look for it there.",
                        "Check the path; for a hub id, connect to the network (or set "
                        "HF_HUB_OFFLINE=1 to use a copy already in the cache).", file=name)
    ds = _datasets()
    try:
        return ds.load_dataset(name)
    except Exception as exc:
        raise DataError(f"dataset not found: '{name}' is not a local file or folder, and it "
                        "cannot be loaded from the Hugging Face hub "
                        f"({type(exc).__name__}: {exc}).",
                        "Check the path; for a hub id, check the network, or download it elsewhere "
                        "and pass the folder written by save_to_disk.", file=name) from None


def split_sources(obj, ctx: SourceCtx) -> tuple[list["HfSource"], list[Problem]]:
    """A Dataset or DatasetDict -> one source per used split ('train' / 'valid')."""
    ds = _datasets()
    if isinstance(obj, ds.Dataset):
        return [HfSource(obj, ctx, None)], []
    names = list(obj.keys())
    valid = next((n for n in VALID_SPLITS if n in names), None)
    train = "train" if "train" in names else None
    problems = []
    if train is None and valid is None and len(names) == 1:
        train = names[0]
    sources = [HfSource(obj[n], ctx, s) for n, s in ((train, "train"), (valid, "valid")) if n]
    for name in names:
        if name not in (train, valid):
            problems.append(Problem(ctx.file, None, "split",
                                    f"split '{name}' ({obj[name].num_rows} rows) is not used; "
                                    "only train and validation are.", "warning"))
    if not sources:
        raise DataError(f"the dataset has no 'train' split (found: {', '.join(names)}).",
                        "Name the training split 'train'.", file=ctx.file, field="split")
    return sources, problems


class HfSource(Source):
    kind = "hf"

    def __init__(self, dataset, ctx: SourceCtx, split: str | None):
        from dataclasses import replace

        name = f"{ctx.file}[{split}]" if split else ctx.file
        super().__init__(replace(ctx, file=name, split=split, trust_image_dicts=True))
        self.dataset = dataset
        self._arrow = dataset.with_format("arrow")
        self._labels = {k: f.names for k, f in dataset.features.items()
                        if type(f).__name__ == "ClassLabel"}
        self.image_columns = {k for k, f in dataset.features.items() if "Image" in repr(f)}

    def columns(self) -> set[str]:
        return set(self.dataset.column_names)

    def _index(self) -> list[tuple]:
        split = self.ctx.split
        return [(i, i, 0, split) for i in range(self.dataset.num_rows)]

    def _fix(self, row: dict) -> dict:
        for key, names in self._labels.items():
            value = row.get(key)
            if isinstance(value, int) and 0 <= value < len(names):
                row[key] = names[value]
        return row

    def read(self, key: int, size: int) -> tuple[dict, list]:
        try:
            return self._fix(self._arrow[key].to_pylist()[0]), []
        except Exception as exc:
            raise RowError(None, f"cannot read row {key} ({type(exc).__name__}: {exc}).") from None

    def read_many(self, refs) -> Iterator:
        refs = list(refs)
        for start in range(0, len(refs), _CHUNK):
            chunk = refs[start:start + _CHUNK]
            keys = [k for k, _ in chunk]
            try:
                if keys == list(range(keys[0], keys[0] + len(keys))):
                    table = self._arrow[keys[0]:keys[0] + len(keys)]
                else:
                    table = self.dataset.select(keys).with_format("arrow")[:]
                for row in table.to_pylist():
                    yield self._fix(row), []
            except Exception:
                for key, size in chunk:  # fall back to one by one to isolate the bad row
                    try:
                        yield self.read(key, size)
                    except RowError as err:
                        yield err
