"""`finetune-app compare`: base model vs fine-tuned over a validation split, a dataset or a folder.

    finetune-app compare --model M --adapter RUN_OR_ADAPTER_OR_BUNDLE --data D [--json]

Prints a side-by-side table (reference, base output, fine-tuned output) with agreement scores
(exact match, sacreBLEU corpus BLEU and chrF, rouge-score ROUGE-L) and a one-line verdict; `--json` prints everything as one
JSON object. `--save FILE.csv|FILE.json` also writes the rows. Also runs as
`python -m finetune_app.cli.compare ...`.
"""

from __future__ import annotations

import argparse
import json
import sys

from finetune_app.core.generate import GenerationSettings


def add_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--model", default=None, help="base model: hub id or local folder (default: the one the adapter records)")
    c.add_argument("--adapter", required=True, metavar="DIR",
                   help="fine-tuned side: a run folder (its latest checkpoint), an adapter folder, or an exported model folder")
    c.add_argument("--data", required=True, metavar="D",
                   help="dataset (its validation split is used) or a folder of images (outputs side by side, unscored)")
    c.add_argument("--limit", type=int, default=20, help="at most this many rows (0: all; default 20)")
    c.add_argument("--all-rows", action="store_true", help="every usable row, not only the validation split")
    c.add_argument("--valid-fraction", type=float, default=None,
                   help="validation share used to split a dataset without its own split (default: the run's, else 0.1)")
    c.add_argument("--seed", type=int, default=None, help="split seed (default: the run's, else 0)")
    c.add_argument("--prompt", default=None, help="ask this instead of each row's own prompt (and for plain image folders)")
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--json", action="store_true", help="print one JSON object (rows, summary, verdict)")
    c.add_argument("--save", default=None, metavar="FILE", help="also write the rows to FILE (.csv or .json), or a report (.html, as `finetune-app eval` writes)")


def register(sub) -> None:
    c = sub.add_parser("compare", help="base model vs fine-tuned over a validation split or a folder, with agreement scores")
    add_arguments(c)
    c.set_defaults(func=run)


def _run_split_settings(source) -> tuple[float, int]:
    """The run's own valid_fraction and seed, so the split is the one the run validated on."""
    from finetune_app.core.run_folder import read_settings

    if source.kind != "run":
        return 0.1, 0
    cfg = read_settings(source.path)
    try:
        return float(cfg.get("valid_fraction", 0.1)), int(cfg.get("seed", 0))
    except (ValueError, TypeError):
        return 0.1, 0


def _check_save_path(path: str) -> None:
    """Refuse a --save FILE that cannot be written before the (slow) comparison runs."""
    import os
    import tempfile
    from pathlib import Path

    from finetune_app.core.errors import FinetuneError

    target = Path(path).expanduser()
    if target.is_dir():
        raise FinetuneError(f"--save '{target}' is a folder.", "Give a file name ending in .csv or .json.",
                            file=target, field="save")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise FinetuneError(f"Cannot write --save '{target}': its folder '{target.parent}' is not writable "
                            f"({err.strerror or err}).", "Choose a file in a folder you can write to, or make "
                            "that folder writable.", file=target, field="save") from None


def _save(result, path: str) -> None:
    from finetune_app.core.compare import save_result
    from finetune_app.core.errors import FinetuneError

    try:
        save_result(result, path)
    except OSError as err:
        raise FinetuneError(f"Could not write --save '{path}' ({err.strerror or err}).",
                            "Check that its folder is writable and the disk has space, then run compare again.",
                            file=path, field="save") from None


def run(args) -> int:
    from finetune_app.core.compare import TunedSource, format_table, run_compare

    if args.save:
        _check_save_path(args.save)
    source = TunedSource.detect(args.adapter)
    fraction, seed = _run_split_settings(source)
    if args.valid_fraction is not None:
        fraction = args.valid_fraction
    if args.seed is not None:
        seed = args.seed
    settings = GenerationSettings(max_tokens=args.max_tokens, temperature=args.temperature)
    quiet = args.json

    def status(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    def on_row(i: int, row) -> None:
        if not quiet:
            print(f"  row {i + 1} done", file=sys.stderr, flush=True)

    result = run_compare(args.model, source, args.data, limit=args.limit or None, valid_fraction=fraction, seed=seed,
                         prompt=args.prompt, part="all" if args.all_rows else "valid", settings=settings,
                         status=status, on_row=on_row)
    if args.save:
        _save(result, args.save)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    from finetune_app.core.errors import FinetuneError

    parser = argparse.ArgumentParser(prog="finetune-app compare", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FinetuneError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
