"""`finetune-app eval`: did the fine-tune get better? Base vs fine-tuned (or two runs) on the run's
held-out split or any dataset, with the same generation settings on both sides.

    finetune-app eval --adapter runs/my-run [--against runs/other-run] [--data D] [--out DIR]

Writes DIR/eval.json (every output and metric, library versions, sacreBLEU signatures) and
DIR/report.html (loss curves, metrics with deltas and bootstrap intervals, the rows that changed
most). Each side's outputs are cached by (model, adapter, dataset, rows, settings): re-running is
instant. Ctrl-C cancels (sides already finished stay cached).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    c = sub.add_parser("eval", help="before/after evaluation (BLEU, chrF, ROUGE, accuracy, perplexity) with an HTML report",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("--adapter", required=True, metavar="DIR",
                   help="the fine-tuned side: a run folder (its latest checkpoint), an adapter folder or an exported model")
    c.add_argument("--against", default=None, metavar="DIR",
                   help="compare with this run/adapter/exported model instead of the base model")
    c.add_argument("--model", default=None, help="base model (default: the one the run or adapter records)")
    c.add_argument("--data", default=None, metavar="D", help="dataset (default: the run's own)")
    c.add_argument("--all-rows", action="store_true", help="every usable row, not only the validation split")
    c.add_argument("--limit", type=int, default=0, help="at most this many rows (default 0: all)")
    c.add_argument("--valid-fraction", type=float, default=None, help="validation share for a dataset without its own split (default: the run's)")
    c.add_argument("--seed", type=int, default=None, help="split seed (default: the run's)")
    c.add_argument("--prompt", default=None, help="ask this instead of each row's own prompt")
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the intervals (default 1000)")
    c.add_argument("--out", default=None, metavar="DIR", help="where eval.json and report.html go (default: RUN/eval)")
    c.add_argument("--no-cache", action="store_true", help="generate again even when the outputs are cached")
    c.add_argument("--json", action="store_true", help="print eval.json's metrics as JSON instead of a table")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=run)


def _run_config(source) -> dict:
    """The run's own settings (dataset, split, image size), when the side is a run."""
    if source is None:
        return {}
    from finetune_app.core.run_folder import read_settings, run_of

    return read_settings(source.path if source.kind == "run" else run_of(source.path))


def _check(name: str, value, ok: bool, fix: str) -> None:
    from finetune_app.core.errors import ConfigError

    if not ok:
        raise ConfigError(f"{name} {value!r} is out of range.", fix, field=name)


def run(args) -> int:
    from finetune_app.core.compare import TunedSource
    from finetune_app.core.evaluation import EvalRequest, Side, evaluate, write_outputs
    from finetune_app.core.generate import GenerationSettings

    _check("--max-tokens", args.max_tokens, args.max_tokens >= 1, "Give a whole number, 1 or more.")
    _check("--temperature", args.temperature, args.temperature >= 0, "Give 0 (greedy) or more.")
    _check("--top-p", args.top_p, 0 < args.top_p <= 1, "Give a number above 0 and at most 1.")
    _check("--bootstrap", args.bootstrap, args.bootstrap >= 0, "Give 0 (no intervals) or more resamples.")
    _check("--limit", args.limit, args.limit >= 0, "Give 0 (all rows) or more.")
    after = TunedSource.detect(args.adapter)
    before = TunedSource.detect(args.against) if args.against else None
    cfg = _run_config(after)
    data = args.data or cfg.get("data")
    out = Path(args.out) if args.out else (after.path / "eval" if after.kind == "run" else Path("eval"))
    req = EvalRequest(
        model=args.model, after=Side(after), before=Side(before), data=data,
        part="all" if args.all_rows else "valid", limit=args.limit or None,
        valid_fraction=args.valid_fraction if args.valid_fraction is not None else float(cfg.get("valid_fraction", 0.1)),
        seed=args.seed if args.seed is not None else int(cfg.get("seed", 0)), prompt=args.prompt,
        image_size=cfg.get("image_size"), resamples=args.bootstrap, use_cache=not args.no_cache,
        settings=GenerationSettings(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p))
    quiet = args.quiet or args.json

    def status(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    result = evaluate(req, progress=not quiet, status=status)
    j, h = write_outputs(result, out)
    if args.json:
        print(json.dumps({k: result[k] for k in ("sides", "metrics", "deltas", "ci95", "signatures", "versions")},
                         indent=2, ensure_ascii=False))
    else:
        print(format_summary(result))
        print(f"\nwrote {j}\nwrote {h}")
    return 0


def format_summary(result: dict) -> str:
    from finetune_app.core.evaluation.report import LABELS, _fmt, _fmt_delta, accuracy_label

    s = result["sides"]
    cached = [n for n in ("before", "after") if s[n]["cached"]]
    lines = [f"before: {s['before']['label']}", f"after:  {s['after']['label']}",
             f"rows: {result['rows']} ({result['split']}), scored: {result['scored']}"
             + (f"; cached: {', '.join(cached)}" if cached else ""), ""]
    b, a = result["metrics"]["before"], result["metrics"]["after"]
    keys = [k for k in a if k.startswith("accuracy/")] + [k for k in LABELS if k in a]
    lines.append(f"{'metric':<26}{'before':>12}{'after':>12}{'change':>12}  95% CI of change")
    for k in keys:
        d = result["deltas"].get(k) or {}
        ci = d.get("ci95")
        ci_text = f"[{_fmt_delta(k, ci[0])}, {_fmt_delta(k, ci[1])}]" if ci else ""
        name = LABELS.get(k) or accuracy_label(k)
        lines.append(f"{name:<26}{_fmt(k, b.get(k)):>12}{_fmt(k, a.get(k)):>12}"
                     f"{_fmt_delta(k, d['delta']) if d else '':>12}  {ci_text}")
    lines.append(f"\nBLEU: {result['signatures']['bleu']}\nchrF: {result['signatures']['chrf']}")
    return "\n".join(lines)
