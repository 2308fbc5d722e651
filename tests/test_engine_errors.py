"""Bad input gives a one-paragraph error naming the problem and the fix, and leaves no files."""

import json

import pytest

from finetune_app.core import adapters
from finetune_app.core.config import TrainConfig
from finetune_app.core.errors import AdapterError, ConfigError, DataError, ModelError
from finetune_app.core.models import load_base
from finetune_app.core.training.trainer import Trainer
from helpers import run_cli


def one_paragraph(message: str) -> bool:
    return "\n" not in message.strip() and len(message) > 30 and "Traceback" not in message


def assert_clean(err, tmp_path, *words):
    assert one_paragraph(err.message), err.message
    for w in words:
        assert w.lower() in err.message.lower(), (w, err.message)
    assert not (tmp_path / "run").exists(), "no partial run folder"


def test_unreadable_model_folder(tmp_path, shapes_data):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelError) as e:
        Trainer(TrainConfig(model=str(tmp_path / "broken"), data=str(shapes_data), output=str(tmp_path / "run"), iters=1)).run()
    assert_clean(e.value, tmp_path, "config.json", "not valid JSON")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as e:
        load_base(tmp_path / "empty")
    assert "no config.json" in e.value.message


def test_unknown_hub_id_offline(tmp_path, shapes_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        Trainer(TrainConfig(model="nobody/does-not-exist-xyz", data=str(shapes_data), output=str(tmp_path / "run"), iters=1)).run()
    assert_clean(e.value, tmp_path, "offline", "local folder")


def test_incompatible_adapter(tiny_model, tmp_path, instruction_data):
    run = tmp_path / "adapter"
    Trainer(TrainConfig(model=str(tiny_model("llama")), data=str(instruction_data), output=str(run), iters=1,
                        sample_count=0)).run()
    base = load_base(tiny_model("qwen2"))
    with pytest.raises(AdapterError) as e:
        adapters.load_into(base, run)
    assert one_paragraph(e.value.message) and "trained on a llama model" in e.value.message
    # same family, different shapes: tensors that do not fit are refused too
    cfg = json.loads((run / "adapter_config.json").read_text())
    cfg["finetune_app"]["model_type"] = "qwen2"
    (run / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError):
        adapters.load_into(load_base(tiny_model("qwen2", hidden_size=32)), run)


def test_images_for_text_only_model(tiny_model, shapes_data, tmp_path):
    with pytest.raises(DataError) as e:
        Trainer(TrainConfig(model=str(tiny_model("llama")), data=str(shapes_data), output=str(tmp_path / "run"), iters=1)).run()
    assert_clean(e.value, tmp_path, "images", "text only", "vision-language")


@pytest.mark.parametrize("changes, words", [
    (dict(learning_rate=-1.0), ["learning_rate", "positive"]),
    (dict(lora_rank=0), ["lora_rank"]),
    (dict(batch_size=0), ["batch_size"]),
    (dict(quantize_bits=3), ["quantize_bits", "4, 8"]),
    (dict(fine_tune_type="full", quantize_bits=4), ["full fine-tune"]),
    (dict(lr_schedule="sawtooth"), ["lr_schedule", "cosine"]),
    (dict(iters=5, warmup_steps=10), ["warmup_steps", "fewer"]),
])
def test_invalid_hyperparameters(changes, words, tmp_path, shapes_data):
    cfg = TrainConfig(model="unused", data=str(shapes_data), output=str(tmp_path / "run"), iters=5).replace(**changes)
    with pytest.raises(ConfigError) as e:
        Trainer(cfg).run()
    assert_clean(e.value, tmp_path, *words)


def test_cli_reports_errors_with_exit_codes(tmp_path, shapes_data):
    r = run_cli("train", "--model", tmp_path / "missing", "--data", shapes_data, "--output", tmp_path / "run", "--iters", 1)
    assert r.returncode == 3 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "--model", "x", "--data", shapes_data, "--output", tmp_path / "run", "--learning-rate", "-1")
    assert r.returncode == 5 and "learning_rate" in r.stderr
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_not_overwritten(tiny_model, instruction_data, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(instruction_data), output=str(run), iters=1, sample_count=0)
    Trainer(cfg).run()
    before = (run / "adapters.safetensors").read_bytes()
    with pytest.raises(ConfigError) as e:
        Trainer(cfg).run()
    assert "--resume" in e.value.message
    assert (run / "adapters.safetensors").read_bytes() == before
