"""A corpus of broken datasets: none may raise anything but a DataError naming the file; row-level
faults become report entries with file, line and field, and the good rows stay usable."""

from __future__ import annotations

import json

import pytest
from test_data_fixtures import jsonl, png, png_bytes, png_header, write

from finetune_app.core.data import open_dataset, validate
from finetune_app.core.errors import DataError

GOOD = {"image": "ok.png", "caption": "fine"}


def _with_good(tmp, *raw_lines, rows=()):
    png(tmp / "ok.png")
    return jsonl(tmp / "d.jsonl", [GOOD, *rows], raw_lines=raw_lines)


def _msg(*turns, images=None):
    row = {"messages": [{"role": r, "content": c} for r, c in turns]}
    if images is not None:
        row["images"] = images
    return row


def _captions(tmp, text: str | bytes, images=("a.png",)):
    for name in images:
        png(tmp / "images" / name)
    return write(tmp / "captions.csv", text)


def _image_row(tmp, name, data):
    png(tmp / "ok.png")
    write(tmp / name, data)
    return jsonl(tmp / "d.jsonl", [GOOD, {"image": name, "caption": "x"}])


# name -> (build(tmp) -> path, expectation)
# expectation: ("error", field or None) for a DataError when opening/validating, or
#              ("row", line, field, usable_rows) for a report entry (severity error), or
#              ("warn", line, usable_rows) for a warning that keeps the row.
CASES = {
    "latin1 bytes in a JSONL line": (
        lambda t: _with_good(t, rows=[]) and write(t / "d.jsonl", (json.dumps(GOOD) + "\n" + '{"image": "ok.png", "caption": "caf\xe9"}\n').encode("latin-1")),
        ("warn", 2, 2)),
    "latin1 captions.csv": (
        lambda t: _captions(t, "filename,caption\na.png,caf\xe9 au lait\n".encode("cp1252")),
        ("warn", 2, 1)),
    "UTF-8 BOM on JSONL": (
        lambda t: _with_good(t) and write(t / "d.jsonl", b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n"),
        ("clean", 1)),
    "UTF-8 BOM on CSV header": (
        lambda t: _captions(t, b"\xef\xbb\xbffilename,caption\r\na.png,x\r\n"), ("clean", 1)),
    "CRLF JSONL": (
        lambda t: _with_good(t) and write(t / "d.jsonl", json.dumps(GOOD) + "\r\n" + json.dumps(GOOD | {"caption": "2"}) + "\r\n"),
        ("clean", 2)),
    "CRLF CSV with a quoted newline": (
        lambda t: _captions(t, 'filename,caption\r\na.png,"two\r\nlines"\r\n'), ("clean", 1)),
    "UTF-16 JSONL (PowerShell)": (
        lambda t: _with_good(t) and write(t / "d.jsonl", (json.dumps(GOOD) + "\r\n").encode("utf-16")),
        ("warn", None, 1)),
    "truncated JSON line": (
        lambda t: _with_good(t, '{"image": "ok.png", "capt', rows=[GOOD | {"caption": "b"}]),
        ("row", 3, None, 2)),
    "JSON line that is a list": (lambda t: _with_good(t, '["ok.png", "x"]'), ("row", 2, None, 1)),
    "JSON line that is a string": (lambda t: _with_good(t, '"hello"'), ("row", 2, None, 1)),
    "JSON line that is null": (lambda t: _with_good(t, "null"), ("row", 2, None, 1)),
    "NUL bytes in a line": (lambda t: _with_good(t, '{"image": "ok.png"\x00}'), ("row", 2, None, 1)),
    "JSON nested too deeply": (lambda t: _with_good(t, "[" * 100000 + "]" * 100000), ("row", 2, None, 1)),
    "JSON array missing a comma": (
        lambda t: png(t / "ok.png") and write(t / "a.json", '[\n {"image": "ok.png", "caption": "a"},\n'
                                                         ' {"image": "ok.png", "caption": "b"}\n'
                                                         ' {"image": "ok.png", "caption": "c"}\n]'),
        ("row", 4, None, 2)),
    "JSON array item that is not an object": (
        lambda t: png(t / "ok.png") and write(t / "a.json", json.dumps([GOOD, 5], indent=1)),
        ("row", 6, None, 1)),
    "empty JSONL file": (lambda t: write(t / "d.jsonl", ""), ("error", None)),
    "whitespace-only JSONL": (lambda t: write(t / "d.jsonl", "\n  \n\r\n"), ("error", None)),
    "CSV with only a header": (lambda t: _captions(t, "filename,caption\n"), ("error", None)),
    "empty JSON array": (lambda t: write(t / "a.json", "[]"), ("error", None)),
    "CSV without an image column": (
        lambda t: _captions(t, "name,description\na.png,x\n"), ("error", "image")),
    "CSV without a caption column": (
        lambda t: _captions(t, "filename,notes,extra\na.png,x,y\n"), ("error", "caption")),
    "CSV row with an extra field": (
        lambda t: _captions(t, "filename,caption\na.png,ok\na.png,oops,extra\n"), ("row", 3, None, 1)),
    "rows with unknown columns": (
        lambda t: jsonl(t / "d.jsonl", [{"foo": 1, "bar": 2}]), ("error", None)),
    "missing image": (
        lambda t: _with_good(t, rows=[{"image": "nope.png", "caption": "x"}]), ("row", 2, "image", 1)),
    "corrupt image": (lambda t: _image_row(t, "bad.png", b"not an image at all"), ("row", 2, "image", 1)),
    "zero-byte image": (lambda t: _image_row(t, "zero.png", b""), ("row", 2, "image", 1)),
    "truncated PNG": (
        lambda t: _image_row(t, "half.png", png_bytes((64, 64))[:60]), ("row", 2, "image", 1)),
    "decompression bomb (header claims 100000x100000)": (
        lambda t: _image_row(t, "bomb.png", png_header(100_000, 100_000)), ("row", 2, "image", 1)),
    "bomb warning size (10000x10000)": (
        lambda t: _image_row(t, "big.png", png_header(10_000, 10_000)), ("row", 2, "image", 1)),
    "image path escaping with ../": (
        lambda t: png(t.parent / f"{t.name}-outside.png") and _with_good(
            t, rows=[{"image": f"../{t.name}-outside.png", "caption": "x"}]), ("row", 2, "image", 1)),
    "absolute image path outside the folder": (
        lambda t: _with_good(t, rows=[{"image": "/etc/hostname", "caption": "x"}]), ("row", 2, "image", 1)),
    "image is a web address": (
        lambda t: _with_good(t, rows=[{"image": "https://example.com/a.png", "caption": "x"}]),
        ("row", 2, "image", 1)),
    "image is null": (lambda t: _with_good(t, rows=[{"image": None, "caption": "x"}]), ("row", 2, "image", 1)),
    "image is a number": (lambda t: _with_good(t, rows=[{"image": 7, "caption": "x"}]), ("row", 2, "image", 1)),
    "caption is null": (lambda t: _with_good(t, rows=[{"image": "ok.png", "caption": None}]), ("row", 2, "caption", 1)),
    "caption is empty": (lambda t: _with_good(t, rows=[{"image": "ok.png", "caption": "  "}]), ("row", 2, "caption", 1)),
    "no assistant answer": (
        lambda t: jsonl(t / "m.jsonl", [_msg(("user", "a"), ("assistant", "b")), _msg(("user", "only"))]),
        ("row", 2, "messages", 1)),
    "empty assistant answer": (
        lambda t: jsonl(t / "m.jsonl", [_msg(("user", "a"), ("assistant", "b")), _msg(("user", "q"), ("assistant", ""))]),
        ("row", 2, "messages", 1)),
    "unknown role": (
        lambda t: jsonl(t / "m.jsonl", [_msg(("user", "a"), ("assistant", "b")), _msg(("tool", "x"), ("assistant", "b"))]),
        ("row", 2, "messages", 1)),
    "role is not text": (
        lambda t: jsonl(t / "m.jsonl", [_msg(("user", "a"), ("assistant", "b")), {"messages": [{"role": ["x"], "content": "a"}]}]),
        ("row", 2, "messages", 1)),
    "messages is null": (
        lambda t: jsonl(t / "m.jsonl", [_msg(("user", "a"), ("assistant", "b")), {"messages": None}]),
        ("row", 2, "messages", 1)),
    "messages is a plain string": (
        lambda t: jsonl(t / "m.jsonl", [_msg(("user", "a"), ("assistant", "b")), {"messages": "hi"}]),
        ("row", 2, "messages", 1)),
    "content is a number": (
        lambda t: jsonl(t / "m.jsonl", [_msg(("user", "a"), ("assistant", "b")), _msg(("user", 5), ("assistant", "b"))]),
        ("row", 2, "messages", 1)),
    "more placeholders than images": (
        lambda t: png(t / "ok.png") and jsonl(t / "m.jsonl", [
            _msg(("user", "a"), ("assistant", "b")),
            _msg(("user", [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]),
                 ("assistant", "b"), images=["ok.png"])]),
        ("row", 2, "ok.png" and "images", 1)),
    "ShareGPT turn that is not an object": (
        lambda t: jsonl(t / "s.jsonl", [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
                                       {"conversations": ["hi", "there"]}]),
        ("row", 2, "conversations", 1)),
    "ShareGPT <image> marker without an image": (
        lambda t: jsonl(t / "s.jsonl", [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
                                       {"conversations": [{"from": "human", "value": "<image> a"}, {"from": "gpt", "value": "b"}]}]),
        ("row", 2, "image", 1)),
    "Alpaca output is null": (
        lambda t: jsonl(t / "a.jsonl", [{"instruction": "i", "input": "", "output": "o"},
                                       {"instruction": "i", "input": "", "output": None}]),
        ("row", 2, "output", 1)),
    "Alpaca output is a list": (
        lambda t: jsonl(t / "a.jsonl", [{"instruction": "i", "input": "", "output": "o"},
                                       {"instruction": "i", "input": "", "output": ["a", "b"]}]),
        ("row", 2, "output", 1)),
    "lone surrogate in JSON text": (
        lambda t: _with_good(t, '{"image": "ok.png", "caption": "bad \\ud800 char"}'), ("clean", 2)),
    "unknown file type": (lambda t: write(t / "notes.txt", "hello"), ("error", None)),
    "folder with no dataset": (lambda t: write(t / "readme.md", "hi") and t, ("error", None)),
    "damaged HF dataset folder": (
        lambda t: write(t / "hf" / "dataset_dict.json", "{not json") and t / "hf", ("error", None)),
    "template with a bad format string": (
        lambda t: jsonl(t / "d.jsonl", [{"a": "x"}]), ("error", "template.answer")),
}
TEMPLATES = {"template with a bad format string": {"answer": "{a"}}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_is_reported_not_raised(tmp_path, name):
    build, expect = CASES[name]
    path = build(tmp_path)
    kwargs = {"template": TEMPLATES[name]} if name in TEMPLATES else {}
    if expect[0] == "error":
        with pytest.raises(DataError) as err:
            validate(open_dataset(path, **kwargs))
        assert err.value.file, f"{name}: the error must name the file: {err.value}"
        assert err.value.fix or "." in err.value.problem
        if expect[1]:
            assert err.value.field == expect[1], str(err.value)
        return
    report = validate(open_dataset(path, **kwargs))
    kind = expect[0]
    if kind == "clean":
        assert not report.problems, [p.message for p in report.problems]
        assert report.rows_usable == expect[1]
        return
    if kind == "warn":
        _, line, usable = expect
        assert report.warnings and not report.errors, [p.message for p in report.problems]
        assert report.warnings[0].line == line and report.warnings[0].file
        assert report.rows_usable == usable
        return
    _, line, field, usable = expect
    errors = report.errors
    assert len(errors) == 1, [p.to_dict() for p in report.problems]
    p = errors[0]
    assert p.file and p.line == line and p.field == field, p.to_dict()
    assert report.rows_usable == usable and report.rows_found >= usable


def test_corpus_is_big_enough():
    assert len(CASES) >= 30


def test_strict_policy_raises_listing_problems(tmp_path):
    path = _with_good(tmp_path, "[1]", "nope", rows=[])
    with pytest.raises(DataError) as err:
        validate(open_dataset(path), policy="strict")
    assert "2 row problem(s)" in str(err.value) and err.value.line == 2
    report = validate(open_dataset(path))  # skip: drop and count
    assert (report.rows_found, report.rows_usable, len(report.errors)) == (3, 1, 2)


def test_sample_of_a_bad_row_raises_data_error_with_location(tmp_path):
    ds = open_dataset(_with_good(tmp_path, '{"image": "ok.png", "caption": null}'))
    with pytest.raises(DataError) as err:
        ds.sample(1)
    assert (err.value.line, err.value.field) == (2, "caption") and err.value.file.endswith("d.jsonl")
