"""Preference rows (issue 17): every layout TRL, mlx-vlm and ShareGPT/LLaMA-Factory write, located
errors, SFT on them learns the chosen answers, and pairs supervise the final answer only."""

from __future__ import annotations

import pytest
from test_data_fixtures import jsonl, png

from finetune_app.core.data import open_dataset, validate
from finetune_app.core.errors import DataError


def turns(s):
    return [(t.role, t.text) for t in s.turns]


def test_every_preference_layout_reads_as_prompt_chosen_rejected(tmp_path):
    png(tmp_path / "a.png")
    rows = [
        {"prompt": "Say hi", "chosen": "hi", "rejected": "bye", "system": "Be brief."},  # TRL / mlx-lm-lora
        {"prompt": [{"role": "user", "content": "Say hi"}], "chosen": [{"role": "assistant", "content": "hi"}],
         "rejected": [{"role": "assistant", "content": "no"}]},  # TRL conversational
        {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]},  # implicit prompt
        {"conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": "Red?"},
                           {"from": "human", "value": "Sure?"}],
         "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"},
         "images": ["a.png"]},  # ShareGPT with a final pair (LLaMA-Factory ranking rows)
        {"images": ["a.png"], "prompt": "What colour?", "chosen": "red", "rejected": "blue"},  # mlx-vlm
    ]
    ds = open_dataset(jsonl(tmp_path / "pairs.jsonl", rows))
    assert ds.format == "preference"
    s = [ds.sample(i) for i in range(len(rows))]
    assert turns(s[0]) == [("system", "Be brief."), ("user", "Say hi"), ("assistant", "hi")]
    assert s[0].rejected.text == "bye" and s[0].answer == "hi"  # SFT on these rows learns the chosen answers
    assert turns(s[1]) == [("user", "Say hi"), ("assistant", "hi")] and s[1].rejected.text == "no"
    assert turns(s[2]) == [("user", "Q"), ("assistant", "A")] and s[2].rejected.text == "B"
    assert turns(s[3])[-2:] == [("user", "Sure?"), ("assistant", "yes")] and s[3].rejected.text == "no"
    assert s[3].turns[0].n_images == 1 and len(s[3].images) == 1
    assert turns(s[3].with_rejected_answer())[-1] == ("assistant", "no")
    assert s[4].images and s[4].turns[0].n_images == 1 and s[4].rejected.text == "blue"
    report = validate(ds)
    assert report.rows_usable == 5 and not [p for p in report.problems if p.severity == "error"]


@pytest.mark.parametrize("row,field,words", [
    ({"prompt": "x", "chosen": "same", "rejected": " same"}, "rejected", "same answer"),
    ({"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
      "rejected": [{"role": "user", "content": "R"}, {"role": "assistant", "content": "B"}]}, "rejected",
     "do not share the prompt"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "no 'prompt'"),
    ({"prompt": "x", "chosen": "", "rejected": "b"}, "chosen", "empty"),
    ({"prompt": "x", "chosen": "a", "rejected": 3}, "rejected", "must be text"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "a"}],
      "rejected": "b"}, "chosen", "the answer only"),
    ({"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "chosen": "a",
      "rejected": "b"}, "prompt", "end with a user message"),
])
def test_bad_pairs_are_located(tmp_path, row, field, words):
    good = {"prompt": "ok", "chosen": "yes", "rejected": "no"}
    ds = open_dataset(jsonl(tmp_path / "pairs.jsonl", [good, row]))
    with pytest.raises(DataError) as err:
        ds.sample(1)
    assert err.value.line == 2 and err.value.field == field and words in err.value.problem
    bad = [p for p in validate(ds).problems if p.severity == "error"]
    assert [(p.line, p.field) for p in bad] == [(2, field)]


def test_pairs_supervise_only_the_final_answer(tiny_model, tmp_path):
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.models import load_base

    ds = open_dataset(jsonl(tmp_path / "pairs.jsonl", [
        {"conversations": [{"from": "human", "value": "one"}, {"from": "gpt", "value": "earlier answer"},
                           {"from": "human", "value": "two"}],
         "chosen": {"from": "gpt", "value": "good final"}, "rejected": {"from": "gpt", "value": "bad"}}]))
    base = load_base(str(tiny_model("llama")))
    sample = ds.sample(0)
    pair = Encoder(base, pairs=True).encode(sample, index=0)
    tok = base.tokenizer
    for ex, answer in ((pair.chosen, "good final"), (pair.rejected, "bad")):
        supervised = tok.decode(ex.input_ids[ex.target_mask].tolist())
        assert supervised.startswith(answer) and "earlier" not in supervised
    assert pair.units == 1 and pair.n_targets == pair.chosen.n_targets + pair.rejected.n_targets
    sft = Encoder(base).encode(sample, index=0)  # SFT: every answer of the conversation, chosen last
    assert "earlier answer" in tok.decode(sft.input_ids[sft.target_mask].tolist())
    with pytest.raises(DataError, match="no rejected answer"):
        Encoder(base, pairs=True).encode(open_dataset(jsonl(tmp_path / "sft.jsonl", [
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])).sample(0))
