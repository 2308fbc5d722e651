"""Where the rows are: from a path (file, folder or hub id) to the sources of a dataset.

Folder layouts recognised, in this order: a Hugging Face `save_to_disk` folder; train/valid
JSONL files (mlx-vlm's and mlx-lm's `--data DIR`); `captions.csv` next to `images/`; a Hugging
Face image folder (`metadata.jsonl` / `metadata.csv`, optionally in train/ validation/ folders);
a folder holding exactly one data file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from finetune_app.core.data.formats.common import SourceCtx, norm_dir
from finetune_app.core.data.sources import Source
from finetune_app.core.data.sources.jsonfile import IsJsonl, JsonArraySource, JsonlSource
from finetune_app.core.data.sources.tabular import CsvSource, normalise_split
from finetune_app.core.errors import DataError, Problem

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")
SPLIT_FILES = ("train", "valid", "validation", "val", "dev", "test")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

LAYOUTS_HELP = ("a .jsonl/.json/.csv file; a folder with train.jsonl (and valid.jsonl); a folder "
                "with captions.csv and images/; a folder with metadata.jsonl or metadata.csv; a "
                "folder written by datasets' save_to_disk")


@dataclass
class Layout:
    container: str  # jsonl, json, csv, captions-folder, imagefolder, jsonl-folder, hf-disk, hf-hub
    root: Path
    sources: list[Source]
    problems: list[Problem] = field(default_factory=list)


def find_layout(path: str | Path) -> Layout:
    raw = str(path)
    if "\0" in raw:
        raise DataError("the dataset path contains a NUL byte.", "Check the path.",
                        file=raw.replace("\0", "\\0"))
    p = Path(path).expanduser()
    if not p.exists():
        if looks_like_hub_id(raw):
            return _hub(raw)
        raise DataError(f"dataset not found: {raw}.", "Check the path (a file or a folder).",
                        file=raw)
    try:
        if p.is_dir():
            return _folder(p)
        if not p.is_file():  # a FIFO or device would block or never end
            raise DataError(f"{raw} is not a regular file.", "Pass a dataset file or folder.",
                            file=raw)
        if p.name in ("dataset_dict.json", "dataset_info.json", "state.json"):
            return _folder(p.parent)
        return _file(p)
    except OSError as exc:  # unreadable file or folder (permissions, I/O error)
        where = exc.filename or raw
        raise DataError(f"cannot read {where} ({exc.strerror or exc}).",
                        "Check that the file exists and that you may read it.",
                        file=str(where)) from None


def looks_like_hub_id(raw: str) -> bool:
    """'owner/name' that is not plainly a local path: no suffix of a data file, no leading
    './', '~' or '/', and no local folder called 'owner' (then 'owner/name' is a missing file
    in it). Only such ids ever reach the network."""
    if not (_HUB_ID.match(raw) and "/" in raw) or raw.lower().endswith(DATA_SUFFIXES):
        return False
    owner = raw.split("/", 1)[0]
    return owner not in (".", "..") and not Path(owner).exists()


def _ctx(file: Path, root: Path, base: Path | None = None, split: str | None = None) -> SourceCtx:
    base = base or file.parent
    return SourceCtx(file=str(file), base=norm_dir(base), root=norm_dir(root), split=split,
                     base_alias=file.name.lower() == "captions.csv" and base.name == "images")


def file_source(path: Path, root: Path, base: Path | None = None,
                split: str | None = None) -> Source:
    """The right reader for one data file, by suffix (and by content for .json)."""
    ctx = _ctx(path, root, base, split)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return CsvSource(path, ctx)
    if suffix == ".json":
        src = JsonArraySource(path, ctx)
        try:
            src.rows()
            return src
        except IsJsonl:
            return JsonlSource(path, ctx)
    if suffix not in (".jsonl", ".ndjson"):
        with path.open("rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith(b"["):
            return JsonArraySource(path, ctx)
        if not head.startswith(b"{"):
            raise DataError(f"cannot tell what kind of file {path.name} is.",
                            f"Use a .jsonl, .json or .csv file; expected {LAYOUTS_HELP}.",
                            file=path)
    return JsonlSource(path, ctx)


def _file(p: Path) -> Layout:
    root = p.parent
    if p.name.lower() == "captions.csv" and (root / "images").is_dir():
        return Layout("captions-folder", root, [file_source(p, root, root / "images")])
    src = file_source(p, root)
    return Layout("imagefolder" if p.stem.lower() == "metadata" else src.kind, root, [src])


def _folder(p: Path) -> Layout:
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        from finetune_app.core.data.sources import hf

        sources, problems = hf.split_sources(hf.load_disk(p), _ctx(p, p, p))
        return Layout("hf-disk", p, sources, problems)
    split_layout = _split_files(p)
    if split_layout:
        return split_layout
    if (p / "captions.csv").is_file():
        images = p / "images"
        return Layout("captions-folder", p,
                      [file_source(p / "captions.csv", p, images if images.is_dir() else p)])
    meta = _metadata(p)
    if meta:
        return meta
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES
                   and not f.name.startswith("."))
    if len(files) == 1:
        return _file(files[0])
    if files:
        names = ", ".join(f.name for f in files)
        raise DataError(f"the folder {p} holds several data files ({names}).",
                        "Pass the file to use, or name them train.jsonl and valid.jsonl.", file=p)
    raise DataError(f"no dataset found in {p}.", f"Expected {LAYOUTS_HELP}.", file=p)


def _split_files(p: Path) -> Layout | None:
    sources, problems = [], []
    for name in SPLIT_FILES:
        for suffix in (".jsonl", ".json"):
            f = p / f"{name}{suffix}"
            if not f.is_file():
                continue
            split = normalise_split(name)
            if split == "test":
                problems.append(Problem(str(f), None, None, f"{f.name} is not used for training "
                                        "or validation.", "warning"))
                continue
            if any(s.ctx.split == split for s in sources):
                problems.append(Problem(str(f), None, None, f"{f.name} ignored: another "
                                        f"{split} file was found first.", "warning"))
                continue
            sources.append(file_source(f, p, p, split))
    if not sources:
        return None
    return Layout("jsonl-folder", p, sources, problems)


def _metadata(p: Path) -> Layout | None:
    def meta_in(folder: Path) -> Path | None:
        for name in ("metadata.jsonl", "metadata.csv"):
            if (folder / name).is_file():
                return folder / name
        return None

    top = meta_in(p)
    if top:
        return Layout("imagefolder", p, [file_source(top, p)])
    sources, problems = [], []
    for sub in sorted(d for d in p.iterdir() if d.is_dir()):
        split = normalise_split(sub.name)
        meta = meta_in(sub)
        if not meta or split not in ("train", "valid", "test"):
            continue
        if split == "test":
            problems.append(Problem(str(meta), None, None, "the test split is not used.",
                                    "warning"))
            continue
        sources.append(file_source(meta, p, sub, split))
    return Layout("imagefolder", p, sources, problems) if sources else None


def _hub(name: str) -> Layout:
    from finetune_app.core.data.sources import hf

    obj = hf.load_hub(name)
    root = Path.cwd()
    try:
        first = obj if not hasattr(obj, "keys") else obj[next(iter(obj.keys()))]
        if first.cache_files:
            root = Path(first.cache_files[0]["filename"]).parent
    except Exception:
        pass
    ctx = SourceCtx(file=name, base=norm_dir(root), root=norm_dir(root))
    sources, problems = hf.split_sources(obj, ctx)
    return Layout("hf-hub", root, sources, problems)
