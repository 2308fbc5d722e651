"""GRPO's verifiable rewards: each function, the weighted-sum spec, and located errors for bad specs."""

import json

import pytest

from finetune_app.core import rewards
from finetune_app.core.config import TrainConfig
from finetune_app.core.errors import ConfigError


def test_match_and_normalized():
    assert rewards.exact_match("  Paris\n", "Paris") == 1.0
    assert rewards.exact_match("paris", "Paris") == 0.0
    assert rewards.normalized_match("The  answer: PARIS!", "the answer paris") == 1.0
    assert rewards.normalized_match("Paris, France", "Paris") == 0.0


def test_regex_length_and_json():
    r = rewards.parse(r"regex:^\d+$")
    assert r.score("42", "")[0] == 1.0 and r.score("42 apples", "")[0] == 0.0
    window = rewards.parse("length:3-5")
    assert [window.score(t, "")[0] for t in ("ab", "abc", " abcde ", "abcdef")] == [0.0, 1.0, 1.0, 0.0]
    js = rewards.parse("json")
    assert js.score('{"a": [1, 2]}', "")[0] == 1.0
    assert js.score("{'a': 1}", "")[0] == 0.0
    assert js.score('{"a": 1} trailing', "")[0] == 0.0


def test_json_against_a_schema(tmp_path):
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}}, "required": ["colour"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    r = rewards.parse("json:schema.json", base_dir=tmp_path)
    assert r.score('{"colour": "red"}', "")[0] == 1.0
    assert r.score('{"colour": "green"}', "")[0] == 0.0
    assert r.score('{"shape": "star"}', "")[0] == 0.0
    assert r.score("not json", "")[0] == 0.0


def test_weighted_sum_and_parts():
    r = rewards.parse("match:1.0, json:0.5, length:1-10:0.2, regex:/a,b:c/:2")
    assert [t.name for t in r.terms] == ["match", "json", "length:1-10", "regex:a,b:c"]
    total, parts = r.score('"x"', '"x"')
    assert parts == {"match": 1.0, "json": 1.0, "length:1-10": 1.0, "regex:a,b:c": 0.0}
    assert total == pytest.approx(1.7)
    assert r.score("a,b:c", "zz")[0] == pytest.approx(2.2)


@pytest.mark.parametrize("spec, where, what", [
    ("match:1,blah:2", 9, "unknown reward 'blah'"),
    ("match,regex", 7, "'regex' needs an argument"),
    ("length:80-20", 8, "not a window"),
    ("regex:/abc:1", 7, "not closed"),
    ("regex:(:1", 7, "not a regular expression"),
    ("match:1,match:2", 9, "given twice"),
    ("match:x", 7, "takes no argument"),
    (",match", 1, "name is missing"),
])
def test_bad_specs_are_located(spec, where, what):
    with pytest.raises(ConfigError) as err:
        rewards.parse(spec)
    assert err.value.field == "grpo_rewards"
    assert f"at character {where}:" in err.value.problem and what in err.value.problem


def test_schema_problems_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read") as err:
        rewards.parse("json:missing.json", base_dir=tmp_path)
    assert err.value.file.endswith("missing.json")
    (tmp_path / "bad.json").write_text('{"type": 5}')
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        rewards.parse("json:bad.json", base_dir=tmp_path)


def test_a_bad_spec_is_a_settings_problem():
    cfg = TrainConfig(objective="grpo", grpo_rewards="match:1,nope")
    assert "unknown reward 'nope'" in cfg.problems()["grpo_rewards"]
    assert "grpo_rewards" not in TrainConfig(objective="sft", grpo_rewards="nope").problems()


def test_schema_paths_are_relative_to_the_dataset(tmp_path):
    (tmp_path / "s.json").write_text('{"type": "array"}')
    (tmp_path / "train.jsonl").write_text("")
    for data in (tmp_path, tmp_path / "train.jsonl"):
        r = rewards.parse("json:s.json", base_dir=rewards.data_dir(data))
        assert r.score("[1]", "")[0] == 1.0 and r.score("{}", "")[0] == 0.0
