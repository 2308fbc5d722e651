"""The app's "several machines" option, driven offscreen: the host list is checked (an
unreachable host is named with the fix), a run on two hosts trains with per-host throughput on
screen, pause reaches both, a host that dies is reported with the checkpoint to resume from, and
History > Resume continues the run on this machine alone.

The two hosts are two processes on this machine (mlx.launch runs 127.0.0.1 without ssh), over
MLX's ring back-end on loopback: the same launch, relay and failure path as separate Macs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def window(app_env, qtbot):
    from finetune_app.ui.main_window import MainWindow

    w = MainWindow()
    w.resize(1300, 900)
    w.show()
    yield w
    if w.run is not None and w.run.is_running():
        w.run.stop(save=False)
        w.run.terminate()
        w.run.wait(60000)
    qtbot.waitUntil(lambda: not w.training.is_running(), timeout=20000)
    w.close()
    w.deleteLater()


def rank_pid(run_dir: str, rank: int) -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                env = open(f"/proc/{name}/environ", "rb").read().split(b"\0")
                cmd = open(f"/proc/{name}/cmdline", "rb").read()
            except OSError:
                continue
            if f"MLX_RANK={rank}".encode() in env and run_dir.encode() in cmd:
                return int(name)
    return None


def test_two_hosts_checked_trained_paused_dropped_and_resumed_alone(window, qtbot, tiny_model, instruction_data):
    from finetune_app.core.cluster.hosts import Host, HostList

    w = window
    w.open_paths([str(instruction_data)])
    w.tabs.setCurrentIndex(1)
    w.picker.source.setEditText(str(tiny_model("llama")))
    qtbot.mouseClick(w.picker.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.model_choice is not None and w.dataset_check is not None
                    and w.dataset_check.exact_tokens and not w.browser.is_busy(), timeout=60000)
    for name, text in (("iters", "400"), ("batch_size", "4"), ("steps_per_report", "2"), ("steps_per_eval", "1000"),
                       ("save_every", "20"), ("sample_count", "0")):
        w.form.fields[name].editor.setText(text)
    assert w.why_not_ready() == ""

    # 1. the option: the hosts must be checked before a run can start; a host that cannot be
    #    reached is named, with the fix
    c = w.cluster
    c.setChecked(True)
    here = Host("127.0.0.1", ("127.0.0.1",))
    c.set_host_list(HostList((here, here, Host("nosuchhost.invalid", ("10.255.255.1",)))))
    assert "Check the hosts" in w.why_not_ready()
    assert not w.training.start_button.isEnabled()
    qtbot.mouseClick(c.check_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: c.check_button.isEnabled() and len(c.checks) == 3, timeout=60000)
    statuses = [c.table.item(r, 3).text() for r in range(3)]
    assert statuses[0].startswith("✓") and statuses[1].startswith("✓"), statuses
    assert statuses[2].startswith("✗ Cannot reach nosuchhost.invalid over ssh") and "ssh-copy-id" in statuses[2]
    assert "Host 2 (nosuchhost.invalid) is not ready" in w.why_not_ready()

    c.table.selectRow(2)
    c.remove_selected()
    assert "Check the hosts" in w.why_not_ready()  # the list changed: its check no longer holds
    qtbot.mouseClick(c.check_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: c.check_button.isEnabled() and len(c.checks) == 2, timeout=60000)
    assert w.why_not_ready() == "", w.why_not_ready()
    assert c.summary.text().startswith("Ready: 2 hosts")

    # 2. train on both: losses arrive, and each host's throughput
    qtbot.mouseClick(w.training.start_button, Qt.MouseButton.LeftButton)
    run_dir = w.run.config.output
    qtbot.waitUntil(lambda: w.training.step >= 4, timeout=120000)
    rates = w.training.host_rates
    assert rates.isVisible() and [r.rank for r in rates.rates] == [0, 1]
    assert rates.rowCount() == 3 and rates.item(2, 1).text() == "all 2 hosts"
    total = sum(r.examples_per_second for r in rates.rates)
    assert float(rates.item(2, 2).text().replace(",", "")) == pytest.approx(total, abs=0.06)

    # 3. pause reaches every rank (nothing advances), resume continues
    qtbot.mouseClick(w.training.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.training.state == "paused", timeout=30000)
    step = w.training.step
    qtbot.wait(1000)
    assert w.training.step == step
    qtbot.mouseClick(w.training.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.training.step >= max(step, 22), timeout=60000)

    # 4. a host dies: the run fails with its name and the checkpoint to resume from
    pid = rank_pid(run_dir, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: w.training.state == "failed", timeout=60000)
    message = w.training.error.text.text()
    assert "Rank 1 on 127.0.0.1 (this machine) dropped out: its process was killed (SIGKILL)" in message, message
    saved = int(message.split("Data-parallel training stopped at step ")[1].split(":")[0])
    assert f"Step {saved} is saved in {run_dir}/checkpoints/step-{saved:07d}" in message
    assert (Path(run_dir) / "checkpoints" / f"step-{saved:07d}" / "adapters.safetensors").is_file()
    qtbot.waitUntil(lambda: w.why_not_ready() == "", timeout=20000)

    # 5. History > Resume: with the option off, the run continues on this machine alone
    from finetune_app.core import runs as core_runs

    store = core_runs.open_store()
    try:
        rec = store.find_by_dir(run_dir)
    finally:
        store.close()
    assert rec is not None and rec.status in ("failed", "interrupted"), rec
    c.setChecked(False)
    w.resume_run(rec.id)
    qtbot.waitUntil(lambda: w.training.state == "finished", timeout=120000)
    assert w.training.step == 400
    assert not w.training.host_rates.isVisible()


def test_host_file_round_trips_through_the_panel(app_env, tmp_path):
    """What the panel opens is what it launches with: back-end, envs and jaccl's RDMA map kept;
    a broken file is named in the panel instead of replacing the list."""
    import json

    from finetune_app.core.cluster.hosts import read_hostfile
    from finetune_app.ui.cluster_panel import ClusterPanel

    text = {"backend": "jaccl", "envs": ["MLX_METAL_FAST_SYNCH=1"],
            "hosts": [{"ssh": "127.0.0.1", "ips": ["10.0.0.1"], "rdma": [None, "rdma_en2"]},
                      {"ssh": "mini.local", "ips": ["10.0.0.2"], "rdma": ["rdma_en2", None]}]}
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(text))
    panel = ClusterPanel()
    assert panel.open_hostfile(str(path))
    assert panel.host_list() == read_hostfile(path)
    again = ClusterPanel()
    again.restore_json(panel.to_json())  # what the app keeps in its settings
    assert again.host_list() == read_hostfile(path)
    (tmp_path / "bad.json").write_text('{"hosts": [{"ips": ["1.2.3.4"]}]}')
    assert not panel.open_hostfile(str(tmp_path / "bad.json"))
    assert 'Host 1 has no "ssh" name' in panel.summary.text() and "bad.json" in panel.summary.text()
    assert panel.host_list() == read_hostfile(path)
