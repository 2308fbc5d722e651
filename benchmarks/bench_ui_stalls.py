"""How long the window's event loop stalls, phase by phase, on the demo (issue 18).

Phases: launch (window built and shown, first paint), setup (the demo built, its model described
and its pictures checked, on background threads, until the form is ready), start (the 3 s after
Start Training),
evaluation and checkpoint (0.5 s either side of each validation report / checkpoint), export (the
export wizard exporting the run's adapter). Each phase's worst stall and p99 are printed; with
--json the figures go to a file for docs/ui.md. A benchmark, not a test: nothing is asserted.

    QT_QPA_PLATFORM=offscreen python3 benchmarks/bench_ui_stalls.py [--iters 120] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=120)
    ap.add_argument("--every", type=int, default=40, help="evaluate and checkpoint every N steps")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="finetune-stall-bench-"))
    os.environ.setdefault("FINETUNE_SETTINGS_DIR", str(work / "settings"))
    os.environ.setdefault("FINETUNE_DATA_DIR", str(work / "appdata"))
    os.environ["FINETUNE_NO_WELCOME"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    # Our modules' bytecode, as an installed app has it (pip and py2app compile it): without it every
    # import compiles the source, one GIL-holding compile() of up to ~40 ms per module, and where
    # PYTHONDONTWRITEBYTECODE is set (this box) on every launch.
    import compileall

    compileall.compile_dir(root / "finetune_app", quiet=1)

    from PySide6.QtCore import QEventLoop, QObject, QTimer, Slot

    from finetune_app.ui.app import create_app
    from finetune_app.ui.stall_meter import StallMeter

    app = create_app([])
    meter = StallMeter(report_over=0.05)
    marks: list[tuple[str, float]] = []  # (event, seconds since the meter started)

    def spin(seconds: float, until=None) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not (until and until()):
            loop = QEventLoop()
            QTimer.singleShot(20, loop.quit)
            loop.exec()

    def now() -> float:
        return time.perf_counter() - meter._t0

    from finetune_app.ui.main_window import DEMO_SETTINGS, MainWindow
    from finetune_app.ui.workers import Task, build_demo

    t0 = time.perf_counter()
    window = MainWindow()  # built before anything is on screen: reported, not a stall anyone sees
    window.resize(1300, 850)
    construct_ms = (time.perf_counter() - t0) * 1000
    meter.start()
    t_launch = now()
    window.show()  # launch: the window on screen, its first paints, the history read at start-up
    window.maybe_show_welcome()
    spin(2.0)
    t_launch_end = now()

    t_setup = now()
    demo = Task(lambda t: build_demo(Path(os.environ["FINETUNE_DATA_DIR"]) / "demo", t), name="demo", uses_mlx=True)
    got = []
    demo.succeeded.connect(got.append)
    demo.start()
    spin(300, lambda: bool(got))
    window._on_demo_ready(got[0])
    spin(120, lambda: window.model_choice is not None and window.dataset_check is not None
         and not window.browser.is_busy())
    window.form.set_config(window.form.config().replace(**{**DEMO_SETTINGS, "iters": args.iters,
                                                            "steps_per_eval": args.every,
                                                            "save_every": args.every, "output": ""}))
    t_setup_end = now()
    window.form.memory_warning = lambda: None  # no dialog in a benchmark
    t_start = now()
    assert window.start_training(), window.why_not_ready()
    run = window.run

    class Marker(QObject):  # queued slots need a receiver on the GUI thread (see TrainingRun.connect)
        @Slot(object)
        def evaluation(self, _r) -> None:
            marks.append(("evaluation", now()))

        @Slot(int, str)
        def checkpoint(self, *_a) -> None:
            marks.append(("checkpoint", now()))

    marker = Marker()
    run.connect(valReport=marker.evaluation, checkpointSaved=marker.checkpoint)
    spin(3600, lambda: window.training.state in ("finished", "stopped", "failed"))
    run.wait(60000)
    t_ended = now()
    spin(1.0)  # a person reads the result before opening the export wizard

    t_export = now()  # the export: the wizard opened (as File > Export does), its pages, the export
    from finetune_app.ui import export_wizard as ew

    wiz = ew.ExportWizard(window, model=str(window.model_choice.path), adapter=run.config.output,
                          output=str(work / "export"))
    wiz.show()
    wiz.source.buttons["mlx-vlm"].setChecked(True)
    for _ in range(3):
        wiz.next()
    wiz.next()  # Export
    spin(600, lambda: wiz.currentId() == ew.PAGE_RESULT or bool(wiz.progress_page.error))
    t_export_end = now()
    meter.stop()

    # (when the wait began, gap, ran, waited for a core): a stall counts in the phase it began in
    # (one that began before Start was clicked is not the start's)
    ticks = list(zip(meter.since, meter.gaps, meter.ran, meter.waits))

    def blocked(gap: float, ran: float, wait: float) -> float:
        """Of a tick's lateness, the time the window's thread neither ran nor waited for a core:
        blocked on the GIL (or I/O). The tick's own interval counts as idle."""
        return max(0.0, min(gap, meter.interval + gap - ran - wait))

    def phase(lo: float, hi: float) -> dict:
        """Worst and p99 stall, and (Linux) the worst time blocked on another thread: the stall
        less the window's own work and its wait for a free core (a busy shared machine)."""
        inside = [(g, r, w) for tt, g, r, w in ticks if lo <= tt <= hi]
        gaps = sorted(g for g, _, _ in inside)
        if not gaps:
            return {"ticks": 0, "max_ms": 0.0, "p99_ms": 0.0, "max_blocked_ms": 0.0, "max_own_work_ms": 0.0}
        return {"ticks": len(gaps), "max_ms": round(gaps[-1] * 1000, 1),
                "p99_ms": round(gaps[min(len(gaps) - 1, int(0.99 * (len(gaps) - 1)))] * 1000, 1),
                "max_blocked_ms": round(max(blocked(*x) for x in inside) * 1000, 1),
                "max_own_work_ms": round(max(min(g, r) for g, r, _ in inside) * 1000, 1)}

    spans = {"launch": (t_launch, t_launch_end), "setup": (t_setup, t_setup_end), "start": (t_start, t_start + 3.0),
             "end of run": (t_ended - 0.5, t_ended + 1.0)}
    result = {name: phase(lo, hi) for name, (lo, hi) in spans.items()}
    for kind in ("evaluation", "checkpoint"):
        times = [tt for k, tt in marks if k == kind]
        worst = [phase(tt - 0.5, tt + 0.5) for tt in times]
        result[kind] = max(worst, key=lambda p: p["max_ms"]) if worst else {"ticks": 0, "max_ms": 0.0}
        result[kind]["events"] = len(times)
        result[kind]["max_ms_each"] = [p["max_ms"] for p in worst]
    result["export"] = phase(t_export, t_export_end)
    spans["export"] = (t_export, t_export_end)
    result["window_construction_ms"] = round(construct_ms, 1)
    # the box is shared: how busy it was (1-minute load average before and after)
    result["load_average"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=2))
    print("worst stalls overall:\n" + meter.worst(8))

    def where(t: float) -> str:
        return next((name for name, (lo, hi) in spans.items() if lo <= t <= hi), "between phases")


    def where_mark(t: float) -> str:
        near = [k for k, tt in marks if tt - 0.5 <= t <= tt + 0.5]
        return "/".join(sorted(set(near)))

    print("stalls over 50 ms by phase:")
    for (t, gap, stacks), i in zip(meter.stalls, meter.stall_ticks):
        g, r, w = ticks[i][1:]
        print(f"  {(where_mark(t) or where(t)):21s} {gap * 1000:5.0f} ms at {t:6.2f} s (ran {r * 1000:3.0f}, waited for a core "
              f"{w * 1000:3.0f}, blocked {blocked(g, r, w) * 1000:3.0f} ms): " + " | ".join(stacks))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    window.shutdown()
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
