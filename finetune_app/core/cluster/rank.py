"""What each rank of a launched run executes (core/cluster/launch.py starts it through mlx.launch):

    python -m finetune_app.core.cluster.rank --config-json JSON [--resume]

The settings travel inline (other hosts have no copy of this machine's config file or run
folder). Rank 0 prints each event as a marked line on stdout (events.EventLines) for the
launching machine, and records the run; every rank reads pause/resume/stop from stdin, which
the launcher copies to all of them (the ranks then agree on the step). Exit codes as the CLI's.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading


def command(config, *, resume: bool, python: str) -> list[str]:
    """The command line of every rank."""
    return [python, "-m", "finetune_app.core.cluster.rank", "--config-json", json.dumps(config.to_dict()),
            *(["--resume"] if resume else [])]


def main(argv: list[str] | None = None) -> int:
    from finetune_app.core.launcher_env import block_sigterm_if_launched

    block_sigterm_if_launched()  # before anything imports MLX (core/distributed.py says why)
    parser = argparse.ArgumentParser(prog="finetune_app.core.cluster.rank")
    parser.add_argument("--config-json", required=True, help="the run's TrainConfig as JSON")
    parser.add_argument("--resume", action="store_true", help="continue the run in its output folder")
    args = parser.parse_args(argv)

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.errors import FinetuneError
    from finetune_app.core.runner import start_run
    from finetune_app.core.training.control import Control
    from finetune_app.core.training.events import EventLines

    control = Control()
    threading.Thread(target=control.follow, args=(sys.stdin,), name="finetune-commands", daemon=True).start()
    try:
        config = TrainConfig.from_dict(json.loads(args.config_json), source="--config-json")
        start_run(config, resume=args.resume, listeners=[EventLines()], control=control)
    except FinetuneError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    # Stopped or finished: a stop was agreed by every rank, so it is no failure here (a non-zero
    # exit would make mlx.launch kill the other ranks); the launching machine reports the outcome.
    return 0


if __name__ == "__main__":
    sys.exit(main())
