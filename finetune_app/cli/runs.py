"""`finetune-app runs`: the run history from the terminal (the same records the app shows).

    finetune-app runs list [--json] [--status S]   every recorded run, newest last
    finetune-app runs show RUN [--json]             one run: config, identity, metrics, checkpoints
    finetune-app runs resume RUN [--iters N | --epochs E]   continue (or extend) a run
    finetune-app runs delete RUN [--yes] [--keep-files]     forget a run and delete the files it wrote
    finetune-app runs import DIR...                         record run folders trained without a record

RUN is a run id (first column of `runs list`), a run folder, or a run folder's name.
"""

from __future__ import annotations

import json
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("runs", help="list, show, resume and delete recorded training runs",
                       description="The run history: every training run is recorded (app-data folder, "
                       "or $FINETUNE_DATA_DIR). Runs whose process died are marked interrupted and can be resumed.")
    rs = p.add_subparsers(dest="runs_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    ls = rs.add_parser("list", help="list the recorded runs")
    ls.add_argument("--json", action="store_true", help="print one JSON array")
    ls.add_argument("--status", default=None, choices=("running", "finished", "stopped", "failed", "interrupted"),
                    help="only runs with this status")
    ls.set_defaults(func=run_list)

    sh = rs.add_parser("show", help="show one run")
    sh.add_argument("run", metavar="RUN", help="run id, run folder or run folder name")
    sh.add_argument("--json", action="store_true", help="print one JSON object (with every metric)")
    sh.set_defaults(func=run_show)

    re_ = rs.add_parser("resume", help="continue an interrupted or stopped run, or extend a finished one",
                        description="Continue a run from its newest good checkpoint (a damaged newest "
                        "checkpoint is skipped, with a note). With --iters or --epochs, train to that many steps or "
                        "epochs in total: this also extends a finished run, with its optimizer state.")
    re_.add_argument("run", metavar="RUN", help="run id, run folder or run folder name")
    re_.add_argument("--iters", type=int, default=None, help="train to this many optimizer steps in total")
    re_.add_argument("--epochs", type=float, default=None, help="train to this many epochs in total")
    re_.add_argument("--quiet", action="store_true", help="print only reports, no samples")
    re_.set_defaults(func=run_resume)

    im = rs.add_parser("import", help="record run folders trained without a record (another data folder, older versions)")
    im.add_argument("folders", nargs="+", metavar="DIR", help="run folders (with train_config.toml)")
    im.set_defaults(func=run_import)

    de = rs.add_parser("delete", help="forget a run and delete the files it wrote",
                       description="Forget a run and delete the files it wrote (listed in its run.json, plus its "
                       "checkpoints). Other files in its folder are never deleted; the folder goes only when "
                       "it ends up empty.")
    de.add_argument("run", metavar="RUN", help="run id, run folder or run folder name")
    de.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    de.add_argument("--keep-files", action="store_true", help="forget the record but keep the run's files")
    de.set_defaults(func=run_delete)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "—"


def _num(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _duration(seconds: float | None) -> str:
    from finetune_app.cli.progress import fmt_seconds

    return "—" if seconds is None else fmt_seconds(seconds)


def run_list(args) -> int:
    from finetune_app.core.runs import human_bytes, open_store, summaries

    with open_store() as store:
        rows = [s for s in summaries(store) if not args.status or s.record.status == args.status]
    if args.json:
        print(json.dumps([s.to_dict() for s in rows], indent=2, default=str))
        return 0
    if not rows:
        print("No runs recorded yet. Train one with `finetune-app train` or in the app.")
        return 0
    table = [("ID", "STATUS", "STEP", "LOSS", "VAL", "STARTED", "TIME", "DISK", "MODEL", "FOLDER")]
    for s in rows:
        r = s.record
        status = r.status + (" *" if s.resumable else "")
        table.append((str(r.id), status, f"{r.step}/{r.total_steps}", _num(r.last_loss), _num(r.last_val_loss),
                      _when(r.started_at), _duration(r.duration), human_bytes(s.disk_bytes),
                      _short_model(r.model), r.run_dir))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"\n{len(rows)} run{'s' if len(rows) != 1 else ''}, {human_bytes(sum(s.disk_bytes for s in rows))} on disk."
          + ("  * can resume: finetune-app runs resume ID" if any(s.resumable for s in rows) else ""))
    return 0


def _short_model(model: str) -> str:
    from pathlib import Path

    if not model:
        return "—"
    p = Path(model)
    return p.name if p.is_absolute() or model.startswith((".", "~")) else model


def run_show(args) -> int:
    from finetune_app.core.runs import (disk_usage, human_bytes, is_resumable, last_checkpoint, mark_interrupted,
                                        open_store, resolve_run)

    with open_store() as store:
        mark_interrupted(store)
        r = resolve_run(store, args.run)
        train = store.metrics(r.id, "train")
        val = store.metrics(r.id, "val")
        ckpts = store.checkpoints(r.id)
        samples = store.samples(r.id)
        exports = store.exports(r.id)
        history = store.run_log(r.id)
    disk = disk_usage(r.run_dir)
    last = last_checkpoint(r)
    if args.json:
        d = r.to_dict()
        d.update(disk_bytes=disk, resumable=is_resumable(r), last_checkpoint=str(last) if last else None,
                 train=[{"step": m["step"], "loss": m["loss"], "learning_rate": m["learning_rate"]} for m in train],
                 val=[{"step": m["step"], "val_loss": m["loss"]} for m in val],
                 checkpoints=[c.__dict__ for c in ckpts], samples=samples, exports=exports, log=history)
        print(json.dumps(d, indent=2, default=str))
        return 0
    out = sys.stdout
    out.write(f"Run {r.id}: {r.name}\n")
    out.write(f"  status      {r.status}" + (f" — {r.message}" if r.message else "") + "\n")
    out.write(f"  folder      {r.run_dir} ({human_bytes(disk)})\n")
    out.write(f"  model       {r.model}  [{r.model_fingerprint}]\n")
    out.write(f"  dataset     {r.data}  [{r.data_fingerprint}]\n")
    out.write(f"  started     {_when(r.started_at)}; ended {_when(r.ended_at)}; {_duration(r.duration)};"
              f" {r.sessions} session(s); pid {r.pid} on {r.host}\n")
    out.write(f"  progress    step {r.step} of {r.total_steps}; loss {_num(r.last_loss)};"
              f" validation loss {_num(r.last_val_loss)}; best {_num(r.best_val_loss)}"
              + (f" at step {r.best_step}" if r.best_step is not None else "") + "\n")
    if train:
        first, lastm = train[0], train[-1]
        out.write(f"  train loss  {_num(first['loss'])} (step {first['step']}) -> {_num(lastm['loss'])}"
                  f" (step {lastm['step']}), {len(train)} reports\n")
    if val:
        out.write("  val loss    " + ", ".join(f"{m['step']}: {_num(m['loss'])}" for m in val[-8:]) + "\n")
    out.write("  checkpoints " + (", ".join(
        f"step {c.step}" + (f" (val {_num(c.val_loss)})" if c.val_loss is not None else "")
        + ("" if c.exists else " [missing]") for c in ckpts) or "none") + "\n")
    if last is not None:
        out.write(f"  resumes at  {last.name}\n")
    for e in exports:
        out.write(f"  export      {e['target']}: {e['path']}" + ("" if e["exists"] else " [missing]") + "\n")
    if samples:
        step = samples[-1]["step"]
        out.write(f"  samples (step {step}):\n")
        for s in [s for s in samples if s["step"] == step]:
            out.write(f"    {s['output']!r}  (reference: {s['reference']!r})\n")
    out.write("  config:\n")
    for k, v in r.config.items():
        out.write(f"    {k} = {v!r}\n")
    return 0


def run_resume(args) -> int:
    from finetune_app.cli.progress import ConsolePrinter
    from finetune_app.cli.train import ctrl_c_stops, summary
    from finetune_app.core.runs import open_store, resolve_run, resume_run
    from finetune_app.core.training.control import Control

    with open_store() as store:
        rec = resolve_run(store, args.run)
    print(f"Resuming run {rec.id} ({rec.run_dir})", file=sys.stderr)
    control = Control()
    with ctrl_c_stops(control):
        result = resume_run(rec.id, listeners=[ConsolePrinter(quiet=args.quiet)], control=control,
                            iters=args.iters, epochs=args.epochs)
    print(summary(result))
    return 0 if result.status == "finished" else 130


def run_delete(args) -> int:
    from finetune_app.core.runs import delete_run, disk_usage, human_bytes, open_store, resolve_run

    with open_store() as store:
        rec = resolve_run(store, args.run)
        size = 0 if args.keep_files else disk_usage(rec.run_dir)
        what = f"run {rec.id} ({rec.name})" + ("" if args.keep_files else f" and the files it wrote in {rec.run_dir} "
                                                                          f"(folder: {human_bytes(size)})")
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"Refusing to delete {what} without confirmation: pass --yes.", file=sys.stderr)
                return 2
            answer = input(f"Delete {what}? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                print("Nothing deleted.")
                return 1
        freed = delete_run(store, rec.id, files=not args.keep_files)
    print(f"Deleted {what}" + (f"; freed {human_bytes(freed)}." if freed else "."))
    return 0


def run_import(args) -> int:
    from finetune_app.core.runs import import_run, open_store

    with open_store() as store:
        for folder in args.folders:
            rec = import_run(folder, store)
            print(f"Run {rec.id}: {rec.run_dir} ({rec.status}, step {rec.step} of {rec.total_steps})")
    return 0
