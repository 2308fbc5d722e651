"""Every supported dataset layout and row format, read from files written here."""

from __future__ import annotations

import json

import pytest
from test_data_fixtures import jsonl, png, roles, write

from finetune_app.core.data import load_image, open_dataset, validate
from finetune_app.core.errors import DataError


def test_captions_folder_with_own_split(tmp_path):
    png(tmp_path / "images" / "a.png")
    png(tmp_path / "images" / "b.png")
    png(tmp_path / "images" / "c.png")
    write(tmp_path / "captions.csv", "filename,caption,split\na.png,a red circle,train\n"
          "images/b.png,a blue square,train\nc.png,a green triangle,valid\n")
    ds = open_dataset(tmp_path)
    assert (ds.format, ds.container, len(ds)) == ("caption", "captions-folder", 3)
    assert ds.has_images and ds.splits == {"train": [0, 1], "valid": [2]}
    s = ds.sample(1)
    assert s.answer == "a blue square" and s.turns[0].n_images == 1
    assert s.images[0].path == tmp_path / "images" / "b.png"
    assert ds.sample(2).split == "valid"
    assert load_image(s.images[0]).mode == "RGB"
    assert validate(ds).rows_usable == 3


def test_caption_jsonl_relative_to_file(tmp_path):
    png(tmp_path / "pics" / "x.png")
    f = jsonl(tmp_path / "data.jsonl", [{"image": "pics/x.png", "caption": "a cat"},
                                        {"image": ["pics/x.png", "pics/x.png"], "caption": "two",
                                         "prompt": "What?"}])
    ds = open_dataset(f)
    assert ds.format == "caption" and ds.container == "jsonl"
    assert ds.sample(0).images[0].path == tmp_path / "pics" / "x.png"
    two = ds.sample(1)
    assert len(two.images) == 2 and two.turns[0].n_images == 2 and two.prompt == "What?"


def test_sharegpt_multi_turn_multi_image(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    row = {"images": ["a.png", "b.png"], "system": "Be brief.", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"},
        {"from": "gpt", "value": "A square."},
        {"from": "human", "value": "And this? <image>"},
        {"from": "gpt", "value": "A circle."}]}
    ds = open_dataset(jsonl(tmp_path / "c.jsonl", [row]))
    s = ds.sample(0)
    assert ds.format == "sharegpt"
    assert roles(s) == ["system", "user", "assistant", "user", "assistant"]
    assert [t.n_images for t in s.turns] == [0, 1, 0, 1, 0]
    assert s.turns[1].text == "What is this?" and "<image>" not in s.turns[3].text
    assert s.answer == "A circle." and s.prompt.startswith("And this?")


def test_sharegpt_text_only(tmp_path):
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    ds = open_dataset(jsonl(tmp_path / "t.jsonl", [row]))
    assert ds.format == "sharegpt" and not ds.has_images
    assert ds.sample(0).answer == "hello"


def test_messages_with_parts_and_inline_images(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    rows = [
        {"images": ["a.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]},
        {"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "image", "image": "b.png"},
                                         {"type": "text", "text": "Q1"}]},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                         {"type": "text", "text": "Q2"}]},
            {"role": "assistant", "content": "A2"}]},
        {"images": ["a.png"], "messages": [{"role": "user", "content": "no placeholder"},
                                           {"role": "assistant", "content": "ok"}]},
    ]
    ds = open_dataset(jsonl(tmp_path / "m.jsonl", rows))
    assert ds.format == "messages"
    a, b, c = (ds.sample(i) for i in range(3))
    assert a.turns[0].n_images == 1 and a.turns[0].text == "Describe."
    assert [i.path.name for i in b.images] == ["b.png", "a.png"]
    assert [t.n_images for t in b.turns] == [0, 1, 0, 1, 0]
    assert c.turns[0].n_images == 1  # mlx-vlm: images go to the first user turn
    assert validate(ds).rows_usable == 3


