"""The loop keeps one step in flight (#16 loopipe): the next step's batch is built while the device
runs the step before, with the synchronous loop's losses, and a divergence still stops at its step."""

import json

import numpy as np
import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.errors import FinetuneError
from finetune_app.core.training import checkpoint as ckpt
from finetune_app.core.training import loop
from finetune_app.core.training.trainer import Trainer


class Logged(Trainer):
    """A trainer that notes each training batch it builds (with how many steps were done then) in
    the same list as the events, and can make one step's batch give a NaN loss."""

    nan_batch = None  # the 1-based training batch whose supervised weights are NaN

    def __init__(self, *a, **k):
        self.log, self.built = [], 0
        super().__init__(*a, listeners=[lambda ev: self.log.append((type(ev).__name__, getattr(ev, "step", None)))], **k)

    def make_batch(self, examples, split="train"):
        batch = super().make_batch(examples, split)
        if split == "train":
            self.built += 1
            self.log.append(("batch", self.state.step))
            if self.built == self.nan_batch:
                batch.sel_weights = np.full_like(batch.sel_weights, np.nan)
        return batch


def config(model, data, out, **kw):
    kw = {"iters": 4, "epochs": None, "batch_size": 4, "steps_per_report": 1, "steps_per_eval": 2, "save_every": 10,
          "sample_count": 0, "lora_dropout": 0.1, **kw}
    return TrainConfig(model=str(model), data=str(data), output=str(out), **kw)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r.get("step"), r.get("loss"), r.get("val_loss")) for r in rows if "loss" in r or "val_loss" in r]


def test_the_next_batch_is_built_while_a_step_runs_with_the_synchronous_losses(tiny_model, instruction_data,
                                                                                tmp_path, monkeypatch):
    model = tiny_model("llama")
    t = Logged(config(model, instruction_data, tmp_path / "ahead"))
    t.run()
    trained = [e for e in t.log if e[0] in ("batch", "TrainReport")]
    # batch 2 is built before step 1 is read and reported, and so on; the last step has no next
    assert trained == [("batch", 0), ("batch", 0), ("TrainReport", 1), ("batch", 1), ("TrainReport", 2),
                       ("batch", 2), ("TrainReport", 3), ("TrainReport", 4)], trained

    monkeypatch.setattr(loop, "builds_ahead", lambda run: False)  # the synchronous loop (GRPO's)
    s = Logged(config(model, instruction_data, tmp_path / "sync"))
    s.run()
    assert [e for e in s.log if e[0] in ("batch", "TrainReport")][:3] == [("batch", 0), ("TrainReport", 1), ("batch", 1)]
    assert losses(tmp_path / "ahead") == losses(tmp_path / "sync")  # exactly: same RNG, data and order
    events = lambda log: [e for e in log if e[0] != "batch"]  # noqa: E731
    assert events(t.log) == events(s.log)


def test_a_nan_loss_at_step_k_stops_at_k_with_nothing_saved_after(tiny_model, instruction_data, tmp_path):
    out = tmp_path / "run"
    t = Logged(config(tiny_model("llama"), instruction_data, out, save_every=1, iters=6))
    t.nan_batch = 3
    with pytest.raises(FinetuneError, match="diverged at step 3"):
        t.run()
    assert ("batch", 2) in t.log, "step 4's batch was built while step 3 ran"
    assert [s for name, s in t.log if name == "TrainReport"] == [1, 2]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000001", "step-0000002"]
    assert [s for s, _, _ in losses(out)] == [1, 2, 2]  # (step 2's validation)
