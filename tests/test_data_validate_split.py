"""Validation report contents (lengths, histogram, duplicates, JSON) and the train/valid split."""

from __future__ import annotations

import json

import pytest
from test_data_fixtures import jsonl, png, write

from finetune_app.core.data import open_dataset, split, validate
from finetune_app.core.errors import ConfigError, DataError


def _rows(n, start=0):
    return [{"instruction": f"Say {i}", "input": "", "output": "x " * (1 + i % 7)}
            for i in range(start, start + n)]


def test_report_counts_lengths_histogram_and_json(tmp_path):
    f = jsonl(tmp_path / "a.jsonl", _rows(30) + [_rows(1)[0]], raw_lines=["{oops"])
    ds = open_dataset(f)
    seen = []
    report = validate(ds, token_counter=lambda s: len(s.answer.split()) + 3, max_length=8,
                      progress=lambda done, total: seen.append((done, total)))
    assert report.rows_found == 32 and seen[-1] == (32, 32)
    too_long = [p for p in report.errors if "longer than the max length" in p.message]
    assert too_long and "9 tokens" in too_long[0].message
    assert report.duplicates == [(30, 0)]
    assert report.rows_usable == 32 - 1 - len(too_long)
    assert all(n <= 8 for n in report.token_lengths.values())
    hist = report.histogram()
    assert sum(b["count"] for b in hist) == len(report.token_lengths)
    assert hist[0]["from"] == 4 and hist[-1]["to"] == 8
    d = json.loads(json.dumps(report.to_dict()))
    assert d["rows_found"] == 32 and d["rows_usable"] == report.rows_usable
    assert {"file", "line", "field", "message", "severity"} <= set(d["problems"][0])
    assert any(p["line"] == 32 for p in d["problems"])
    text = report.summary()
    assert "32 found" in text and "#" in text and "Duplicates: 1" in text


def test_token_counter_failure_is_a_row_problem(tmp_path):
    ds = open_dataset(jsonl(tmp_path / "a.jsonl", _rows(3)))

    def counter(sample):
        if "1" in sample.prompt:
            raise ValueError("template wants alternating roles")
        return 5

    report = validate(ds, token_counter=counter)
    assert report.rows_usable == 2 and "alternating" in report.errors[0].message


def test_has_images_is_settled_by_validation(tmp_path):
    png(tmp_path / "a.png")
    text = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(60)]
    late = {"images": ["a.png"], "messages": text[0]["messages"]}
    ds = open_dataset(jsonl(tmp_path / "m.jsonl", text + [late]))
    assert not ds.has_images  # only the first rows were looked at
    assert validate(ds).has_images and ds.has_images


def test_split_is_deterministic_stable_and_disjoint(tmp_path):
    ds = open_dataset(jsonl(tmp_path / "a.jsonl", _rows(200)))
    report = validate(ds)
    train, valid = split(report, valid_fraction=0.2, seed=3)
    assert not set(train) & set(valid) and len(train) + len(valid) == 200
    assert 20 <= len(valid) <= 60
    assert (train, valid) == split(report, valid_fraction=0.2, seed=3) == split(ds, valid_fraction=0.2, seed=3)
    assert split(report, valid_fraction=0.2, seed=4) != (train, valid)
    # adding rows never moves existing ones (identity is the content, not the position)
    bigger = open_dataset(jsonl(tmp_path / "b.jsonl", _rows(100, start=200) + _rows(200)))
    t2, v2 = split(validate(bigger), valid_fraction=0.2, seed=3)
    assert {i - 100 for i in v2 if i >= 100} == set(valid)
    assert {i - 100 for i in t2 if i >= 100} == set(train)


def test_split_small_sets_and_duplicates_never_leak(tmp_path):
    rows = _rows(5) + _rows(5)  # every row twice
    report = validate(open_dataset(jsonl(tmp_path / "a.jsonl", rows)))
    train, valid = split(report, valid_fraction=0.1, min_valid=1)
    assert valid and train
    keys = report.row_keys
    assert not {keys[i] for i in train} & {keys[i] for i in valid}
    assert split([7], min_valid=1) == ([7], [])
    assert split([], min_valid=1) == ([], [])
    assert split(list(range(10)), valid_fraction=0.0) == (list(range(10)), [])
    with pytest.raises(ConfigError):
        split(report, valid_fraction=1.5)


def test_split_uses_the_datasets_own_validation_split(tmp_path):
    jsonl(tmp_path / "train.jsonl", _rows(10))
    jsonl(tmp_path / "valid.jsonl", _rows(2) + _rows(1, start=50))  # two rows also in train
    ds = open_dataset(tmp_path)
    report = validate(ds)
    train, valid = split(report)
    assert valid == [10, 11, 12]
    assert train == list(range(2, 10))  # the copies of validation rows left training
    assert report.splits == {"train": 10, "valid": 3}


def test_strict_open_raises_on_index_problems(tmp_path):
    f = write(tmp_path / "a.json", '[{"instruction": "a", "output": "b"} {"x": 1}]')
    assert len(open_dataset(f)) == 1
    with pytest.raises(DataError):
        open_dataset(f, policy="strict")
