"""Bounded memory (#16): MLX's buffer cache is limited during a run and restored after it; the
compiled step sees at most a few padded shapes per run."""

import json

import mlx.core as mx
import numpy as np

from finetune_app.core.config import TrainConfig
from finetune_app.core.data.batching import epoch_batches
from finetune_app.core.training.batch import SHAPE_CAP, ShapePlan, padded_length
from finetune_app.core.training.events import FirstStep, TrainReport, from_dict, process_age, to_dict
from finetune_app.core.training.memory import cache_limit
from finetune_app.core.training.trainer import Trainer


def test_shape_plan_caps_the_compiled_shapes_and_pads_little():
    rng = np.random.default_rng(0)
    L = rng.integers(20, 900, 400).tolist()
    K = [int(x * f) for x, f in zip(L, rng.uniform(0.2, 0.9, 400))]
    first = epoch_batches(L, 4, seed=0, epoch=0)
    stats = [(len(b), max(L[i] for i in b), sum(K[i] for i in b)) for b in first]
    plan = ShapePlan(stats)
    assert len(plan.shapes) <= SHAPE_CAP and plan.sizes[-1] == padded_length(max(L))  # the largest fits
    shapes = {plan(m, k) for _, m, k in stats}
    assert shapes <= set(plan.shapes), "every batch of the planned epoch takes a planned shape"
    for _, m, k in stats:
        M, Kp = plan(m, k)
        assert M >= m and k <= Kp <= padded_length(4 * M)  # K holds the supervised positions (not 4 x M)
    real = sum(L)
    padded = sum(4 * plan(m, k)[0] for _, m, k in stats)
    assert real / padded > 0.85  # quantile buckets over 16-batch windows: ~0.67
    # fewer values than the cap: each its own size; a batch beyond the plan: its own padded sizes
    assert ShapePlan([(2, 3, 1), (2, 3, 2), (2, 40, 9)]).shapes == [(3, 2), (40, 9)]
    assert plan(5000, 10) == (padded_length(5000), 10)


def test_epoch_order_is_a_function_of_seed_and_epoch_sorted_by_length():
    L = np.random.default_rng(1).integers(1, 300, 101).tolist()
    a = epoch_batches(L, 4, seed=3, epoch=2)
    assert a == epoch_batches(L, 4, seed=3, epoch=2)  # resume replays the same batches
    assert a != epoch_batches(L, 4, seed=3, epoch=1) and a != epoch_batches(L, 4, seed=4, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(101))
    spans = sorted((min(L[i] for i in b), max(L[i] for i in b)) for b in a)
    assert all(hi <= nxt_lo for (_, hi), (nxt_lo, _) in zip(spans, spans[1:]))  # one global length sort


def write_rows(path, n):
    rng = np.random.default_rng(1)
    words = "red blue green small large round square bright dark soft".split()
    with open(path, "w") as f:
        for i in range(n):
            a = " ".join(rng.choice(words, int(rng.integers(1, 40))))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Item {i}?"},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return path


def test_run_bounds_cache_and_compiled_shapes(tiny_model, tmp_path):
    data = write_rows(tmp_path / "data.jsonl", 40)
    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(data), output=str(tmp_path / "run"), epochs=1,
                      batch_size=2, valid_fraction=0.0, sample_count=0, save_every=1000, steps_per_eval=1000,
                      steps_per_report=1)
    limits, cached, first, active = [], [], [], []

    def watch(e):
        if isinstance(e, FirstStep):
            first.append(e)
        if isinstance(e, TrainReport):
            lim = mx.set_cache_limit(0)  # reading the limit means setting one: put it straight back
            mx.set_cache_limit(lim)
            limits.append(lim)
            cached.append(mx.get_cache_memory())
            active.append((len(trainer.step.shapes), mx.get_active_memory()))

    before = mx.set_cache_limit(0)
    mx.set_cache_limit(before)
    trainer = Trainer(cfg, listeners=[watch])
    trainer.run()
    after = mx.set_cache_limit(0)
    mx.set_cache_limit(after)
    assert limits and all(0 < lim <= cache_limit() for lim in limits)
    assert max(cached) <= max(limits)
    assert after == before, "the previous cache limit comes back"
    sizes = {dict(s)["ids"][1] for s in trainer.step.shapes}
    assert 2 < len(sizes) <= SHAPE_CAP and len(trainer.step.shapes) <= SHAPE_CAP
    assert trainer.state.step == 20
    # held between steps: the weights, adapter and optimizer state; new compiled shapes add nothing
    # (no buffers of an earlier shape kept alive)
    # (between steps it varies by ~0.1 MB whatever the shape; one shape's step buffers are MBs)
    assert active[-1][0] > active[0][0] and active[-1][1] <= max(a for _, a in active[:2]) + 256 * 1024, active
    # time to first step: one event, after the first step, within this process's age
    assert len(first) == 1 and first[0].step == 1
    assert 0 < first[0].seconds_since_run_start <= first[0].seconds_since_process_start + 1 <= process_age() + 1
    assert from_dict(to_dict(first[0])) == first[0]


CHILD = """
import sys
import mlx.core as mx
if sys.argv[1] == "fixed":
    from finetune_app.core.training.memory import return_freed_memory
    assert return_freed_memory()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
for n in (6_000_000, 5_000_000):  # 24 MB then 20 MB of float32, each freed (MLX's cache emptied)
    a = mx.ones((n,)); mx.eval(a); del a; mx.clear_cache()
print(rss())
"""


def test_freed_step_buffers_go_back_to_the_system():
    """glibc keeps a freed 20 MB buffer in the heap once a 24 MB one was freed (its mmap threshold
    rose to 24 MB, and the heap is trimmed only past twice that); with the threshold fixed, the
    memory goes back: RSS ~20 MB lower."""
    import platform
    import subprocess
    import sys

    import pytest

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    rss = {mode: int(subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                                    check=True).stdout) for mode in ("dynamic", "fixed")}
    assert rss["dynamic"] - rss["fixed"] > 15, rss


def test_cache_limit_is_a_fraction_of_the_device_but_at_most_the_cap(monkeypatch):
    from finetune_app.core.training import memory

    monkeypatch.setattr(memory, "device_memory", lambda: 16 << 30)  # a 16 GB Mac: 5%
    assert memory.cache_limit() == int((16 << 30) * memory.CACHE_FRACTION)
    monkeypatch.setattr(memory, "device_memory", lambda: 143_771_000_000)  # an H200: 7.2 GB uncapped
    assert memory.cache_limit() == memory.CACHE_CAP
    with memory.bounded_cache() as limit:
        assert limit <= memory.CACHE_CAP
