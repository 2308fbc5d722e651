"""Issue 14, datasets: a row never aborts a run, `data check` and `train` agree on the usable rows,
limits come before expensive work, and hostile data gets located row errors, never a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from PIL import Image

from finetune_app.core.config import TrainConfig
from finetune_app.core.data import open_dataset, validate
from finetune_app.core.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def cli(*argv, stdout_only: bool = False) -> tuple[int, str]:
    """`finetune-app ARGV` in this process: (exit code, stdout + stderr, or stdout only)."""
    from finetune_app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return int(code or 0), out.getvalue() + ("" if stdout_only else err.getvalue())


def lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat(user: str, answer: str, image: str | None = None) -> dict:
    row = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    if image:
        row["images"] = [image]
    return row


def error_lines(problems) -> set[int]:
    return {p["line"] if isinstance(p, dict) else p.line for p in problems
            if (p["severity"] if isinstance(p, dict) else p.severity) == "error"}


@pytest.fixture
def hostile_vision_set(tmp_path, shapes_data):
    """Good image rows plus the rows that passed `data check` but killed `train` (issue 14)."""
    d = tmp_path / "data"
    d.mkdir()
    for i, name in enumerate(sorted((shapes_data / "images").iterdir())[:12]):
        (d / f"{i}.png").write_bytes(name.read_bytes())
    Image.new("RGB", (1, 60000), (200, 0, 0)).save(d / "tall.png")
    rows = [chat("Describe this image.", f"shape number {i}", f"{i}.png") for i in range(12)]
    rows.insert(2, chat("Describe this image.", "a very tall red line", "tall.png"))  # line 3
    rows.insert(5, {"messages": [{"role": "assistant", "content": "I speak first"},  # line 6
                                 {"role": "user", "content": "ok"},
                                 {"role": "assistant", "content": "fine"}]})
    rows.insert(8, chat("Describe this image.", "x" * 5000, "1.png"))  # line 9: over 64 * 32 chars
    rows.insert(10, '{"messages": [{"role": "user", "content": "q"}, '  # line 11
                    '{"role": "assistant", "content": NaN}]}')
    return lines(d / "train.jsonl", rows)


def test_rows_that_killed_train_are_skipped_and_data_check_agrees(hostile_vision_set, tiny_model,
                                                                   tmp_path):
    from finetune_app.core.training.events import Notice
    from finetune_app.core.training.trainer import Trainer

    code, out = cli("data", "check", hostile_vision_set, "--json", "--max-length", "64",
                    stdout_only=True)
    assert code == 0, out
    checked = json.loads(out)
    assert error_lines(checked["problems"]) == {3, 6, 9, 11}, checked["problems"]

    notices = []
    trainer = Trainer(TrainConfig(model=str(tiny_model("qwen2_vl")), data=str(hostile_vision_set),
                                  output=str(tmp_path / "run"), iters=2, max_length=64,
                                  sample_count=0, steps_per_eval=100),
                      listeners=[lambda e: notices.append(e) if isinstance(e, Notice) else None])
    result = trainer.run()
    assert result.status == "finished" and result.step == 2
    assert error_lines(trainer.data.skipped_rows) == {3, 6, 9, 11}
    by_line = {p.line: p for p in trainer.data.skipped_rows}
    assert "1x60000" in by_line[3].message and by_line[3].field == "image"
    assert "starts with the assistant" in by_line[6].message
    assert "characters" in by_line[9].message
    assert "NaN" in by_line[11].message and by_line[11].field == "messages"
    notice = " ".join(n.message for n in notices)
    assert "train.jsonl line 3 [image]" in notice and "4 of 16 rows were skipped" in notice


HUGE_CAPTION_MB = 200


def test_huge_caption_is_refused_before_tokenising(tmp_path, tiny_model):
    """A 200 MB answer once drove `train` to 22 GB. It is refused unread; the run goes on and
    the process stays small."""
    data = tmp_path / "d.jsonl"
    good = [{"question": f"what is {i} plus one?", "answer": f"{i + 1}."} for i in range(10)]
    with data.open("w") as fh:
        for row in good[:4]:
            fh.write(json.dumps(row) + "\n")
        fh.write('{"question": "tell me everything", "answer": "')
        chunk = "a" * (1 << 20)
        for _ in range(HUGE_CAPTION_MB):
            fh.write(chunk)
        fh.write('"}\n')
        for row in good[4:]:
            fh.write(json.dumps(row) + "\n")
    script = textwrap.dedent(f"""
        import resource, sys
        from finetune_app.cli import main
        code = main(["train", "--model", {str(tiny_model("qwen2"))!r}, "--data", {str(data)!r},
                     "--output", {str(tmp_path / "run")!r}, "--iters", "1", "--sample-count", "0"])
        print("EXIT", code, "MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert "EXIT 0" in out, out
    assert "d.jsonl line 5" in out and "not read" in out, out
    rss_mb = int(out.rsplit("MAXRSS_KB", 1)[1].split()[0]) / 1024
    assert rss_mb < 1200, f"peak RSS {rss_mb:.0f} MB"  # about 400 MB here; 22 GB before the fix


def test_long_text_below_the_line_cap_is_refused_by_length_before_tokenising(tmp_path):
    """Both sides use one bound (max_length * 32 characters): data check says it without a model."""
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nq1,a1\nq2," + "b" * 70_000 + "\nq3,a3\n")
    report = validate(open_dataset(csv), max_length=2048)
    assert report.usable_indices == [0, 2]
    (p,) = report.errors
    assert p.line == 3 and "70,002 characters" in p.message and "--max-length" in p.message
    code, out = cli("data", "check", csv)
    assert code == 0 and "qa.csv line 3" in out and "characters" in out, out


@pytest.mark.parametrize("value, says", [
    ("NaN", "NaN"), ("Infinity", "Infinity"), ("true", "boolean true"), ("false", "boolean"),
    ("42", "number"), ("1.5", "number"), ("null", "empty or missing"), ('{"a": 1}', "object"),
])
def test_non_string_captions_are_row_errors(tmp_path, value, says):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = lines(tmp_path / "d.jsonl", [{"image": "a.png", "caption": "fine"},
                                        f'{{"image": "a.png", "caption": {value}}}'])
    report = validate(open_dataset(data))
    assert report.usable_indices == [0]
    (p,) = report.errors
    assert (p.line, p.field) == (2, "caption") and says in p.message, p


def test_nul_in_image_path_and_huge_integer_are_row_errors(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = lines(tmp_path / "d.jsonl", [
        {"image": "a.png", "caption": "fine"},
        {"image": "a\u0000.png", "caption": "nul"},
        '{"image": "a.png", "caption": "big", "id": ' + "7" * 5000 + "}",
        {"image": "a.png", "caption": "fine too"}])
    code, out = cli("data", "check", data, "--json", stdout_only=True)
    assert code == 0, out
    problems = {p["line"]: p for p in json.loads(out)["problems"]}
    assert set(problems) == {2, 3}
    assert "NUL" in problems[2]["message"] and problems[2]["field"] == "image"
    assert "4300" in problems[3]["message"]


def test_bad_jsonl_lines_before_good_ones_are_skipped_not_the_file(tmp_path):
    data = lines(tmp_path / "d.jsonl", ["{broken"] * 60 + [
        {"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    report = validate(open_dataset(data))
    assert report.rows_usable == 5 and len(report.errors) == 60
    assert error_lines(report.problems) == set(range(1, 61))
    not_jsonl = tmp_path / "x.jsonl"
    not_jsonl.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(DataError) as err:
        open_dataset(not_jsonl)
    assert err.value.file.endswith("x.jsonl")


def test_unbalanced_csv_quote_is_a_located_error(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "captions.csv").write_text(
        'filename,caption\na.png,one\na.png,two\na.png,"three\na.png,four\na.png,five\n')
    code, out = cli("data", "check", tmp_path)
    assert code == 4, out
    assert "captions.csv" in out and "line 4" in out and "quote" in out, out
    # a balanced multi-line quote is still fine
    (tmp_path / "captions.csv").write_text('filename,caption\na.png,"one\nline"\na.png,two\n')
    assert validate(open_dataset(tmp_path)).rows_usable == 2


def test_only_row_in_validation_says_so(tmp_path, tiny_model):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer,split\nwhat is one plus one?,two.,valid\n")
    code, out = cli("train", "--model", tiny_model("qwen2"), "--data", data,
                    "--output", tmp_path / "run", "--iters", "1", "--sample-count", "0")
    assert code == 4, out
    assert "went to validation" in out and "all skipped" not in out, out


def test_one_row_without_own_split_trains(tmp_path):
    from finetune_app.core.data import split

    data = lines(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    for seed in range(40):  # whatever the seed, the only row is not all held out
        train, _ = split(validate(open_dataset(data)), valid_fraction=0.5, seed=seed)
        assert train == [0]


def test_missing_paths_never_try_the_hub(tmp_path, monkeypatch):
    from finetune_app.core.data.sources import hf

    def no_hub(name):
        raise AssertionError(f"tried the hub for {name}")

    monkeypatch.setattr(hf, "load_hub", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for path in ("data/train", "./a/b", "a/b.jsonl", "/nowhere/x", "~/x/y", "a/b/c"):
        code, out = cli("data", "check", path)
        assert code == 4 and "not found" in out and path in out, (path, out)


def test_hub_shaped_id_offline_answers_without_the_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    code, out = cli("data", "check", "nobody/nothing")
    assert code == 4 and "not found" in out and "nobody/nothing" in out, out


def test_surrogates_in_image_paths_are_row_errors_and_print(tmp_path):
    """A real terminal (strict UTF-8 stdout) once got a UnicodeEncodeError traceback from them."""
    from helpers import run_cli

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = tmp_path / "d.jsonl"
    data.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "\\ud800.png", "caption": "x"}\n')
    for extra in ((), ("--json",)):
        proc = run_cli("data", "check", data, *extra, env={**__import__("os").environ,
                                                           "PYTHONIOENCODING": "utf-8:strict"})
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "surrogate" in proc.stdout


def test_jsonl_index_reads_long_lines_in_chunks(tmp_path, monkeypatch):
    """Offsets stay exact whatever a line's length is against the read chunk (8 bytes here)."""
    from finetune_app.core.data.sources import jsonfile

    monkeypatch.setattr(jsonfile, "_CHUNK", 8)
    raw = [b'{"a":1}\n', b'{"a":12}\n', b"\n", b" " * 20 + b"\n", b'{"a":"' + b"x" * 30 + b'"}\n',
           b'{"a":123}']  # exactly one chunk + newline, blank, long blank, long, no final newline
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"".join(raw))
    src = jsonfile.JsonlSource(data, jsonfile.SourceCtx(file=str(data), base=str(tmp_path),
                                                        root=str(tmp_path)))
    offsets = [sum(map(len, raw[:k])) for k in range(len(raw))]
    assert src.rows() == [(k + 1, offsets[k], len(raw[k]), None) for k in (0, 1, 4, 5)]
    assert [src.read(key, size)[0]["a"] for _, key, size, _ in src.rows()] == [1, 12, "x" * 30, 123]
