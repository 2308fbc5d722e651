"""One runner (core/runner.start_run), one Control, launched ranks with their own entry, and the
run folder's file names in one module."""

from __future__ import annotations

import re
from pathlib import Path

import finetune_app


def test_control_relays_requests_to_a_launch_and_applies_commands():
    from finetune_app.core.training.control import Control

    c = Control()
    c.pause()
    c.stop(save=False)
    sent = []
    c.relay_to(sent.append)  # requests made before the launch existed reach it on attach
    assert sent == ["pause", "stop-discard"]
    c.resume()
    c.terminate()
    assert sent[2:] == ["resume", "terminate"]
    c.relay_to(None)
    c.terminate()  # nothing to end once the launch is gone
    assert sent[-1] == "terminate" and len(sent) == 4

    rank = Control()  # what each rank does with the lines the launcher copies to its stdin
    rank.follow(["pause\n", "bogus\n"])
    assert rank.paused and not rank.stop_requested
    rank.follow(["resume\n", "stop\n"])
    assert not rank.paused and rank.stop_requested and rank.save_on_stop


def test_launched_ranks_run_the_rank_entry_not_cli_flags(tmp_path):
    from finetune_app.core.cluster.hosts import Host, HostList
    from finetune_app.core.cluster.launch import DistributedRun
    from finetune_app.core.config import TrainConfig

    here = Host("127.0.0.1", ("127.0.0.1",))
    cfg = TrainConfig(model="m", data="d", output=str(tmp_path / "run"), iters=3)
    cmd = DistributedRun(HostList((here, here)), cfg, resume=True, python="python3").command()
    rank = cmd[cmd.index("--") + 1:]
    assert rank[:3] == ["python3", "-m", "finetune_app.core.cluster.rank"] and rank[-1] == "--resume"
    assert not any(a in rank for a in ("train", "--events-stdout", "--control-stdin"))


def test_start_run_on_a_thread_gives_events_control_and_result(tiny_model, instruction_data, tmp_path):
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.runner import start_run
    from finetune_app.core.training import events as ev

    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(instruction_data), output=str(tmp_path / "run"),
                      iters=400, batch_size=2, lora_rank=4, steps_per_report=1, steps_per_eval=1000,
                      save_every=1000, sample_count=0, compile=False)
    handle = start_run(cfg, thread=True, record=False)
    seen = []
    for event in handle.events(timeout=120):
        seen.append(event)
        if isinstance(event, ev.TrainReport) and event.step == 2:
            handle.control.stop(save=True)
    result = handle.wait(60)
    assert result.status == "stopped" and 2 <= result.step < 400
    states = [e.state for e in seen if isinstance(e, ev.StateChanged)]
    assert states[0] == "loading" and states[-1] == "stopped"
    assert (tmp_path / "run" / "checkpoints" / f"step-{result.step:07d}").is_dir()


def test_run_folder_names_are_spelled_only_in_run_folder():
    """Every run-folder file name lives in core/run_folder.py; the rest of the app asks it."""
    names = ("train_config.toml", "metrics.jsonl", "run.json", "adapters.safetensors", "adapter_config.json",
             "optimizer.safetensors", "checkpoints", ".run.lock")
    literal = re.compile(r"""["'](%s)["']""" % "|".join(re.escape(n) for n in names))
    root = Path(finetune_app.__file__).parent
    found = [f"{p.relative_to(root)}: {m.group(0)}" for p in root.rglob("*.py") if p.name != "run_folder.py"
             for m in literal.finditer(p.read_text(encoding="utf-8"))]
    assert found == []


def test_core_never_starts_or_imports_the_cli():
    """The engine does not depend on its front ends: no core module imports finetune_app.cli or
    runs `python -m finetune_app` (launched ranks have core/cluster/rank.py)."""
    core = Path(finetune_app.__file__).parent / "core"
    offenders = [str(p.relative_to(core)) for p in core.rglob("*.py")
                 if re.search(r"finetune_app\.cli|[\"']-m[\"'],\s*[\"']finetune_app[\"']", p.read_text(encoding="utf-8"))]
    assert offenders == []
