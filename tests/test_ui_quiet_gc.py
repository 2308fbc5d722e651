"""quiet_gc.paused: no automatic full collection while background imports run (issue 18's stalls),
collection back on when the last user leaves, and what was built frozen out of later collections."""

import gc
import threading

from finetune_app.ui import quiet_gc


def test_collection_paused_while_any_thread_imports_and_the_result_frozen():
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    inside, leave = threading.Event(), threading.Event()

    def other():
        with quiet_gc.paused():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    try:
        with quiet_gc.paused():
            t.start()
            assert inside.wait(10)
            kept = [{"n": i} for i in range(1000)]  # built meanwhile: long-lived
            assert not gc.isenabled()
        assert not gc.isenabled(), "the other thread still imports"
        leave.set()
        t.join(10)
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(kept)
    finally:
        leave.set()
        gc.unfreeze()
        gc.enable()


def test_collection_left_off_when_it_was_off():
    gc.disable()
    try:
        with quiet_gc.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
