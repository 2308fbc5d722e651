"""Test environment: offline hub, offscreen Qt, quiet tokenizers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The step is compiled on this CPU too, as on a GPU (core/training/backend.py: a CPU user's runs are not).
os.environ.setdefault("FINETUNE_CPU_COMPILE", "1")
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


@pytest.fixture
def browser(app_env, qtbot):
    """The dataset browser, shown at a usual size (test_gui_dataset, test_gui_pairs)."""
    from finetune_app.ui.dataset_browser import DatasetBrowser

    b = DatasetBrowser()
    qtbot.addWidget(b)
    b.resize(1200, 800)
    b.show()
    qtbot.waitExposed(b)
    return b


@pytest.fixture(scope="module")
def qwen_model():
    from finetune_app.testing.tiny_models import cached_tiny_model

    return cached_tiny_model("qwen2_vl")


# The heaviest tests, with their seconds on the 2-core CI box (pytest's --durations). Under xdist's
# work stealing each worker starts from one contiguous half of the collection, so these are split
# between the two halves (greedily, by time) and put at the front of each: neither worker is left
# running a long test alone at the end while the other idles.
HEAVY_TESTS = {
    "test_engine_learning.py::test_qwen2_vl_learns_shapes_through_mlx_vlm": 100,
    "test_engine_learning.py::test_fastvlm_learns_colour": 54,
    "test_gui_distributed.py::test_two_hosts_checked_trained_paused_dropped_and_resumed_alone": 48,
    "test_runs_crash.py::test_repeated_sigkills_resume_to_the_uninterrupted_losses": 20,
    "test_distributed_dropout.py::test_host_killed_mid_run_then_resume_alone_matches_uninterrupted": 31,
    "test_grpo.py::test_sigkill_and_resume_reproduces_grpo": 27,
    "test_engine_families.py::test_vlm_families_train_and_load[fastvlm]": 21,
    "test_distributed.py::test_two_ring_processes_match_one_process": 19,
    "test_distributed.py::test_grpo_on_two_ring_processes_matches_one_process": 19,
    "test_grpo.py::test_grpo_loss_matches_paper_formula[fastvlm]": 10,
    "test_prefs_resume.py::test_dpo_sigkill_and_resume_reproduces_losses": 19,
    "test_grpo.py::test_grpo_raises_the_held_out_reward": 17,
    "test_engine_resume.py::test_sigkill_and_resume_reproduces_losses": 14,
    "test_grad_clip_none.py::test_run_without_cap_resumes": 15,
    "test_prefs_learning.py::test_preference_training_raises_held_out_accuracy[qwen2_vl-dpo]": 14,
    "test_prefs_learning.py::test_preference_training_raises_held_out_accuracy[qwen2_vl-orpo]": 14,
    "test_distributed_dropout.py::test_pause_resume_and_stop_reach_every_rank": 10,
}


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: file order
        return
    seconds = {it: HEAVY_TESTS.get(it.nodeid.split("/")[-1]) for it in items}
    heavy = sorted((it for it in items if seconds[it]), key=lambda it: -seconds[it])
    light = [it for it in items if not seconds[it]]
    halves, load = ([], []), [0, 0]
    for it in heavy:  # the lighter half takes the next heaviest
        k = 0 if load[0] <= load[1] else 1
        halves[k].append(it)
        load[k] += seconds[it]
    first = len(items) // 2 - len(halves[0])  # light tests that fill the first half
    items[:] = halves[0] + light[:first] + halves[1] + light[first:]
