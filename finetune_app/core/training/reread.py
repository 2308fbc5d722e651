"""Pictures kept without pixels, read again a few batches ahead on worker threads (#16 vlmpipe).

(#16 vlmwarm) Where the frozen-tower cache needs each picture once, preparation counts pictures
from their headers and reads none (tokenize.py `encode_sized`), so every picture of such a run is
read here, ahead of the first batch that needs it, while the steps run.

Past the in-memory image budget (prepare.py) an example keeps its ids only, and the first batch
that needs its picture (epoch 0: its tower features are not cached yet) encodes it again. On the
training thread that is decoding, resizing and normalising one picture after another between
steps: 1,000 Qwen-VL pictures at 448 px are ~4.8 GB of float32 pixels, so more than half of such
an epoch's pictures were encoded again there, the device waiting. The first epoch's order is known
before it starts, so those examples are encoded in that order on the encoding pool's threads
(data/encode_pool.py: samples read on this thread, results in order, a bounded window ahead) while
the steps run. An example met out of that order (a resumed run's first batch, an evaluation
between steps) is encoded where it is met, as before: the result is the same function of the row.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from finetune_app.core.data.encode_pool import encoded_rows
from finetune_app.core.errors import DataError


class Reread:
    def __init__(self, dataset, encoder, rows: list[int]):
        self.order = deque(rows)  # dataset rows, in the order the run will ask for them
        self.rows = encoded_rows(dataset, encoder.encode, list(rows)) if rows else iter(())
        self.served = 0  # examples handed over from the threads (tests, benchmarks)

    def take(self, row: int):
        """The row's example encoded again, or None when it is not the next one planned."""
        if not self.order or self.order[0] != row:
            return None
        self.order.popleft()
        _, ex, failure = next(self.rows)
        if failure is not None:
            raise failure
        self.served += 1
        return ex

    def close(self) -> None:
        close = getattr(self.rows, "close", None)
        if close:  # ends the workers, drops what they still hold
            close()
        self.order.clear()


def same_as_planned(planned, fresh) -> None:
    """(#16 vlmwarm) A row counted from its pictures' headers (`image_ids`) was planned (shapes,
    mRoPE ids, tower groups) on those ids; read in full it must give the same ids, else a picture
    changed since the run started and the row is left out (the trainer's unreadable rows)."""
    if any(p.image_ids and not np.array_equal(p.input_ids, f.input_ids) for p, f in zip(planned.parts, fresh.parts)):
        raise DataError("A picture of this row changed since the run started (its size is not the one planned).",
                        "Restore the picture, or start the run again to train on the new one.", field="image")
