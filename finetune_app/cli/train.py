"""`finetune-app train`: the engine headless, with a progress bar and scriptable exit codes."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from finetune_app.core.config import DEFAULT_EPOCHS, PRESETS, TrainConfig, apply_preset, is_unset, settings


def comma_list(text: str) -> list[str] | None:
    """A list setting on the command line: comma-separated; empty or "none": none."""
    return None if is_unset(text) else [t.strip() for t in text.split(",") if t.strip()] or None


def optional_value(kind: type):
    """An optional number or word on the command line: "" or "none" (any case) is None (not set)."""
    def parse(text: str):
        if is_unset(text):
            return None
        try:
            return kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, or \"\" / none for not set (got {text!r})") from None
    parse.__name__ = kind.__name__
    return parse


def add_setting_flags(p) -> None:
    """One flag per TrainConfig setting, generated from its declaration (core.config.settings()).
    A flag not given is absent from the parsed args, so it changes nothing."""
    for s in settings():
        kw = dict(dest=s.name, default=argparse.SUPPRESS,
                  help=("Turn off (on by default): " if s.kind is bool and s.default else "") + s.help)
        if s.choices and s.name != "data_format":
            kw["help"] += " One of: " + ", ".join(str(v) for _, v in s.choices if v is not None) + "."
        kw["help"] = kw["help"].replace("%", "%%")  # argparse formats help with %
        if s.kind is bool:
            p.add_argument(s.flag, action="store_false" if s.default else "store_true", **kw)
        else:
            kind = comma_list if s.kind is list else optional_value(s.kind) if s.optional else s.kind
            p.add_argument(s.flag, type=kind, **kw)


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model on a dataset",
                       description="Fine-tune a base model on a dataset. Settings come from the defaults, then "
                       "--preset, then --config FILE (TOML), then flags.")
    add_setting_flags(p)
    p.add_argument("--config", dest="config_file", default=None, help="TOML file with settings")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="start from a preset")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="print only reports, no samples")
    d = p.add_argument_group("several machines (data parallel over mlx.launch)")
    d.add_argument("--hostfile", default=None, metavar="FILE",
                   help="mlx.launch host file: check every host, then train on all of them (this machine first)")
    d.add_argument("--backend", default=None, help="override the host file's back-end (ring, jaccl, mpi, nccl)")
    d.add_argument("--skip-host-check", action="store_true", help="launch without checking the hosts first")
    p.set_defaults(func=run)


def build_config(args) -> tuple[TrainConfig, bool]:
    resume = bool(args.resume)
    if resume:
        cfg = saved_run_config(args)
    else:
        cfg = TrainConfig()
        if args.preset:
            cfg = apply_preset(cfg, args.preset)
    given = vars(args)
    changes = {s.name: given[s.name] for s in settings() if s.name in given}
    from_file = {}
    if not resume and args.config_file:
        from_file = {k: v for k, v in TrainConfig.load(args.config_file).to_dict().items()
                     if v != getattr(TrainConfig(), k)}
        cfg = cfg.replace(**from_file)
    if "iters" in changes:
        changes.setdefault("epochs", None)
    elif "epochs" in changes:
        changes["iters"] = None
    cfg = cfg.replace(**changes)
    if not resume and cfg.iters is None and cfg.epochs is None:
        cfg = cfg.replace(epochs=DEFAULT_EPOCHS)
    if from_file:
        check_file_values(cfg, set(from_file) - set(changes), args.config_file)
    return cfg, resume


def check_file_values(cfg: TrainConfig, names: set, file: str) -> None:
    """A bad value that came from the --config file (and no flag replaces) is named with the file."""
    from finetune_app.core.errors import ConfigError

    bad = {k: v for k, v in cfg.problems().items() if k in names}
    if bad:
        lines = "; ".join(f"{k} {v} (got {getattr(cfg, k)!r})" for k, v in bad.items())
        raise ConfigError(f"Invalid settings in {file}: {lines}.", "Correct these values in the file and start again.",
                          file=file, field=next(iter(bad)))


def saved_run_config(args) -> TrainConfig:
    """`--resume DIR`: the run's own settings (flags may then change only what a resume allows,
    see core.run_folder.check_resume_changes, which the engine applies)."""
    from finetune_app.core.errors import ConfigError
    from finetune_app.core.run_folder import CONFIG_FILE, config_path, read_config

    folder = Path(args.resume).expanduser()
    if args.preset or args.config_file:
        raise ConfigError(f"--resume {folder} trains with the run's own settings ({CONFIG_FILE}); "
                          "--preset and --config cannot change them.",
                          "Drop --preset/--config (steps, intervals and the learning rate can be given as flags), "
                          "or start a new run in a new folder.", file=folder / CONFIG_FILE)
    if not config_path(folder).is_file():
        raise ConfigError(f"'{folder}' holds no run to resume (no {CONFIG_FILE}).",
                          "Pass the run folder of an earlier `finetune-app train` (see `finetune-app runs list`).",
                          file=folder)
    return read_config(folder).replace(output=str(args.resume))


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


def run_on_hosts(args) -> int:
    """`train --hostfile`: check the hosts, then launch (core.runner); a host that drops out is
    explained by the launch (exit 75)."""
    import dataclasses

    from finetune_app.cli.hosts import print_checks
    from finetune_app.core.cluster.check import absolute, check_hosts
    from finetune_app.core.cluster.hosts import read_hostfile

    hosts = read_hostfile(args.hostfile)
    if args.backend:
        hosts = dataclasses.replace(hosts, backend=args.backend)
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
    return train(cfg, resume=resume, quiet=args.quiet, hosts=hosts)


def train(cfg: TrainConfig, *, resume: bool, quiet: bool, hosts=None) -> int:
    """Train with a progress bar (core.runner.start_run); Ctrl-C stops and saves. Exit 0 when
    finished, 130 when stopped; errors are the caller's (cli.main turns them into exit codes)."""
    from finetune_app.cli.progress import ConsolePrinter
    from finetune_app.core.distributed import world
    from finetune_app.core.runner import start_run
    from finetune_app.core.training.control import Control

    control = Control()
    without_torch(cfg.model, read_ahead_here=hosts is None)
    with ctrl_c_stops(control):
        result = start_run(cfg, resume=resume, listeners=[ConsolePrinter(quiet=quiet)], control=control,
                           hosts=hosts).result
    if hosts is None and not world().is_main:  # under mlx.launch only rank 0 prints
        return 0
    print(summary(result))
    return 0 if result.status == "finished" else 130


