"""grad_clip=None ("no cap") is reachable from the CLI and a TOML file and survives the run's saved
config, so a run trained without a cap resumes without one. (The saved config used to read back as the
default 1.0: `train --resume` silently clipped again; the GUI, holding None, refused the resume.)"""

from __future__ import annotations

import contextlib
import io

import pytest

from finetune_app.core.run_folder import read_config
from finetune_app.core.training.events import MetricsLog
from helpers import run_cli


def test_no_cap_from_flags_and_toml(tmp_path):
    from finetune_app.cli import build_parser
    from finetune_app.cli.train import build_config
    from finetune_app.core.config import TrainConfig

    parser = build_parser()
    for text in ("", "none", "None", "NONE"):
        cfg, _ = build_config(parser.parse_args(["train", "--grad-clip", text]))
        assert cfg.grad_clip is None, text
    cfg, _ = build_config(parser.parse_args(["train", "--grad-clip", "0.5", "--image-size", "none"]))
    assert cfg.grad_clip == 0.5 and cfg.image_size is None
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        parser.parse_args(["train", "--grad-clip", "abc"])
    assert "--grad-clip" in err.getvalue() and "'abc'" in err.getvalue() and "none" in err.getvalue()

    # the saved config says "none" where None is not the default, and reads back as None
    path = TrainConfig(grad_clip=None).save(tmp_path / "saved.toml")
    assert 'grad_clip = "none"' in path.read_text() and TrainConfig.load(path).grad_clip is None
    assert TrainConfig.load(TrainConfig().save(tmp_path / "default.toml")).grad_clip == 1.0
    for text in ('""', '"none"', '"None"'):
        (tmp_path / "user.toml").write_text(f"grad_clip = {text}\n")
        cfg, _ = build_config(parser.parse_args(["train", "--config", str(tmp_path / "user.toml")]))
        assert cfg.grad_clip is None, text
    (tmp_path / "bad.toml").write_text('grad_clip = "abc"\n')
    assert "grad_clip" in TrainConfig.load(tmp_path / "bad.toml").problems()


def test_run_without_cap_resumes(tiny_model, instruction_data, tmp_path):
    run = tmp_path / "run"
    first = run_cli("train", "--model", tiny_model("llama"), "--data", instruction_data, "--output", run,
                    "--iters", 2, "--batch-size", 2, "--lora-rank", 4, "--grad-clip", "", "--save-every", 2,
                    "--steps-per-report", 1, "--steps-per-eval", 100, "--sample-count", 0, "--quiet")
    assert first.returncode == 0, first.stderr
    resumed = run_cli("train", "--resume", run, "--iters", 3, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from step-0000002" in resumed.stderr
    rows = [r for r in MetricsLog.read(run / "metrics.jsonl") if r.get("kind") == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert read_config(run).grad_clip is None
    # the step reports a norm only when it clips: the resumed step 3 must not have turned the cap back on
    assert [r.get("grad_norm") for r in rows] == [None, None, None]


def test_side_by_side_tools_train_alike(tmp_path):
    """benchmarks/side_by_side.py hands ours and mlx_vlm.train the same hyperparameters, parsed by the
    tools' own parsers, and none of the tools clips gradients (mlx_lm and mlx_vlm.train's SFT have
    no clipping; ours clips at 1.0 unless told otherwise)."""
    import argparse
    import sys
    from pathlib import Path

    import yaml
    from mlx_lm.lora import build_parser as mlx_lm_parser
    from mlx_vlm.train import parse_args as mlx_vlm_args

    from finetune_app.cli import build_parser
    from finetune_app.cli.train import build_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import side_by_side as sbs

    a = argparse.Namespace(lr=1e-4, batch_size=4, rank=16, max_length=2048, report_every=5, mlx_vlm_flags="")

    def argv(tool, head):
        cmd = sbs.tool_argv(tool, tmp_path / "model", tmp_path / "data", tmp_path / tool, a, steps=16, epochs=1)
        return cmd[cmd.index(head) + 1:]

    ours, _ = build_config(build_parser().parse_args(argv("ours", "finetune_app.cli:main")))
    vlm_args, vlm_settings = mlx_vlm_args(argv("mlx_vlm-best", "mlx_vlm.train"))
    lm_argv = argv("mlx_lm", "lora")
    lm_yaml = yaml.safe_load(Path(lm_argv[lm_argv.index("-c") + 1]).read_text())

    assert ours.grad_clip is None
    assert getattr(vlm_settings, "grad_clip", None) is None
    assert not [x.dest for x in mlx_lm_parser()._actions if "clip" in x.dest]
    assert ours.lora_scale == vlm_args.lora_alpha / vlm_args.lora_rank == lm_yaml["lora_parameters"]["scale"] == 1
    assert ours.lora_rank == vlm_args.lora_rank == lm_yaml["lora_parameters"]["rank"]
    assert ours.lora_dropout == vlm_args.lora_dropout == lm_yaml["lora_parameters"]["dropout"] == 0
    assert ours.weight_decay == vlm_args.weight_decay == lm_yaml["optimizer_config"]["adamw"]["weight_decay"] == 0
    assert ours.optimizer == vlm_args.optimizer == lm_yaml["optimizer"] == "adamw"
    assert (ours.lr_schedule, ours.warmup_steps) == ("constant", 0)
    assert ours.lora_targets is None and vlm_args.target_modules is None  # both: the libraries' own choice
    assert ours.max_length == vlm_settings.max_seq_length == 2048 and ours.completion_only
    assert vlm_settings.train_on_completions and "--mask-prompt" in lm_argv
