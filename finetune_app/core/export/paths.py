"""Keep this machine's absolute paths out of exported bundles.

An export is meant to be copied to another machine (or shipped in an app), so no file in it may
name a folder of this one: adapter_config.json records the base model it was trained on (a local
folder when the user trained from one), transformers can write `name_or_path`, train_config.toml
holds the data and run folders. `scrub_json` / `scrub_text` replace every absolute path with a
portable name (the Hugging Face id for a folder in the HF cache, else the folder's own name);
`find_machine_paths` scans a finished folder, every JSON and text file (and the metadata of
safetensors files and CoreML packages), and reports what is left, so the exporter can refuse to
ship a bundle that still names this machine.

Vocabulary entries of a tokenizer (`model.vocab`, `model.merges` in tokenizer.json) are data, not
paths, and are never rewritten: a token such as "/home" must stay what it is.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

TEXT_SUFFIXES = {".json", ".jinja", ".txt", ".toml", ".md", ".yaml", ".yml", ".model.json", ".py"}
BINARY_METADATA = {".safetensors", ".mlmodel"}
HF_CACHE_RE = re.compile(r"models--(?P<owner>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\][0-9a-f]+")
# An absolute path: POSIX (/a/b...) or Windows (C:\a or C:/a), up to a quote, space or bracket.
_PATH_CHARS = r"[^\s\"'<>|,;()\[\]{}]"
ABS_PATH_RE = re.compile(rf"(?<![\w.:/\\])(?:/(?:{_PATH_CHARS})+|[A-Za-z]:[\\/](?:{_PATH_CHARS})*)")
# Top-level folders whose paths are unmistakably files of a machine (not URLs or tokens).
MACHINE_ROOTS = ("Users", "home", "root", "tmp", "private", "var", "Volumes", "mnt", "opt", "srv",
                 "data", "work", "media", "scratch", "workspace", "etc", "usr", "System")


def machine_paths(extra: Iterable[str | Path] = ()) -> list[str]:
    """Absolute paths of this machine worth looking for, longest first."""
    found = {str(Path.home()), os.getcwd(), tempfile.gettempdir(),
             os.environ.get("HF_HOME", ""), os.environ.get("HF_HUB_CACHE", "")}
    for p in extra:
        if p:
            found.add(str(p))
            try:
                found.add(str(Path(p).resolve()))
            except OSError:
                pass
    out = {p.rstrip("/\\") for p in found if p and len(p.strip("/\\")) > 0}
    return sorted(out, key=len, reverse=True)


def portable_name(path: str) -> str:
    """What an absolute path becomes in a bundle: the hub id of an HF-cache snapshot, else the
    last component (the model's folder name)."""
    m = HF_CACHE_RE.search(path)
    if m:
        return f"{m.group('owner')}/{m.group('name')}"
    parts = [p for p in re.split(r"[/\\]", path) if p]
    return parts[-1] if parts else ""


def _is_machine_path(candidate: str, known: list[str]) -> bool:
    for k in known:
        if candidate == k or candidate.startswith((k + "/", k + "\\")):
            return True
    if re.match(r"^[A-Za-z]:[\\/]", candidate):
        return True
    parts = [p for p in candidate.split("/") if p]
    return len(parts) >= 2 and parts[0] in MACHINE_ROOTS


def scrub_text(text: str, extra: Iterable[str | Path] = ()) -> str:
    """Replace every absolute path of this machine in `text` with its portable name."""
    known = machine_paths(extra)

    def repl(m: re.Match) -> str:
        s = m.group(0)
        return portable_name(s) if _is_machine_path(s, known) else s

    return ABS_PATH_RE.sub(repl, text)


def _skip(path: tuple) -> bool:
    return len(path) >= 2 and path[0] == "model" and path[1] in ("vocab", "merges")


def scrub_json(obj, extra: Iterable[str | Path] = (), _path: tuple = ()):
    """The same object with absolute paths in every string value and key replaced."""
    if _skip(_path):
        return obj
    if isinstance(obj, dict):
        return {scrub_text(k, extra) if isinstance(k, str) else k: scrub_json(v, extra, _path + (k,))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_json(v, extra, _path + (i,)) for i, v in enumerate(obj)]
    if isinstance(obj, str):
        return scrub_text(obj, extra)
    return obj


def _strings(obj, _path: tuple = ()):
    if _skip(_path):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                yield k
            yield from _strings(v, _path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, _path + (i,))
    elif isinstance(obj, str):
        yield obj


def _safetensors_metadata(path: Path) -> dict:
    import struct

    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    return header.get("__metadata__") or {}


def is_text_file(path: Path) -> bool:
    name = path.name
    return path.suffix in TEXT_SUFFIXES or name.endswith(".json")


def scrub_folder(folder: Path, extra: Iterable[str | Path] = ()) -> list[str]:
    """Rewrite every JSON/text file under `folder` in place without absolute paths; return the
    relative names of the files that changed."""
    changed = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not is_text_file(path):
            continue
        try:
            raw = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.suffix == ".json":
            try:
                data = json.loads(raw)
            except ValueError:
                new = scrub_text(raw, extra)
            else:
                cleaned = scrub_json(data, extra)
                new = raw if cleaned == data else json.dumps(cleaned, indent=2, ensure_ascii=False) + "\n"
        else:
            new = scrub_text(raw, extra)
        if new != raw:
            path.write_text(new, encoding="utf-8")
            changed.append(str(path.relative_to(folder)))
    return changed


def find_machine_paths(folder: str | Path, extra: Iterable[str | Path] = ()) -> list[tuple[str, str]]:
    """(file, offending string) for every absolute path of this machine left under `folder`.

    Scans every JSON/text file (tokenizer vocabularies excepted), the metadata of every
    safetensors file, and the raw bytes of CoreML model specs for the known machine folders."""
    folder = Path(folder)
    known = machine_paths(list(extra) + [folder])
    hits: list[tuple[str, str]] = []

    def check_string(rel: str, s: str) -> None:
        for m in ABS_PATH_RE.finditer(s):
            if _is_machine_path(m.group(0), known):
                hits.append((rel, m.group(0)))

    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(folder))
        if path.suffix == ".safetensors":
            try:
                for k, v in _safetensors_metadata(path).items():
                    check_string(rel, f"{k} {v}")
            except (OSError, ValueError):
                hits.append((rel, "(unreadable safetensors header)"))
        elif path.suffix in BINARY_METADATA or path.name == "model.mlmodel":
            data = path.read_bytes()
            for k in known:
                if len(k.strip("/\\").split("/")) >= 2 and k.encode() in data:
                    hits.append((rel, k))
        elif is_text_file(path):
            try:
                raw = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if path.suffix == ".json":
                try:
                    strings = list(_strings(json.loads(raw)))
                except ValueError:
                    strings = [raw]
                for s in strings:
                    check_string(rel, s)
            else:
                check_string(rel, raw)
    return hits
