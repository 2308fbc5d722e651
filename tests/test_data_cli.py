"""`finetune-app data check`: text and JSON reports, --model token counting, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_data_fixtures import jsonl, png

from finetune_app.cli import main

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>"
                 "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
                 "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}"
                 "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>{% endfor %}")


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer with a chat template, built offline in a second."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<image>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["a red circle", "What is in the picture?", "hello world"] * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>",
                                                pad_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(str(path))
    return path


@pytest.fixture
def dataset(tmp_path):
    png(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": "a red circle"},
            {"image": "a.png", "caption": "a red circle " * 40},
            {"image": "gone.png", "caption": "x"}]
    return jsonl(tmp_path / "d.jsonl", rows, raw_lines=["{broken"])


def test_text_report_and_exit_code(dataset, capsys):
    assert main(["data", "check", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "4 found, 2 usable" in out and "gone.png" in out and "line 4" in out


def test_json_report(dataset, capsys):
    assert main(["data", "check", str(dataset), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["rows_found"], d["rows_usable"]) == (4, 2)
    by_line = {p["line"]: p for p in d["problems"]}
    assert by_line[3]["field"] == "image" and by_line[3]["file"].endswith("d.jsonl")
    assert by_line[4]["field"] is None and "JSON" in by_line[4]["message"]


def test_model_tokenizer_counts_and_max_length(dataset, tiny_tokenizer, capsys):
    code = main(["data", "check", str(dataset), "--model", str(tiny_tokenizer),
                 "--max-length", "60", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["rows_usable"] == 1
    assert d["token_lengths"]["max"] <= 60 and d["histogram"]
    assert any("longer than the max length 60" in p["message"] for p in d["problems"])
    assert main(["data", "check", str(dataset), "--model", str(tiny_tokenizer)]) == 0
    assert "Token lengths: min" in capsys.readouterr().out


def test_nothing_usable_exits_4(tmp_path, capsys):
    bad = jsonl(tmp_path / "bad.jsonl", [{"image": "nope.png", "caption": "x"}])
    assert main(["data", "check", str(bad)]) == 4
    assert "Nothing usable" in capsys.readouterr().out
    assert main(["data", "check", str(bad), "--json"]) == 4
    assert json.loads(capsys.readouterr().out)["rows_usable"] == 0


def test_unreadable_dataset_exits_4_in_both_modes(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["data", "check", str(empty)]) == 4
    assert "empty.jsonl" in capsys.readouterr().err
    assert main(["data", "check", str(empty), "--json"]) == 4
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["file"].endswith("empty.jsonl") and "no rows" in err["message"]


def test_bad_model_folder_exits_3(dataset, tmp_path, capsys):
    assert main(["data", "check", str(dataset), "--model", str(tmp_path / "nope")]) == 3


def test_format_and_template_options(tmp_path, capsys):
    f = jsonl(tmp_path / "t.jsonl", [{"q": "2+2?", "a": "4"}])
    assert main(["data", "check", str(f)]) == 4  # cannot tell the format
    assert "--format" in capsys.readouterr().err
    assert main(["data", "check", str(f), "--template", '{"prompt": "{q}", "answer": "{a}"}']) == 0
    assert main(["data", "check", str(f), "--format", "alpaca"]) == 4
    assert "no 'instruction' column" in capsys.readouterr().err


def test_real_process_exit_code(tmp_path):
    bad = jsonl(tmp_path / "bad.jsonl", [{"image": "nope.png", "caption": "x"}])
    proc = subprocess.run([sys.executable, "-m", "finetune_app", "data", "check", str(bad), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert json.loads(proc.stdout)["problems"][0]["line"] == 1
