"""Test environment: offline hub, offscreen Qt, quiet tokenizers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Run records go to a throwaway database, never the user's real run history.
import tempfile as _tempfile

os.environ.setdefault("FINETUNE_DATA_DIR", _tempfile.mkdtemp(prefix="finetune-test-data-"))
# Where transformers would copy a model folder's own Python (read once at its import): the hostile
# corpus checks that nothing ever lands there.
os.environ.setdefault("HF_MODULES_CACHE", _tempfile.mkdtemp(prefix="finetune-test-hf-modules-"))

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family, **overrides) -> folder of a tiny random-weight model, built once per session."""
    from finetune_app.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict = {}

    def get(family: str, **overrides) -> Path:
        key = (family, json.dumps(overrides, sort_keys=True))
        if key not in built:
            name = family + ("-" + str(abs(hash(key[1]))) if overrides else "")
            built[key] = build_tiny_model(family, root / name, seed=0, **overrides)
        return built[key]

    return get


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small demo captioning set (images/ + captions.csv with its own validation split)."""
    from finetune_app.core.data.demo import make_shapes_dataset

    dest = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(dest, n_train=24, n_valid=8, size=64, seed=0)
    return dest


@pytest.fixture(scope="session")
def instruction_data(tmp_path_factory):
    from finetune_app.core.data.demo import make_instruction_dataset

    dest = tmp_path_factory.mktemp("data") / "instructions"
    make_instruction_dataset(dest, n=48, seed=0)
    return dest



@pytest.fixture
def app_env(tmp_path, monkeypatch, qapp):
    """A QApplication with settings, app data and the welcome dialog kept out of the user's way."""
    monkeypatch.setenv("FINETUNE_SETTINGS_DIR", str(tmp_path / "settings"))
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "appdata"))
    monkeypatch.setenv("FINETUNE_NO_WELCOME", "1")
    from finetune_app.ui.app import create_app

    return create_app()


@pytest.fixture(scope="module")
def qwen_model():
    from finetune_app.testing.tiny_models import cached_tiny_model

    return cached_tiny_model("qwen2_vl")
