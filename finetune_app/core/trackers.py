"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) as engine event listeners.

`TrainConfig.report_to` picks any subset. Each tracker logs what metrics.jsonl records (every
number of a train or validation report, at its step; sample captions as text) and the run's
settings, through its own client library, imported only when chosen. Where they write:
TensorBoard `RUN/tensorboard/`; W&B `RUN/wandb/`, offline unless an API key is configured and the
service answers (WANDB_MODE overrides); MLflow `MLFLOW_TRACKING_URI`, else a file store in
`RUN/mlruns/`. A tracker that fails while logging is dropped with a warning: the run goes on.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import time
import uuid
from pathlib import Path

from finetune_app.core.config import TRACKERS, TrainConfig
from finetune_app.core.errors import ConfigError
from finetune_app.core.training.events import (EvalReport, ObjectiveReport, SampleReport, StateChanged, TrainReport,
                                               ValReport)

log = logging.getLogger(__name__)
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
ENDED = ("finished", "stopped", "failed")


def require(names) -> None:
    """Import each chosen tracker's library now (before the model loads), or say which extra to install."""
    for name in names or ():
        if name not in TRACKERS:
            raise ConfigError(f"Unknown tracker '{name}' in report_to.", f"Choose any of: {', '.join(TRACKERS)}.",
                              field="report_to")
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise ConfigError(f"report_to includes '{name}', but its package is not installed.",
                              f'Install it with: pip install "finetune-app[{name}]" (or remove {name} from report_to).',
                              field="report_to") from None


def scalars(event) -> dict[str, float]:
    """The numbers of a train/val report, named `train/<field>` and `val/<field>` (as in metrics.jsonl);
    an eval report's scores as `eval/<metric>`; an objective's report (GRPO's rewards) as
    `train/<name>`, or `val/<name>` when held out."""
    if isinstance(event, EvalReport):
        return {f"eval/{k}": float(v) for k, v in event.metrics.items()}
    if isinstance(event, ObjectiveReport):
        prefix = "train" if event.split == "train" else "val"
        return {f"{prefix}/{k}": float(v) for k, v in event.metrics.items() if isinstance(v, (int, float))}
    if not isinstance(event, (TrainReport, ValReport)):
        return {}
    prefix = "train" if isinstance(event, TrainReport) else "val"
    out = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if f.name in ("step", "total_steps", "kind") or isinstance(value, (bool, tuple, str)) or value is None:
            continue
        if isinstance(value, dict):  # the objective's metrics (DPO: reward_accuracy, ...): train/<name>
            out.update({f"{prefix}/{k}": float(v) for k, v in value.items()})
            continue
        out[f"{prefix}/{f.name}"] = float(value)
    return out


def samples_text(event: SampleReport) -> str:
    return "\n\n".join(f"**{i.index}** {i.prompt}\n\n- reference: {i.reference}\n- output: {i.output}" for i in event.items)


def settings(cfg: TrainConfig) -> dict[str, str | int | float | bool]:
    """Flat settings for trackers that take scalars only (lists joined, unset left out)."""
    out = {}
    for k, v in cfg.to_dict().items():
        if v is None:
            continue
        out[k] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return out


def _remembered_id(run_dir: Path, name: str, make) -> str:
    """The tracker's run id kept in the run folder, so a resumed run continues the same record."""
    path = run_dir / f".{name}-run-id"
    try:
        return path.read_text(encoding="utf-8").strip() or make()
    except OSError:
        rid = make()
        from finetune_app.core import atomic

        atomic.write_text(path, rid)
        return rid