def without_torch(model: str, *, read_ahead_here: bool = True) -> None:
    """transformers is imported as if torch were absent where the model is served as trained that
    way (transformers_without_torch.serves_the_same: text models and the VLMs whose processor
    mlx-vlm builds the same with torch or not), which saves its import (2.6 s of torch alone on the
    H200 host, more through transformers' torch-side modules) where torch is installed (#16
    textwarm, vlmtorch). This process loads nothing but this model, so no other processor can need
    torch later. On a GPU the model's weights start being read during those imports
    (models.read_ahead, #16 readearly; a VLM's too since vlmtorch), unless this process only
    launches the run on several machines (`read_ahead_here=False`: it loads no model). A folder
    that cannot be read here is left to the loader, which says what is wrong with it."""
    from finetune_app.core.errors import FinetuneError
    from finetune_app.core.models import looks_like_hub_id, model_kind, read_ahead, read_config
    from finetune_app.core.patches import transformers_without_torch

    folder = Path(str(model)).expanduser()
    try:
        if not (folder / "config.json").is_file() and looks_like_hub_id(str(model)):
            from huggingface_hub import try_to_load_from_cache  # (a snapshot already downloaded; no network)

            found = try_to_load_from_cache(str(model), "config.json")
            folder = Path(found).parent if isinstance(found, str) else folder
        if not (folder / "config.json").is_file():
            return
        config = read_config(folder)
        kind = model_kind(config)
        if read_ahead_here:
            read_ahead(folder, kind)
        if transformers_without_torch.serves_the_same(kind, config.get("model_type", "")):
            transformers_without_torch.hide()
    except (FinetuneError, OSError, ValueError):
        pass


def summary(result) -> str:
    """The last line of a run: how it ended, its losses when known, and where the adapter is."""
    def num(x):
        return x if x is None else round(x, 4)

    losses = ("" if result.final_loss is None and result.final_val_loss is None else
              f", final loss {num(result.final_loss)}, validation loss {num(result.final_val_loss)}")
    return (f"{result.status}: step {result.step}/{result.total_steps}{losses}, {result.seconds:.1f} s. "
            f"Adapter: {result.run_dir}")


def run(args) -> int:
    if getattr(args, "hostfile", None):
        return run_on_hosts(args)
    cfg, resume = build_config(args)
    return train(cfg, resume=resume, quiet=args.quiet)
