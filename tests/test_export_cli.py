"""`finetune-app export`: output, exit codes, refusals, and safety.

Done-when (4): an export killed midway (SIGKILL while the staging folder exists) leaves no bundle at
the destination; the next export to the same place removes the dead staging folder and succeeds.
Also: refusing to overwrite without --force, the disk-space check, no absolute paths of this
machine in the bundle, a failure while writing leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")

from test_export_support import make_adapter

from finetune_app.cli import main
from finetune_app.core.export import paths
from finetune_app.testing.tiny_models import cached_tiny_model


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return make_adapter("qwen2", tmp_path_factory.mktemp("cli") / "run")


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    return make_adapter("qwen2_vl", tmp_path_factory.mktemp("cli-vlm") / "run")


def stages(dest: Path) -> list[Path]:
    return list(dest.parent.glob(f".{dest.name}.staging-*"))


def test_adapter_export_prints_verification_and_files(text_run, tmp_path, capsys):
    out = tmp_path / "adapter-out"
    rc = main(["export", "--adapter", str(text_run), "--target", "adapter", "--output", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors", "train_config.toml"]
    assert "Verification (mlx_lm.load(base, adapter_path=...)): passed" in printed
    assert "adapters.safetensors" in printed and "total" in printed
    assert "max |logit difference| vs base+adapter" in printed
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["finetune_app"]["base_model"] == cached_tiny_model("qwen2").name  # no absolute path
    assert paths.find_machine_paths(out, [tmp_path, text_run, cached_tiny_model("qwen2")]) == []
    toml = (out / "train_config.toml").read_text()
    assert str(tmp_path) not in toml and str(Path.home()) not in toml
    # the exported adapter still loads with the library (its base given explicitly)
    import mlx_lm

    mlx_lm.load(str(cached_tiny_model("qwen2")), adapter_path=str(out))


def test_refuses_overwrite_without_force(text_run, tmp_path, capsys):
    out = tmp_path / "fused"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["export", "--adapter", str(text_run), "--target", "mlx-lm", "--output", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    rc = main(["export", "--adapter", str(text_run), "--target", "mlx-lm", "--output", str(out), "--force",
               "--no-verify", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verification"] is None and result["target"] == "mlx-lm"
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert stages(out) == []


def test_usage_errors_have_config_exit_code(text_run, vlm_run, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["export", "--adapter", str(text_run), "--target", "adapter", "--quantize", "4", "--output", out]) == 5
    assert main(["export", "--adapter", str(text_run), "--target", "mlx-lm", "--mlpackage", out, "--output", out]) == 5
    assert main(["export", "--adapter", str(vlm_run), "--target", "mlx-lm", "--output", out]) == 5
    assert main(["export", "--adapter", str(vlm_run), "--target", "mlx-swift", "--output", out]) == 5
    assert main(["export", "--adapter", str(tmp_path / "nothing"), "--target", "mlx-vlm", "--output", out]) == 6
    assert not Path(out).exists()


def test_not_enough_disk_space(text_run, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "full-disk"
    rc = main(["export", "--adapter", str(text_run), "--target", "mlx-lm", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Not enough free disk space" in err and "and 1.0 KB is free" in err and "needs about" in err
    assert not out.exists() and stages(out) == []


def test_failure_while_writing_leaves_nothing(text_run, tmp_path, monkeypatch):
    from finetune_app.core.export import bundle_mlx
    from finetune_app.core.export.export import ExportOptions, export

    def broken(*a, **k):
        raise OSError("disk went away")

    monkeypatch.setattr(bundle_mlx, "save_config", broken)
    out = tmp_path / "broken"
    with pytest.raises(OSError):
        export(ExportOptions(output=out, target="mlx-lm", adapter=text_run))
    assert not out.exists() and stages(out) == []


def test_killed_export_leaves_no_bundle(vlm_run, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "finetune_app", "export", "--adapter", str(vlm_run),
                             "--target", "mlx-vlm", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    caught = False
    while time.monotonic() < deadline and proc.poll() is None:
        found = stages(out)
        if found and any(found[0].iterdir()):  # the staging folder exists and is being written
            assert not out.exists()
            proc.send_signal(signal.SIGKILL)
            caught = True
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert caught, f"the export finished before the staging folder was seen: {err[-500:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # no half bundle at the destination
    left = stages(out)
    assert left and all(p.name.startswith(".") for p in left)  # only the hidden staging folder
    # the next export to the same destination cleans up after the killed one
    from finetune_app.core.export.export import ExportOptions, export

    export(ExportOptions(output=out, target="mlx-vlm", adapter=vlm_run, verify=False))
    assert (out / "model.safetensors").is_file() and stages(out) == []
