"""A row whose image is read lazily (over the memory budget, on the library path: picture features
not cached) and becomes unreadable during the run is skipped with a located notice; the run goes
on (issue 18)."""

import shutil

from finetune_app.core.config import TrainConfig
from finetune_app.core.training import events as ev
from finetune_app.core.training import prepare
from finetune_app.core.training.trainer import Trainer


def test_an_image_broken_mid_run_skips_its_row_and_the_run_goes_on(tiny_model, shapes_data, tmp_path, monkeypatch):
    data = tmp_path / "shapes"
    shutil.copytree(shapes_data, data)
    rows = (data / "captions.csv").read_text().splitlines()
    train = [r for r in rows[1:] if r.endswith(",train")][:8]
    valid = [r for r in rows[1:] if r.endswith(",valid")][:2]
    (data / "captions.csv").write_text("\n".join([rows[0], *train, *valid]) + "\n")  # two batches an epoch
    monkeypatch.setattr(prepare, "IMAGE_BUDGET_BYTES", 0)  # every image re-read per batch
    victim = data / "images" / train[0].split(",")[0]
    notices = []

    def listener(event):
        if isinstance(event, ev.StateChanged) and event.state == "started":
            victim.write_bytes(b"not a picture any more")  # broken after validation
        elif isinstance(event, ev.Notice):
            notices.append(event.message)

    cfg = TrainConfig(model=str(tiny_model("qwen2_vl")), data=str(data), output=str(tmp_path / "run"),
                      iters=4, batch_size=4, cache_vision=False, steps_per_eval=100, save_every=100, steps_per_report=1)
    result = Trainer(cfg, listeners=[listener]).run()
    assert result.status == "finished" and result.step == 4  # two epochs
    skipped = [n for n in notices if "can no longer be read" in n]
    assert len(skipped) == 1, notices  # once, not once per epoch
    assert "captions.csv line " in skipped[0] and victim.name in skipped[0]
