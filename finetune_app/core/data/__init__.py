"""Datasets: readers for each format -> Sample records; images; validation; splits; demo data.

    ds = open_dataset("data/")            # detect the layout and row format
    report = validate(ds)                  # every row checked; report.summary() / to_dict()
    train, valid = split(report)           # stable split of the usable rows
    sample = ds.sample(train[0])           # parsed lazily; load_image(sample.images[0])

Formats (rows): see `formats.FORMATS`. Containers: JSONL, JSON arrays, CSV/TSV, captions.csv +
images/, HF image folders, train/valid JSONL folders (mlx-vlm / mlx-lm), HF datasets on disk or
from the hub. Tokenising and batching live beside this package (tokenize.py, batching.py).
"""

from finetune_app.core.data.dataset import POLICIES, Dataset, RowRef, open_dataset
from finetune_app.core.data.formats import FORMATS
from finetune_app.core.data.images import load_image
from finetune_app.core.data.report import Report
from finetune_app.core.data.sample import ImageRef, Sample, Turn
from finetune_app.core.data.splits import split
from finetune_app.core.data.validation import token_counter_for, validate

__all__ = ["FORMATS", "POLICIES", "Dataset", "ImageRef", "Report", "RowRef", "Sample", "Turn",
           "load_image", "open_dataset", "split", "token_counter_for", "validate"]
