"""report_to: one short run logs to TensorBoard, W&B (offline) and MLflow (local file store), and
each tracker's own reader finds the loss values of metrics.jsonl and the run's settings; a tracker
whose package is missing is refused before the model loads, naming the extra to install."""

from __future__ import annotations

import glob
import json
import sys

import pytest

from finetune_app.core.training.events import MetricsLog


@pytest.fixture(scope="module")
def tracked(tiny_model, instruction_data, tmp_path_factory):
    import os

    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(instruction_data), output=str(run_dir), iters=4,
                      batch_size=2, lora_rank=4, steps_per_report=1, steps_per_eval=2, save_every=100,
                      sample_count=1, sample_max_tokens=4, seed=0, report_to=["tensorboard", "wandb", "mlflow"],
                      eval_metrics=["chrf"], eval_samples=2)
    saved = {k: os.environ.pop(k, None) for k in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI", "WANDB_SILENT")}
    os.environ["WANDB_SILENT"] = "true"
    try:
        assert Trainer(cfg).run().status == "finished"
    finally:
        os.environ.pop("WANDB_SILENT", None)
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
    rows = MetricsLog.read(run_dir / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r["kind"] == "val"]
    assert [s for s, _ in train] == [1, 2, 3, 4] and [s for s, _ in val] == [2, 4]
    scores = [(r["step"], r["metrics"]["chrf"]) for r in rows if r["kind"] == "eval"]  # evaluation during training
    assert [s for s, _ in scores] == [2, 4]
    return run_dir, train, val, cfg, scores


def test_tensorboard_reader_parses_the_same_losses(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, train, val, cfg, scores = tracked
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in got] == [s for s, _ in train]
    assert [v for _, v in got] == pytest.approx([v for _, v in train], rel=1e-6)  # float32 in the event file
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("val/val_loss")] == val
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("eval/chrf")] == scores
    assert "train/learning_rate" in acc.Tags()["scalars"] and "train/tokens_per_second" in acc.Tags()["scalars"]
    settings = acc.Tensors("settings")[0].tensor_proto.string_val[0].decode()
    assert f"| learning_rate | {cfg.learning_rate} |" in settings
    assert acc.Tensors("samples")  # the sample captions, as text


def _wandb_records(path):
    """Records of an offline .wandb file (LevelDB log framing of W&B's own protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending, out = open(path, "rb").read(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        n, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def test_wandb_logs_offline_with_the_same_losses_and_settings(tracked):
    run_dir, train, val, cfg, scores = tracked
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1  # offline: no API key here
    records = _wandb_records(files[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    got = [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert got == train
    assert [(h["_step"], h["val/val_loss"]) for h in history if "val/val_loss" in h] == val
    assert [(h["_step"], h["eval/chrf"]) for h in history if "eval/chrf" in h] == scores
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "run"
              for i in r.run.config.update}
    assert config["learning_rate"] == cfg.learning_rate and config["lora_rank"] == 4


def test_mlflow_logs_to_a_local_store_with_the_same_losses_and_settings(tracked):
    from mlflow.tracking import MlflowClient

    run_dir, train, val, cfg, scores = tracked
    client = MlflowClient((run_dir / "mlruns").as_uri())
    run_id = (run_dir / ".mlflow-run-id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == train
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/val_loss")] == val
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/chrf")] == scores
    assert run.data.params["learning_rate"] == str(cfg.learning_rate) and run.data.params["report_to"] == "tensorboard,wandb,mlflow"


def test_a_missing_tracker_package_names_the_extra_before_loading(tiny_model, instruction_data, tmp_path, monkeypatch, capsys):
    from finetune_app.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # what an install without the extra looks like
    code = main(["train", "--model", "does-not-matter-it-is-refused-first", "--data", str(instruction_data),
                 "--output", str(tmp_path / "run"), "--iters", "1", "--report-to", "tensorboard,wandb"])
    err = capsys.readouterr().err
    assert code == 5 and 'pip install "finetune-app[wandb]"' in err and "report_to" in err
    assert not (tmp_path / "run").exists()
    code = main(["train", "--model", "m", "--data", str(instruction_data), "--output", str(tmp_path / "run"),
                 "--iters", "1", "--report-to", "comet"])
    assert code == 5 and "report_to" in capsys.readouterr().err


def test_a_tracker_that_cannot_start_stops_the_run_with_its_reason(tiny_model, instruction_data, tmp_path, monkeypatch, capsys):
    from finetune_app.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    code = main(["train", "--model", str(tiny_model("llama")), "--data", str(instruction_data),
                 "--output", str(tmp_path / "run"), "--iters", "1", "--report-to", "mlflow", "--quiet"])
    err = capsys.readouterr().err
    assert code == 5 and "mlflow tracker could not start" in err and "MLFLOW_TRACKING_URI" in err
    assert not list((tmp_path / "run").glob("checkpoints/*"))