class Tracker:
    """Base: routes events to log_scalars / log_text and closes when the run ends."""

    def __init__(self):
        self.closed = False

    def __call__(self, event) -> None:
        if self.closed:
            return
        try:
            if isinstance(event, (TrainReport, ValReport, EvalReport, ObjectiveReport)):
                self.log_scalars(event.step, scalars(event))
            elif isinstance(event, SampleReport) and event.items:
                self.log_text(event.step, "samples", samples_text(event))
            elif isinstance(event, StateChanged) and event.state in ENDED:
                self.closed = True
                self.close(event.state)
        except Exception:  # a tracker must not stop a run
            log.warning("%s logging failed; it is switched off for this run", type(self).__name__, exc_info=True)
            self.closed = True

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def log_text(self, step: int, tag: str, text: str) -> None:
        pass

    def close(self, state: str) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files written with TensorBoard's own writer (no TensorFlow or PyTorch needed)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        super().__init__()
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(run_dir / "tensorboard"))
        table = "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in settings(cfg).items())
        self.log_text(0, "settings", table)

    def _event(self, step: int, values):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def log_scalars(self, step, values):
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._event(step, [Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writer.flush()

    def log_text(self, step, tag, text):
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.compat.proto.types_pb2 import DT_STRING

        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = TensorProto(dtype=DT_STRING, string_val=[text.encode("utf-8")], tensor_shape=TensorShapeProto(dim=[]))
        self._event(step, [Summary.Value(tag=tag, metadata=meta, tensor=tensor)])
        self.writer.flush()

    def close(self, state):
        self.writer.close()


def _wandb_online() -> bool:
    """Online only with an API key configured and the service reachable; otherwise offline."""
    import netrc
    import socket

    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
        except (OSError, netrc.NetrcParseError):
            has_key = False
    if not has_key:
        return False
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
        return True
    except OSError:
        return False


class WandbTracker(Tracker):
    def __init__(self, cfg: TrainConfig, run_dir: Path):
        super().__init__()
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_online() else "offline")
        run_id = _remembered_id(run_dir, "wandb", lambda: uuid.uuid4().hex[:8])
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "finetune"), name=run_dir.name, id=run_id,
                              resume="allow", dir=str(run_dir), config=settings(cfg), mode=mode, reinit="create_new")

    def log_scalars(self, step, values):
        self.run.log(values, step=step)

    def log_text(self, step, tag, text):
        self.run.log({tag: text}, step=step)

    def close(self, state):
        self.run.finish(exit_code=0 if state in ("finished", "stopped") else 1)


class MlflowTracker(Tracker):
    """Through MlflowClient (no global active run, so GUI threads do not share state)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        super().__init__()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its file store behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "finetune")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.run_id = _remembered_id(run_dir, "mlflow",
                                     lambda: self.client.create_run(exp_id, run_name=run_dir.name).info.run_id)
        if self.client.get_run(self.run_id).info.status != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        params = [Param(k, str(v)[:6000]) for k, v in settings(cfg).items()]
        known = self.client.get_run(self.run_id).data.params
        fresh = [p for p in params if p.key not in known]  # MLflow params cannot change once set
        if fresh:
            self.client.log_batch(self.run_id, params=fresh)

    def log_scalars(self, step, values):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_text(self, step, tag, text):
        self.client.log_text(self.run_id, text, f"{tag}/step-{step}.md")

    def close(self, state):
        self.client.set_terminated(self.run_id, status={"finished": "FINISHED", "stopped": "KILLED"}.get(state, "FAILED"))


CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def listeners_for(cfg: TrainConfig, run_dir: str | Path) -> list[Tracker]:
    """One listener per tracker in cfg.report_to (after `require`)."""
    require(cfg.report_to)
    out = []
    for name in dict.fromkeys(cfg.report_to or ()):
        try:
            out.append(CLASSES[name](cfg, Path(run_dir)))
        except Exception as exc:  # a tracker asked for but not started: say so before training
            for t in out:
                t.close("failed")
            raise ConfigError(f"The {name} tracker could not start: {type(exc).__name__}: {exc}".rstrip(),
                              f"Check its settings (environment variables such as MLFLOW_TRACKING_URI or WANDB_MODE), "
                              f"or remove {name} from report_to.", field="report_to") from exc
    return out
