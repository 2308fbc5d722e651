"""What one host has, as JSON: run there by check.py, over ssh, as
`python -m finetune_app.core.cluster.probe --model M --data D` (or `finetune-app hosts probe`).

The fingerprints let this machine see that a host has the *same* model and data, not only files
at the same paths: names and sizes of the weight/data files and the bytes of config.json."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import sys
from pathlib import Path


def _fingerprint(files: list[Path], root: Path, extra: bytes = b"") -> str:
    h = hashlib.sha256(extra)
    for f in sorted(files):
        h.update(f"{f.relative_to(root)}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def model_info(source: str) -> dict:
    from finetune_app.core.errors import FinetuneError
    from finetune_app.core.models import resolve_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a probe never downloads: it says what is there
    try:
        path = resolve_model_path(source)
    except FinetuneError as err:
        return {"found": False, "problem": err.message}
    weights = list(path.glob("*.safetensors"))
    config = (path / "config.json").read_bytes()
    return {"found": True, "path": str(path), "bytes": sum(f.stat().st_size for f in weights),
            "fingerprint": _fingerprint(weights, path, config)}


def data_info(source: str) -> dict:
    from finetune_app.core.data import open_dataset
    from finetune_app.core.errors import FinetuneError

    path = Path(source).expanduser()
    if not path.exists():
        return {"found": False, "problem": f"'{path}' does not exist."}
    try:
        rows = len(open_dataset(path))
    except FinetuneError as err:
        return {"found": False, "problem": err.message}
    root = path if path.is_dir() else path.parent
    files = [f for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file()]
    return {"found": True, "path": str(path.resolve()), "rows": rows, "fingerprint": _fingerprint(files, root)}


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def probe(model: str, data: str) -> dict:
    import mlx.core as mx

    from finetune_app import __version__

    gpu = mx.metal.is_available() if hasattr(mx, "metal") else False
    cuda = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    return {"hostname": socket.gethostname(), "platform": f"{platform.system()} {platform.machine()}",
            "python": sys.executable, "finetune": __version__, "mlx": mx.__version__,
            "device": "Metal GPU" if gpu else ("CUDA GPU" if cuda else "CPU"),
            "memory_bytes": memory_bytes(), "free_disk_bytes": shutil.disk_usage(Path.home()).free,
            "model": model_info(model), "data": data_info(data)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from finetune_app.core.cluster.check import PROBE_MARK

    parser = argparse.ArgumentParser(prog="finetune_app.core.cluster.probe")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    args = parser.parse_args(argv)
    print(PROBE_MARK + json.dumps(probe(args.model, args.data)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
