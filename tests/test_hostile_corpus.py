"""The hostile-input corpus (tests/hostile/): every case through the real CLI, no traceback, nothing lost.

See tests/hostile/__init__.py for what each case is checked for. The summary test counts the
cases per area (the trust issue asks for at least 60 across datasets, model folders, adapters,
checkpoints, run databases and run folders).
"""

from __future__ import annotations

import collections

import pytest

pytest.importorskip("mlx.core")

import hostile

CASES = hostile.load_all()


@pytest.fixture
def hostile_env(tmp_path, monkeypatch, tiny_model, shapes_data, instruction_data):
    marker = tmp_path / "markers"
    marker.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("FINETUNE_TEST_MARKER_DIR", str(marker))
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path / "appdata"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(work)
    return hostile.Env(tmp=work, marker_dir=marker, tiny_model=tiny_model, shapes_data=shapes_data,
                       instruction_data=instruction_data)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_hostile_case(case_id, hostile_env):
    CASES[case_id].fn(hostile_env)
    hostile_env.check_after()


def test_corpus_covers_every_area():
    per_area = collections.Counter(c.area for c in CASES.values())
    print("hostile corpus:", dict(sorted(per_area.items())), "total", sum(per_area.values()))
    assert sum(per_area.values()) >= 60, per_area
    for area in ("dataset", "model", "adapter", "checkpoint", "runs-db", "run-folder"):
        assert per_area[area] >= 3, (area, per_area)