def test_openai_chat_text_only(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    ds = open_dataset(jsonl(tmp_path / "chat.jsonl", rows))
    assert ds.format == "messages" and not ds.has_images and ds.sample(0).answer == "4"


def test_mlx_vlm_data_dir(tmp_path):
    png(tmp_path / "img" / "a.png")
    row = {"images": ["img/a.png"], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}
    jsonl(tmp_path / "train.jsonl", [row, row | {"messages": row["messages"][:1] + [
        {"role": "assistant", "content": "b"}]}])
    jsonl(tmp_path / "valid.jsonl", [row])
    jsonl(tmp_path / "test.jsonl", [row])
    ds = open_dataset(tmp_path)
    assert ds.container == "jsonl-folder" and len(ds) == 3
    assert len(ds.splits["train"]) == 2 and len(ds.splits["valid"]) == 1
    assert any("test.jsonl" in p.message for p in ds.problems)
    assert ds.sample(2).images[0].path == tmp_path / "img" / "a.png"


def test_alpaca_json_array_and_jsonl(tmp_path):
    rows = [{"instruction": "Add", "input": "2 and 3", "output": "5"},
            {"instruction": "Capital of France?", "input": "", "output": "Paris",
             "history": [["hi", "hello"]], "system": "Be terse."}]
    arr = write(tmp_path / "alpaca.json", json.dumps(rows, indent=2))
    ds = open_dataset(arr)
    assert (ds.format, ds.container) == ("alpaca", "json")
    assert ds.sample(0).prompt == "Add\n\n2 and 3"
    assert roles(ds.sample(1)) == ["system", "user", "assistant", "user", "assistant"]
    assert ds.rows[1].line == 7  # line numbers survive in JSON arrays
    ds2 = open_dataset(jsonl(tmp_path / "alpaca.jsonl", rows))
    assert ds2.format == "alpaca" and ds2.sample(1).answer == "Paris"


def test_llava_json(tmp_path):
    png(tmp_path / "coco" / "1.jpg")
    rows = [{"id": "1", "image": "coco/1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A dog."}]}]
    ds = open_dataset(write(tmp_path / "llava.json", json.dumps(rows)))
    assert ds.format == "llava" and ds.sample(0).images[0].path.name == "1.jpg"


def test_hf_imagefolder_metadata_jsonl_and_csv(tmp_path):
    png(tmp_path / "a" / "train" / "x.png")
    png(tmp_path / "a" / "validation" / "y.png")
    jsonl(tmp_path / "a" / "train" / "metadata.jsonl", [{"file_name": "x.png", "text": "cat"}])
    jsonl(tmp_path / "a" / "validation" / "metadata.jsonl", [{"file_name": "y.png", "text": "dog"}])
    ds = open_dataset(tmp_path / "a")
    assert (ds.format, ds.container) == ("caption", "imagefolder")
    assert ds.splits == {"train": [0], "valid": [1]}
    assert ds.sample(1).images[0].path == tmp_path / "a" / "validation" / "y.png"
    png(tmp_path / "b" / "z.png")
    write(tmp_path / "b" / "metadata.csv", "file_name,additional_feature\nz.png,a zebra\n")
    ds = open_dataset(tmp_path / "b")
    assert ds.container == "imagefolder" and ds.sample(0).answer == "a zebra"


def _hf():
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


