"""`finetune-app train`: the engine headless, with a progress bar and scriptable exit codes."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from finetune_app.core.config import PRESETS, TrainConfig, apply_preset

# flag -> TrainConfig field (flags keep these spellings: scripts and docs rely on them)
FLAGS = {
    "--model": "model", "--data": "data", "--output": "output", "--iters": "iters", "--epochs": "epochs",
    "--batch-size": "batch_size", "--learning-rate": "learning_rate", "--lora-rank": "lora_rank",
    "--lora-alpha": "lora_alpha", "--lora-dropout": "lora_dropout", "--seed": "seed", "--save-every": "save_every",
    "--fine-tune-type": "fine_tune_type", "--quantize-bits": "quantize_bits", "--optimizer": "optimizer",
    "--lr-schedule": "lr_schedule", "--warmup-steps": "warmup_steps", "--grad-accumulation": "grad_accumulation",
    "--grad-clip": "grad_clip", "--max-length": "max_length", "--steps-per-eval": "steps_per_eval",
    "--steps-per-report": "steps_per_report", "--valid-fraction": "valid_fraction",
    "--keep-checkpoints": "keep_checkpoints", "--sample-count": "sample_count", "--data-format": "data_format",
    "--image-size": "image_size", "--weight-decay": "weight_decay", "--serve-target": "serve_target",
}
TYPES = {"iters": int, "epochs": float, "batch_size": int, "learning_rate": float, "lora_rank": int,
         "lora_alpha": float, "lora_dropout": float, "seed": int, "save_every": int, "quantize_bits": int,
         "warmup_steps": int, "grad_accumulation": int, "grad_clip": float, "max_length": int,
         "steps_per_eval": int, "steps_per_report": int, "valid_fraction": float, "keep_checkpoints": int,
         "sample_count": int, "image_size": int, "weight_decay": float}
SWITCHES = {"--grad-checkpoint": "grad_checkpoint", "--train-vision": "train_vision",
            "--train-projector": "train_projector", "--quantize-vision": "quantize_vision",
            "--strict-data": "strict_data"}


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model on a dataset",
                       description="Fine-tune a base model on a dataset. Settings come from the defaults, then "
                       "--preset, then --config FILE (TOML), then flags.")
    for flag, name in FLAGS.items():
        p.add_argument(flag, dest=name, type=TYPES.get(name, str), default=None, help=TrainConfig.help(name))
    for flag, name in SWITCHES.items():
        p.add_argument(flag, dest=name, action="store_true", default=None, help=TrainConfig.help(name))
    p.add_argument("--no-completion-only", dest="completion_only", action="store_false", default=None,
                   help="learn the whole conversation, not only the answers")
    p.add_argument("--lora-targets", dest="lora_targets", default=None, help="comma-separated layer names (default: all attention and MLP projections)")
    p.add_argument("--report-to", dest="report_to", default=None, help="comma-separated trackers: tensorboard, wandb, mlflow (default: none)")
    p.add_argument("--config", dest="config_file", default=None, help="TOML file with settings")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="start from a preset")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only reports, no samples")
    d = p.add_argument_group("several machines (data parallel over mlx.launch)")
    d.add_argument("--hostfile", default=None, metavar="FILE",
                   help="mlx.launch host file: check every host, then train on all of them (this machine first)")
    d.add_argument("--backend", default=None, help="override the host file's back-end (ring, jaccl, mpi, nccl)")
    d.add_argument("--skip-host-check", action="store_true", help="launch without checking the hosts first")
    # what the launched ranks are given (core/cluster/launch.py)
    p.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--events-stdout", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--control-stdin", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def build_config(args) -> tuple[TrainConfig, bool]:
    resume = bool(args.resume)
    if getattr(args, "config_json", None):  # a launched rank: the whole config, inline
        import json

        cfg = TrainConfig.from_dict(json.loads(args.config_json), source="--config-json")
        if resume:
            cfg = cfg.replace(output=str(args.resume))
    elif resume:
        cfg = saved_run_config(args)
    else:
        cfg = TrainConfig()
        if args.preset:
            cfg = apply_preset(cfg, args.preset)
        if args.config_file:
            file_cfg = TrainConfig.load(args.config_file)
            cfg = cfg.replace(**{k: v for k, v in file_cfg.to_dict().items() if v != getattr(TrainConfig(), k)})
    changes = {name: getattr(args, name) for name in list(FLAGS.values()) + list(SWITCHES.values()) + ["completion_only"]
               if getattr(args, name, None) is not None}
    if getattr(args, "lora_targets", None):
        changes["lora_targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if getattr(args, "report_to", None) is not None:
        changes["report_to"] = [t.strip() for t in args.report_to.split(",") if t.strip()] or None
    if "iters" in changes:
        changes.setdefault("epochs", None)
    elif "epochs" in changes:
        changes["iters"] = None
    cfg = cfg.replace(**changes)
    if not resume and cfg.iters is None and cfg.epochs is None:
        cfg = cfg.replace(epochs=3.0)
    return cfg, resume


def saved_run_config(args) -> TrainConfig:
    """`--resume DIR`: the run's own settings (flags may then change only what a resume allows,
    see core.run_folder.check_resume_changes, which the engine applies)."""
    from finetune_app.core.errors import ConfigError
    from finetune_app.core.run_folder import CONFIG_FILE

    folder = Path(args.resume).expanduser()
    if args.preset or args.config_file:
        raise ConfigError(f"--resume {folder} trains with the run's own settings ({CONFIG_FILE}); "
                          "--preset and --config cannot change them.",
                          "Drop --preset/--config (steps, intervals and the learning rate can be given as flags), "
                          "or start a new run in a new folder.", file=folder / CONFIG_FILE)
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"'{folder}' holds no run to resume (no {CONFIG_FILE}).",
                          "Pass the run folder of an earlier `finetune-app train` (see `finetune-app runs list`).",
                          file=folder)
    return TrainConfig.load(folder / CONFIG_FILE).replace(output=str(args.resume))


@contextlib.contextmanager
def ctrl_c_stops(control):
    """While training: Ctrl-C stops after the step and saves a checkpoint; a second one aborts."""
    def on_sigint(signum, frame):
        if control.stop_requested:
            raise KeyboardInterrupt
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)...", file=sys.stderr)
        control.stop(save=True)

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def read_control(control, stream) -> None:
    """Commands from the launching machine, one per line (mlx.launch copies its stdin to every rank)."""
    for line in stream:
        word = line.strip().lower()
        if word == "pause":
            control.pause()
        elif word == "resume":
            control.resume()
        elif word in ("stop", "stop-discard"):
            control.stop(save=word == "stop")


def run_on_hosts(args) -> int:
    """`train --hostfile`: check the hosts, launch, follow rank 0, explain a host that drops out."""
    from finetune_app.cli.hosts import print_checks
    from finetune_app.cli.progress import ConsolePrinter
    from finetune_app.core.cluster.check import check_hosts
    from finetune_app.core.cluster.hosts import read_hostfile
    from finetune_app.core.cluster.launch import DistributedRun

    import dataclasses

    hosts = read_hostfile(args.hostfile)
    if args.backend:
        hosts = dataclasses.replace(hosts, backend=args.backend)
    from finetune_app.core.cluster.check import absolute

    cfg, resume = build_config(args)
    cfg = cfg.replace(model=absolute(cfg.model), data=absolute(cfg.data), output=str(Path(cfg.output).expanduser().resolve()))
    if not resume:
        cfg.validate()
    problems = hosts.problems()
    if problems:
        print("error: " + " ".join(problems), file=sys.stderr)
        return 5
    if not args.skip_host_check:
        checks = check_hosts(hosts, cfg.model, cfg.data)
        print_checks(checks)
        if not all(c.ok for c in checks):
            print("error: not every host is ready (see above).", file=sys.stderr)
            return 5
    launch = DistributedRun(hosts, cfg, resume=resume, listeners=[ConsolePrinter(quiet=args.quiet)])
    launch.start()
    old = signal.signal(signal.SIGINT, lambda *_: launch.send("stop"))
    try:
        outcome = launch.wait()
    finally:
        signal.signal(signal.SIGINT, old)
    print(f"{outcome.status}: step {outcome.step}. {outcome.message + ' ' if outcome.status == 'failed' else ''}"
          f"Run folder: {outcome.run_dir}", file=sys.stderr if outcome.status == "failed" else sys.stdout)
    return {"finished": 0, "stopped": 130}.get(outcome.status, 75)


def run(args) -> int:
    if getattr(args, "hostfile", None):
        return run_on_hosts(args)
    from finetune_app.cli.progress import ConsolePrinter
    from finetune_app.core.training.control import Control
    from finetune_app.core.training.trainer import Trainer

    from finetune_app.core.distributed import world

    cfg, resume = build_config(args)
    control = Control()
    main_rank = world().is_main  # under mlx.launch only rank 0 prints

    if args.control_stdin:
        import threading

        threading.Thread(target=read_control, args=(control, sys.stdin), daemon=True).start()
    with ctrl_c_stops(control):
        if args.events_stdout:
            from finetune_app.core.training.events import EventLines

            printers = [EventLines()] if main_rank else []
        else:
            printers = [ConsolePrinter(quiet=args.quiet)] if main_rank else []
        if main_rank:  # the run history (finetune_app.core.runs); FINETUNE_RECORD_RUNS=0 turns it off
            from finetune_app.core.runs import default_recorder

            printers += [r for r in [default_recorder(cfg, resume=resume)] if r is not None]
        result = Trainer(cfg, listeners=printers, control=control, resume=resume).run()
    if not main_rank or args.events_stdout:
        # launched: the launching machine reports the outcome. A stop was agreed by every rank, so
        # it is no failure here: a non-zero exit would make mlx.launch kill the other ranks.
        return 0
    print(f"{result.status}: step {result.step}/{result.total_steps}, final loss "
          f"{result.final_loss if result.final_loss is None else round(result.final_loss, 4)}, "
          f"validation loss {result.final_val_loss if result.final_val_loss is None else round(result.final_val_loss, 4)}, "
          f"{result.seconds:.1f} s. Adapter: {result.run_dir}")
    return 0 if result.status == "finished" else 130
