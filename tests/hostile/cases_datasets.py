"""Hostile datasets: each through `data check` (and a few through a cheap `train`), located errors,
never a traceback, and the user's files left as they were."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from hostile import case

QA = [{"question": f"what is {i} plus one?", "answer": f"{i + 1}."} for i in range(8)]


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _images(env, n: int = 2) -> Path:
    d = env.tmp / "imgs"
    d.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(d / f"{i}.png")
    return d


def _train(env, model_family: str, data: Path, *extra, exit: int = 0, says=()):
    env.keep(data)
    return env.expect("train", "--model", env.tiny_model(model_family), "--data", data,
                      "--output", env.tmp / "run", "--iters", "2", "--sample-count", "0",
                      "--steps-per-eval", "100", *extra, exit=exit, says=says)


# ---- paths -------------------------------------------------------------------------------------

@case("dataset", "missing-folder")
def _(env):
    env.expect("data", "check", env.tmp / "no-such-data", exit=4, says=["no-such-data", "not found"])


@case("dataset", "missing-path-shaped-like-a-hub-id-inside-a-local-folder")
def _(env):
    (env.tmp / "mydata").mkdir()
    env.expect("data", "check", "mydata/train", exit=4, says=["mydata/train", "not found", "check the path"])


@case("dataset", "nul-byte-in-dataset-path")
def _(env):
    env.expect("data", "check", "da\x00ta.jsonl", exit=4, says=["nul", "check the path"])


@case("dataset", "directory-named-like-a-jsonl-file")
def _(env):
    (env.tmp / "d.jsonl").mkdir()
    env.expect("data", "check", env.tmp / "d.jsonl", exit=4, says=["d.jsonl"])


@case("dataset", "empty-file")
def _(env):
    (env.tmp / "d.jsonl").write_text("")
    env.expect("data", "check", env.tmp / "d.jsonl", exit=4, says=["d.jsonl", "no rows", "add rows"])


@case("dataset", "binary-file-named-jsonl")
def _(env):
    (env.tmp / "d.jsonl").write_bytes(b"{\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    env.expect("data", "check", env.tmp / "d.jsonl", exit=4, says=["d.jsonl", "json object"])


# ---- rows ---------------------------------------------------------------------------------------

@case("dataset", "nul-byte-in-image-path")
def _(env):
    _images(env)
    data = _jsonl(env.tmp / "imgs" / "d.jsonl", [{"image": "0.png", "caption": "ok"},
                                                 {"image": "1\u0000.png", "caption": "nul"}])
    env.keep(data)
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "[image]", "nul byte", "fix the path"])


@case("dataset", "integer-of-5000-digits")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA[:3] + ['{"question": "q", "answer": "a", "n": ' + "9" * 5000 + "}"])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 4", "4300", "fix or remove the line"])


@case("dataset", "caption-is-nan")
def _(env):
    _images(env)
    data = _jsonl(env.tmp / "imgs" / "d.jsonl", [{"image": "0.png", "caption": "ok"},
                                                 '{"image": "1.png", "caption": NaN}'])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "[caption]", "NaN", "quote it"])


@case("dataset", "answer-is-infinity")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA[:2] + ['{"question": "q", "answer": -Infinity}'])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 3", "[answer]", "Infinity", "quote it"])


@case("dataset", "caption-is-true")
def _(env):
    _images(env)
    data = _jsonl(env.tmp / "imgs" / "d.jsonl", [{"image": "0.png", "caption": "ok"},
                                                 {"image": "1.png", "caption": True}])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "[caption]", "boolean", "quote it"])


@case("dataset", "answer-is-a-number")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA[:2] + [{"question": "q", "answer": 42}])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 3", "[answer]", "a number", "quote it"])


@case("dataset", "output-is-an-object")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", [{"instruction": "i", "input": "", "output": "o"},
                                        {"instruction": "i", "input": "", "output": {"text": "o"}}])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "[output]", "object", "quote it"])


@case("dataset", "sixty-bad-lines-before-good-ones")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", ["{not json"] * 60 + QA)
    res = env.expect("data", "check", data, exit=0, says=["d.jsonl line 1", "68 found, 8 usable", "fix or remove"])
    assert "60 error(s)" in res.text, res.text


@case("dataset", "every-line-is-bad")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", ["[1, 2]", "nope", '"text"'])
    env.expect("data", "check", data, exit=4, says=["d.jsonl", "line 1", "json object"])


@case("dataset", "csv-unbalanced-quote")
def _(env):
    d = env.copy(env.shapes_data, "shapes")
    text = (d / "captions.csv").read_text().splitlines()
    text[5] = text[5].replace(",", ',"', 1)  # line 6 opens a quote that never closes
    (d / "captions.csv").write_text("\n".join(text) + "\n")
    env.keep(d)
    env.expect("data", "check", d, exit=4, says=["captions.csv", "line 6", "quote", "close the quote"])


@case("dataset", "conversation-starts-with-the-assistant")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "assistant", "content": "I go first"}, {"role": "user", "content": "ok"},
                      {"role": "assistant", "content": "fine"}]}])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "[messages]", "starts with the assistant",
                                                    "start it with the user"])


@case("dataset", "image-1x60000")
def _(env):
    d = _images(env)
    Image.new("RGB", (1, 60000)).save(d / "tall.png")
    data = _jsonl(d / "d.jsonl", [{"image": "0.png", "caption": "ok"}, {"image": "tall.png", "caption": "tall"}])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "tall.png", "1x60000", "crop"])


@case("dataset", "caption-of-a-megabyte")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA[:2] + [{"question": "q", "answer": "x" * (1 << 20)}])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 3", "characters", "not tokenised", "shorten"])


@case("dataset", "jsonl-line-over-the-row-size-cap")
def _(env):
    data = env.tmp / "d.jsonl"
    with data.open("w") as fh:
        fh.write(json.dumps(QA[0]) + "\n")
        fh.write('{"question": "q", "answer": "' + "y" * (33 << 20) + '"}\n')
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "mib", "not read", "shorten"])


@case("dataset", "json-nested-ten-thousand-deep")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA[:2] + ['{"question": "q", "answer": ' + "[" * 10000 + "]" * 10000 + "}"])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 3"])


@case("dataset", "negative-max-length")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA)
    env.expect("data", "check", data, "--max-length", "-5", exit=5, says=["max-length", "2048"])


@case("dataset", "template-reads-attributes")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA)
    env.expect("data", "check", data, "--template", '{"prompt": "{question.__class__}", "answer": "{answer}"}',
               exit=(0, 4), says=["d.jsonl"])


# ---- through training (tiny models, two steps) ---------------------------------------------------

@case("dataset", "train-skips-tall-image-and-assistant-first")
def _(env):
    d = _images(env, 6)
    Image.new("RGB", (60000, 1)).save(d / "wide.png")
    rows = [{"messages": [{"role": "user", "content": "Describe this image."},
                          {"role": "assistant", "content": f"picture {i}"}], "images": [f"{i}.png"]}
            for i in range(6)]
    rows.insert(1, {"messages": [{"role": "user", "content": "Describe this image."},
                                 {"role": "assistant", "content": "wide"}], "images": ["wide.png"]})
    rows.insert(3, {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "u"},
                                 {"role": "assistant", "content": "a"}]})
    data = _jsonl(d / "d.jsonl", rows)
    _train(env, "qwen2_vl", data, exit=0, says=["2 of 8 rows were skipped", "d.jsonl line 2", "60000x1",
                                                "d.jsonl line 4", "finished"])


@case("dataset", "train-only-row-went-to-validation")
def _(env):
    data = env.tmp / "qa.csv"
    data.write_text("question,answer,split\nwhat is one plus one?,two.,valid\n")
    _train(env, "qwen2", data, exit=4, says=["qa.csv", "went to validation", "add more rows"])


@case("dataset", "train-non-string-answers-skipped")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", QA + ['{"question": "q", "answer": NaN}', '{"question": "q", "answer": true}'])
    _train(env, "qwen2", data, exit=0, says=["2 of 10 rows were skipped", "d.jsonl line 9", "NaN", "finished"])


@case("dataset", "train-every-row-bad")
def _(env):
    data = _jsonl(env.tmp / "d.jsonl", [{"question": "q", "answer": 1}, {"question": "q", "answer": 2}])
    _train(env, "qwen2", data, exit=4, says=["d.jsonl", "line 1", "all skipped", "data check"])


# ---- found while hunting (tracebacks before) -----------------------------------------------------

@case("dataset", "json-array-with-a-5000-digit-integer")
def _(env):
    data = env.tmp / "d.json"
    data.write_text("[\n" + json.dumps(QA[0]) + ',\n{"question": "q", "answer": "a", "n": ' + "7" * 5000 + "}\n]\n")
    env.expect("data", "check", data, exit=0, says=["d.json line 3", "4300", "fix the file"])


@case("dataset", "json-object-with-a-5000-digit-integer")
def _(env):
    data = env.tmp / "d.json"
    data.write_text('{"question": "q", "answer": "a", "n": ' + "7" * 5000 + "}\n")
    env.expect("data", "check", data, exit=4, says=["d.json", "4300", "check that this is the right file"])


@case("dataset", "fifo-named-like-a-dataset")
def _(env):
    import os

    fifo = env.tmp / "d.jsonl"
    os.mkfifo(fifo)
    env.expect("data", "check", fifo, exit=4, says=["d.jsonl", "not a regular file", "pass a dataset file"])


@case("dataset", "ten-thousand-turns-in-one-row")
def _(env):
    turns = [{"role": r, "content": "x"} for _ in range(5000) for r in ("user", "assistant")]
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = _jsonl(env.tmp / "d.jsonl", [good, good | {"id": 2}, {"messages": turns}])
    env.expect("data", "check", data, exit=0, says=["d.jsonl line 3", "10,000 turns", "split the conversation"])


@case("dataset", "lone-surrogates-in-image-paths")
def _(env):
    _images(env)
    data = env.tmp / "imgs" / "d.jsonl"
    data.write_text('{"image": "0.png", "caption": "ok"}\n{"image": "\\ud800.png", "caption": "x"}\n'
                    '{"image": "\\udcff.png", "caption": "y"}\n')
    res = env.expect("data", "check", data, exit=0, says=["d.jsonl line 2", "surrogate", "fix the path",
                                                         "d.jsonl line 3", "not found"])
    env.expect("data", "check", data, "--json", exit=0, says=["d.jsonl", "surrogate"])
    assert "2 error(s)" in res.text


@case("dataset", "train-text-model-skips-the-one-image-row")
def _(env):
    _images(env)
    data = _jsonl(env.tmp / "imgs" / "d.jsonl", QA[:5] + [{"question": "what is this?", "answer": "a square.",
                                                          "image": "0.png"}] + QA[5:])
    _train(env, "qwen2", data, exit=0, says=["1 of 9 rows were skipped", "d.jsonl line 6", "[images]",
                                             "text only", "finished"])


@case("dataset", "train-text-model-all-image-rows")
def _(env):
    d = env.copy(env.shapes_data, "shapes")
    _train(env, "qwen2", d, exit=4, says=["shapes", "text only", "vision-language"])
