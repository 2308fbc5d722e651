"""The side-by-side benchmark's FLOP counter and data generator (benchmarks/sbs_flops.py, sbs_data.py):
the counts MFU rests on, against a hand count, and the data's lengths against what it claims."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sbs_data  # noqa: E402
import sbs_flops  # noqa: E402


def test_flop_counts_match_a_hand_count(tiny_model):
    model = tiny_model("llama")
    cfg = json.loads((Path(model) / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = [(q, h), (kv, h), (kv, h), (h, q), (inter, h), (inter, h), (h, inter)]  # (out, in): q k v o gate up down
    c = sbs_flops.model_counts(Path(model), rank=16)
    assert c["n_body"] == layers * sum(o * i for o, i in per_layer)
    assert c["n_lora"] == layers * sum(16 * (o + i) for o, i in per_layer)
    # one row of 10 tokens, 3 supervised: head at the supervised positions vs at all of them
    rows = [{"length": 10, "supervised": 3, "patches": 0}]
    body = 4 * c["n_body"] * 10 + 6 * c["n_lora"] * 10 + 12 * layers * q * 100
    head = 4 * cfg["vocab_size"] * h
    assert sbs_flops.run_flops(c, rows, 2, "supervised", 0)["flops_lm"] == 2 * (body + 3 * head)
    assert sbs_flops.run_flops(c, rows, 1, "all", 0)["flops_lm"] == body + 10 * head


def test_vision_tower_counted_per_pass(tiny_model):
    model = Path(tiny_model("qwen2_vl"))
    c = sbs_flops.model_counts(model, rank=16)
    assert c["n_vision"] > 0 and c["n_merger"] > 0 and not c["conv_tower"]
    rows = [{"length": 20, "supervised": 5, "patches": 16}]
    once = sbs_flops.run_flops(c, rows, 3, "supervised", 1)
    every = sbs_flops.run_flops(c, rows, 3, "all", 3)
    assert once["flops_tower"] * 3 == every["flops_tower"] > 0
    assert once["flops_total"] == once["flops_lm"] + once["flops_tower"]


def test_alpaca_shaped_lengths_and_captions(tmp_path):
    instr, inp, ans = sbs_data.alpaca_lengths(np.random.default_rng(0), 2000)
    assert 40 <= statistics.median(ans) <= 50 and np.percentile(ans, 95) > 150  # median ~45 words, long tail
    assert 10 <= statistics.median(instr) <= 14 and 0.35 < (inp > 0).mean() < 0.45
    data = sbs_data.write_vlm(tmp_path / "vlm", 12, 2, size=32, tokens_per_word=1.5)
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    words = [len(r["messages"][1]["content"].split()) for r in rows]
    assert all(30 / 1.5 - 1 <= w <= 60 / 1.5 + 1 for w in words)  # 30-60 tokens at 1.5 tokens per word
    assert all((data / r["images"][0]).is_file() for r in rows)