def test_hf_saved_to_disk_messages_and_qa(tmp_path):
    datasets = _hf()
    png(tmp_path / "src" / "a.png")
    img = str(tmp_path / "src" / "a.png")
    msgs = [{"role": "user", "content": [{"type": "image", "text": None},
                                         {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    feats = datasets.Features({"images": datasets.List(datasets.Image()), "messages": [
        {"role": datasets.Value("string"), "content": [
            {"type": datasets.Value("string"), "text": datasets.Value("string")}]}]})
    ds = datasets.Dataset.from_dict({"images": [[img]] * 3, "messages": [msgs] * 3}, features=feats)
    datasets.DatasetDict({"train": ds, "validation": ds.select([0]), "test": ds}).save_to_disk(
        str(tmp_path / "hf"))
    d = open_dataset(tmp_path / "hf")
    assert (d.format, d.container, len(d)) == ("messages", "hf-disk", 4)
    assert d.has_images and len(d.splits["valid"]) == 1
    s = d.sample(0)
    assert s.images[0].data and s.images[0].path is None and s.answer == "red"
    assert load_image(s.images[0]).size == (8, 6)
    assert any("test" in p.message for p in d.problems)
    report = validate(d)
    assert report.rows_usable == 4 and len(report.duplicates) == 3
    qa = datasets.Dataset.from_dict({"image": [img], "question": ["Q?"], "answer": ["A."]}
                                    ).cast_column("image", datasets.Image())
    qa.save_to_disk(str(tmp_path / "qa"))
    d = open_dataset(tmp_path / "qa")
    assert d.format == "qa" and d.sample(0).prompt == "Q?" and d.sample(0).images[0].data


def test_hf_template_with_classlabel(tmp_path):
    datasets = _hf()
    ds = datasets.Dataset.from_dict(
        {"label": [0, 1], "text": ["round", "pointy"]},
        features=datasets.Features({"label": datasets.ClassLabel(names=["circle", "star"]),
                                    "text": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "t"))
    d = open_dataset(tmp_path / "t", template={"prompt": "Describe {label}", "answer": "{text}"})
    assert d.format == "template"
    assert (d.sample(1).prompt, d.sample(1).answer) == ("Describe star", "pointy")


def test_template_on_csv_with_image_column(tmp_path):
    png(tmp_path / "p" / "1.png")
    f = write(tmp_path / "x.csv", "photo,kind,words\np/1.png,cat,a cute cat\n")
    d = open_dataset(f, template={"prompt": "Is this a {kind}?", "answer": "{words}",
                                  "image": "photo", "system": "You look at photos."})
    s = d.sample(0)
    assert roles(s) == ["system", "user", "assistant"] and s.turns[1].n_images == 1
    with pytest.raises(DataError) as err:
        open_dataset(f, template={"answer": "{nope}"})
    assert "nope" in str(err.value) and "kind" in str(err.value)


def test_hub_id_offline_is_a_clear_data_error(monkeypatch):
    _hf()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        open_dataset("someone/not-a-local-folder")
    assert "hub" in str(err.value) and "someone/not-a-local-folder" in str(err.value)


def test_format_override_and_unknown_format(tmp_path):
    f = jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a", "instruction": "i",
                                      "output": "o"}])
    assert open_dataset(f).format == "alpaca"
    assert open_dataset(f, format="qa").sample(0).answer == "a"
    with pytest.raises(DataError, match="unknown dataset format"):
        open_dataset(f, format="nope")
    with pytest.raises(DataError, match="no 'conversations'"):
        open_dataset(f, format="sharegpt")


def test_preview_is_lazy(tmp_path):
    f = jsonl(tmp_path / "big.jsonl", [{"image": f"i{n}.png", "caption": f"c{n}"}
                                       for n in range(2000)])
    ds = open_dataset(f)  # images do not exist: indexing never looks at them
    assert len(ds) == 2000 and ds.sample(1999).answer == "c1999"
    report = validate(ds, check_images=False)
    assert report.rows_usable == 2000


def test_container_variants(tmp_path):
    import base64

    from test_data_fixtures import png_bytes

    png(tmp_path / "img" / "a.png")
    good = {"image": "img/a.png", "caption": "x"}
    lines = write(tmp_path / "lines.json", json.dumps(good) + "\n" + json.dumps(good | {"caption": "y"}))
    assert open_dataset(lines).container == "jsonl"  # JSON Lines saved as .json
    wrapped = write(tmp_path / "wrapped.json", json.dumps({"version": 1, "data": [good]}))
    assert open_dataset(wrapped).sample(0).answer == "x"
    tsv = write(tmp_path / "t.tsv", "image\tcaption\nimg/a.png\tx\n")
    semi = write(tmp_path / "s.csv", "image;caption\nimg\\a.png;x\n")  # Windows path, ; delimiter
    for f in (tsv, semi):
        assert open_dataset(f).sample(0).images[0].path == tmp_path / "img" / "a.png"
    inside = jsonl(tmp_path / "abs.jsonl", [good | {"image": str(tmp_path / "img" / "a.png")}])
    assert validate(open_dataset(inside)).rows_usable == 1
    uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    ds = open_dataset(jsonl(tmp_path / "uri.jsonl", [{"image": uri, "caption": "x"}]))
    assert load_image(ds.sample(0).images[0]).size == (8, 6)
    with pytest.raises(DataError, match="several data files"):
        open_dataset(tmp_path)
