"""Before/after evaluation: both sides generate on the same rows with the same settings, each
side's outputs and token NLLs are cached under a fingerprint of (model, adapter, dataset, rows,
settings), and every metric is computed from those outputs with the citable libraries.

A side is the base model (adapters bypassed) or a fine-tuned source (run, adapter, exported model);
"before" is usually the base and "after" the fine-tune, or two runs side by side.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from finetune_app.core import scoring
from finetune_app.core.compare import (CompareItem, ModelCache, TunedSource, _generate, _load_ref, items_from_data,
                                       recorded_base)
from finetune_app.core.errors import DataError, FinetuneError, ModelError
from finetune_app.core.evaluation.perplexity import TokenNLL, perplexity
from finetune_app.core.evaluation.stats import paired_bootstrap
from finetune_app.core.generate import GenerationSettings

CACHE_VERSION = 1  # bump when what a cached side holds changes
SIDES = ("before", "after")
CHANGED_ROWS = 12  # rows shown in the report's "changed most" table


class Cancelled(FinetuneError):
    exit_code = 130

    def __init__(self):
        super().__init__("The evaluation was cancelled.", "Start it again; finished sides are cached.")


@dataclass(frozen=True)
class Side:
    """One model of the comparison: the base (source None) or a fine-tuned source."""

    source: TunedSource | None = None

    def describe(self, model: str) -> str:
        return f"base model {Path(model).name or model}" if self.source is None else self.source.resolve().label + f" ({self.source.name})"


@dataclass
class EvalRequest:
    model: str | None
    after: Side
    before: Side = field(default_factory=Side)
    data: str | None = None  # default: the after run's dataset
    part: str = "valid"  # "valid" (the run's held-out split) or "all"
    limit: int | None = None
    valid_fraction: float = 0.1
    seed: int = 0
    prompt: str | None = None
    image_size: int | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    resamples: int = 1000
    use_cache: bool = True
    cache_dir: Path | None = None


def default_cache_dir() -> Path:
    from finetune_app.core.runs import data_dir

    return data_dir() / "eval-cache"


# ---- one side -----------------------------------------------------------------------------------

def side_fingerprint(side: Side, model: str, req: EvalRequest, items: list[CompareItem]) -> tuple[str, dict]:
    from finetune_app.core.run_records.fingerprint import fingerprint_model, fingerprint_path

    what: dict = {"version": CACHE_VERSION, "data": fingerprint_path(req.data or ""),
                  "rows": [it.index for it in items], "prompt": req.prompt, "image_size": req.image_size,
                  "settings": vars(req.settings)}
    if side.source is None:
        what["model"] = fingerprint_model(model)
    else:
        resolved = side.source.resolve()
        what["tuned"] = [resolved.kind, fingerprint_path(resolved.path)]
        if resolved.kind != "bundle":
            what["model"] = fingerprint_model(model)
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
    return digest, what


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=not enabled, leave=False, dynamic_ncols=True)


Progress = Callable[[str, int, int], None]  # (side, rows done, rows in all) after each row
PARTIAL_EVERY_S = 5.0  # a side's finished rows are kept at least this often while it runs


def run_side(cache: ModelCache, model: str, side: Side, items: list[CompareItem], req: EvalRequest, *,
             desc: str, progress: bool = True, cancelled: Callable[[], bool] | None = None,
             done: list[dict] | None = None, keep: Callable[[list[dict]], None] | None = None,
             on_row: Callable[[int, int], None] | None = None) -> list[dict]:
    """Generate and score every item with one side's model: [{output, nll, tokens, error}].

    `done` holds rows already finished (a cancelled run's, from the cache): work starts after them.
    `keep(rows)` is called with the rows so far every PARTIAL_EVERY_S and when cancelled, so a
    cancel or a crash loses at most a few seconds of work. Cancelling stops between rows."""
    from finetune_app.core.data.tokenize import Encoder

    rows = list(done or [])
    stop = cancelled or (lambda: False)
    if stop():
        raise Cancelled()
    if len(rows) >= len(items):
        return rows[:len(items)]
    if side.source is None:
        context = cache.base(model)
    else:
        context = nullcontext(cache.tuned(model, side.source)[0])
    kept = time.monotonic()
    with context as base, _progress(len(items), desc, progress) as bar:
        bar.update(len(rows))
        encoder = Encoder(base, image_size=req.image_size)
        scorer = TokenNLL(base, image_size=req.image_size)
        for item in items[len(rows):]:
            if stop():
                if keep is not None and rows:
                    keep(rows)
                raise Cancelled()
            row = {"output": "", "nll": None, "tokens": None, "error": ""}
            try:
                images = encoder.load_images(item.sample) if item.sample is not None else [_load_ref(r) for r in item.images]
                row["output"] = _generate(base, item, images, req.settings, encoder, None, None)
                if item.sample is not None and item.reference:
                    row["nll"], row["tokens"] = scorer(item.sample, images)
            except DataError as err:  # this row's picture: report it, go on with the others
                row["error"] = err.message
            rows.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(len(rows), len(items))
            if keep is not None and time.monotonic() - kept > PARTIAL_EVERY_S and len(rows) < len(items):
                keep(rows)
                kept = time.monotonic()
    return rows


def _write_side(path: Path, what: dict, rows: list[dict]) -> None:
    from finetune_app.core import atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({"version": CACHE_VERSION, "key": what, "rows": rows}))


def _cached_side(path: Path) -> list[dict] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["rows"] if data.get("version") == CACHE_VERSION else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---- metrics ------------------------------------------------------------------------------------

def side_metrics(outputs: list[str], refs: list[str], nll: list[float], tokens: list[int],
                 slots: list[scoring.LabelSlot]) -> tuple[dict, dict]:
    """(metrics, statistics for the bootstrap: name -> rows' indices -> value)."""
    import numpy as np

    stats = scoring.corpus_stats(outputs, refs)
    metrics = scoring.corpus_scores(outputs, refs)
    boot = {name: (lambda idx, s=s, name=name: scoring.from_stats(name, s[idx])) for name, s in stats.items()}
    for name, hits in scoring.label_hits(outputs, refs, slots).items():
        arr = np.asarray(hits)
        metrics[f"accuracy/{name}"] = float(arr.mean()) if len(arr) else 0.0
        boot[f"accuracy/{name}"] = lambda idx, arr=arr: float(arr[idx].mean())
    nll_a, tok_a = np.asarray(nll, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    if tok_a.sum() > 0:
        metrics["nll_per_token"] = float(nll_a.sum() / tok_a.sum())
        metrics["perplexity"] = perplexity(float(nll_a.sum()), int(tok_a.sum()))
        metrics["tokens"] = int(tok_a.sum())
        boot["nll_per_token"] = lambda idx: nll_a[idx].sum() / max(tok_a[idx].sum(), 1)
        boot["perplexity"] = lambda idx: math.exp(boot["nll_per_token"](idx))
    return metrics, boot


LOWER_IS_BETTER = {"perplexity", "nll_per_token"}


def loss_curves(path: Path) -> dict | None:
    """Train and validation loss from the metrics.jsonl of the run a path belongs to (a run folder,
    one of its checkpoints, or an adapter saved in it)."""
    from finetune_app.core import run_folder

    p = Path(path)
    for folder in (p, run_folder.run_of(p) if run_folder.run_of(p) != p else None, p.parent):
        if folder is not None and run_folder.metrics_path(folder).is_file():
            rows = run_folder.read_metrics(folder)
            return {"run": str(folder),
                    "train": [[r["step"], r["loss"]] for r in rows if r.get("kind") == "train" and r.get("loss") is not None],
                    "val": [[r["step"], r["val_loss"]] for r in rows if r.get("kind") == "val"
                            and r.get("val_loss") is not None and math.isfinite(r["val_loss"])]}
    return None


# ---- the whole evaluation -----------------------------------------------------------------------

def evaluate(req: EvalRequest, *, progress: bool = True, status: Callable[[str], None] | None = None,
             cancelled: Callable[[], bool] | None = None, on_progress: Progress | None = None) -> dict:
    """Both sides on the same rows; returns what eval.json holds.

    `on_progress(side, done, total)` follows the rows (a cached side reports done == total at
    once); `cancelled()` is asked between rows and raises `Cancelled`, keeping the rows finished."""
    t0 = time.perf_counter()
    say = status or (lambda text: None)
    model = req.model or recorded_base(req.after.source) or (recorded_base(req.before.source) if req.before.source else None)
    if not model and (req.before.source is None or req.after.source.resolve().kind != "bundle"):
        raise ModelError("No base model to evaluate with.", "Give the base model with --model.")
    if not req.data:
        raise DataError("No dataset to evaluate on.", "Give one with --data (a run remembers its own).")
    items = items_from_data(req.data, valid_fraction=req.valid_fraction, seed=req.seed, limit=req.limit,
                            prompt=req.prompt, part=req.part)
    if not any(it.reference for it in items):
        raise DataError(f"'{req.data}' has no reference answers to score against.",
                        "Evaluate on a dataset with answers or captions; to read outputs side by side, use `finetune-app compare`.",
                        file=req.data)
    try:  # label sets come from the whole dataset, not only the rows evaluated
        all_refs = [it.reference for it in items_from_data(req.data, part="all", limit=5000)]
    except FinetuneError:
        all_refs = [it.reference for it in items]
    slots = scoring.label_slots(all_refs)
    cache_dir = Path(req.cache_dir or default_cache_dir())
    model_cache = ModelCache(status=say)
    per_side, sides_info = {}, {}
    try:
        for name, side in (("before", req.before), ("after", req.after)):
            key, what = side_fingerprint(side, model or "", req, items)
            path = cache_dir / f"{key}.json"
            rows = _cached_side(path) if req.use_cache else None
            label = side.describe(model or "")
            sides_info[name] = {"label": label, "kind": "base" if side.source is None else side.source.kind,
                                "path": model if side.source is None else str(side.source.resolve().path),
                                "fingerprint": key, "cached": rows is not None}
            if rows is None:
                partial = cache_dir / f"{key}.partial.json"
                done = (_cached_side(partial) or []) if req.use_cache else []
                say(f"{name}: {label}" + (f" (resuming after {len(done)} rows)" if done else ""))
                if on_progress is not None:
                    on_progress(name, len(done), len(items))
                rows = run_side(model_cache, model or "", side, items, req, desc=f"{name} ({label})",
                                progress=progress, cancelled=cancelled, done=done,
                                keep=lambda rows, p=partial, w=what: _write_side(p, w, rows),
                                on_row=(lambda d, t, n=name: on_progress(n, d, t)) if on_progress else None)
                _write_side(path, what, rows)
                partial.unlink(missing_ok=True)
            elif on_progress is not None:
                on_progress(name, len(items), len(items))
            per_side[name] = rows
    finally:
        model_cache.clear()
    if cancelled is not None and cancelled():
        raise Cancelled()

    settings = {**vars(req.settings), "prompt": req.prompt, "image_size": req.image_size, "limit": req.limit,
                "valid_fraction": req.valid_fraction, "seed": req.seed}
    curves = {s: c for s, side in (("before", req.before), ("after", req.after))
              if side.source is not None and (c := loss_curves(side.source.path))}
    result = assemble(items, per_side, slots, model=model, data=str(req.data), split=req.part, settings=settings,
                      sides=sides_info, curves=curves, resamples=req.resamples)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def assemble(items, per_side: dict[str, list[dict]], slots, *, model, data: str, split: str, settings: dict,
             sides: dict, curves: dict, resamples: int) -> dict:
    """What eval.json holds, from both sides' rows ({output, nll, tokens, error} per item)."""
    from datetime import datetime, timezone

    scored = [i for i, it in enumerate(items) if it.reference
              and not per_side["before"][i]["error"] and not per_side["after"][i]["error"]]
    refs = [items[i].reference for i in scored]
    metrics, boot = {}, {}
    for name in SIDES:
        rows = per_side[name]
        all_nll = all(rows[i].get("tokens") for i in scored)
        metrics[name], boot[name] = side_metrics(
            [rows[i]["output"] for i in scored], refs,
            [rows[i]["nll"] if all_nll else 0.0 for i in scored],
            [rows[i]["tokens"] if all_nll else 0 for i in scored], slots)
    ci = paired_bootstrap(boot["before"], boot["after"], len(scored), resamples=resamples)
    deltas = {k: {"delta": metrics["after"][k] - metrics["before"][k], "ci95": ci.get(k, {}).get("delta"),
                  "lower_is_better": k in LOWER_IS_BETTER}
              for k in metrics["after"] if k in metrics["before"] and k not in ("n", "tokens")}
    rows_out = []
    for i, it in enumerate(items):
        row = {"index": it.index, "label": it.label, "image": it.image, "prompt": it.prompt, "reference": it.reference,
               "outputs": {s: per_side[s][i]["output"] for s in SIDES},
               "nll": {s: per_side[s][i].get("nll") for s in SIDES},
               "tokens": {s: per_side[s][i].get("tokens") for s in SIDES},
               "error": per_side["before"][i]["error"] or per_side["after"][i]["error"]}
        if i in scored:
            row["scores"] = {s: scoring.row_scores(per_side[s][i]["output"], it.reference) for s in SIDES}
            row["labels"] = {s: {slot.name: slot.of(per_side[s][i]["output"]) for slot in slots} for s in SIDES}
        rows_out.append(row)
    return {
        "schema": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model, "data": data, "split": split, "rows": len(items), "scored": len(scored),
        "settings": settings, "sides": sides, "label_slots": [s.to_dict() for s in slots],
        "metrics": metrics, "deltas": deltas,
        "ci95": {s: {k: v[s] for k, v in ci.items()} for s in SIDES},
        "bootstrap": {"resamples": resamples, "seed": 0, "confidence": 0.95, "paired": True},
        "signatures": scoring.signatures(), "versions": scoring.library_versions(),
        "metric_notes": {"bleu": "sacreBLEU corpus BLEU, 0-100", "chrf": "sacreBLEU corpus chrF, 0-100",
                         "rouge1": "rouge-score F1, Porter stemmer, mean over rows", "rouge2": "as rouge1",
                         "rougeL": "as rouge1", "exact_match": "stripped texts equal",
                         "normalised_match": "equal after SQuAD normalisation",
                         "perplexity": "exp(mean NLL per completion token), through the engine's loss",
                         "accuracy/*": "the output names the reference's label (label sets detected from the data)"},
        "loss_curves": curves,
        "results": rows_out,
    }


def from_compare(result, *, resamples: int = 1000) -> dict:
    """An eval.json-shaped result from a Compare run (the Compare tab's "Save" as a report): the
    same metrics, intervals and report, without perplexity (the comparison does not score tokens)."""
    rows = {"before": [{"output": r.base, "error": r.error} for r in result.rows],
            "after": [{"output": r.tuned, "error": r.error} for r in result.rows]}
    items = [CompareItem(prompt=r.prompt, reference=r.reference, index=r.index, label=r.label) for r in result.rows]
    slots = scoring.label_slots([r.reference for r in result.rows])
    model = result.model
    sides = {"before": {"label": f"base model {Path(model).name or model}", "kind": "base", "path": model, "cached": False},
             "after": {"label": result.tuned, "kind": "adapter", "path": result.tuned_path, "cached": False}}
    curves = {"after": c} if (c := loss_curves(Path(result.tuned_path))) else {}
    settings = {"max_tokens": 0, "temperature": 0.0, "top_p": 1.0, **result.settings}
    out = assemble(items, rows, slots, model=model, data=result.data, split="compare", settings=settings,
                   sides=sides, curves=curves, resamples=resamples)
    for row, r in zip(out["results"], result.rows):
        row["image"] = r.image
    return out


def changed_most(result: dict, n: int = CHANGED_ROWS) -> list[dict]:
    """Scored rows whose outputs differ, largest change first (ROUGE-L, labels and match together)."""
    def change(row):
        b, a = row["scores"]["before"], row["scores"]["after"]
        labels = sum((row["labels"]["after"][k] == _ref_label(result, row, k)) - (row["labels"]["before"][k] == _ref_label(result, row, k))
                     for k in row["labels"]["after"])
        return (a["rouge_l"] - b["rouge_l"]) + (a["normalised_match"] - b["normalised_match"]) + labels

    rows = [{**r, "change": change(r)} for r in result["results"]
            if "scores" in r and r["outputs"]["before"].strip() != r["outputs"]["after"].strip()]
    return sorted(rows, key=lambda r: -abs(r["change"]))[:n]


def _ref_label(result: dict, row: dict, name: str) -> str | None:
    for s in result["label_slots"]:
        if s["name"] == name:
            return scoring.LabelSlot(s["name"], tuple(s["values"]), s["position"]).of(row["reference"])
    return None


def write_outputs(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """eval.json and report.html in out_dir (atomic writes)."""
    from finetune_app.core import atomic
    from finetune_app.core.evaluation.report import render

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    j = atomic.write_text(out / "eval.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    h = atomic.write_text(out / "report.html", render(result))
    return j, h

