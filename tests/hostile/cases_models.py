"""Hostile model folders: code of their own, damaged config / weights / tokenizer, absurd sizes, paths
that are not folders, for every command that loads a model."""

from __future__ import annotations

import json
from pathlib import Path

from hostile import case
from hostile.cases_adapters import make_adapter

AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoProcessor": "evil.EvilProcessor",
            "AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}


def _model(env, family: str = "qwen2_vl", name: str = "model") -> Path:
    return env.copy(env.tiny_model(family), name)


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _evil(env, model: Path, where: str = "config.json", key: str = "auto_map") -> Path:
    (model / "evil.py").write_text(env.marker_code("evil") + "from transformers import PretrainedConfig as EvilConfig\n")
    _edit(model / where, **{key: AUTO_MAP if key == "auto_map" else "evil.py"})
    env.keep(model)
    return model


def _image(env) -> Path:
    return next(p for p in sorted((env.shapes_data / "images").iterdir()) if p.is_file())


def _damage_header(model: Path, how: str) -> None:
    f = model / "model.safetensors"
    data = bytearray(f.read_bytes())
    if how == "garbage":
        data[8:24] = b"not a json head!"
    elif how == "length":
        data[0:8] = (1 << 60).to_bytes(8, "little")
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    f.write_bytes(bytes(data))


# ---- code from the folder -----------------------------------------------------------------------

@case("model", "auto-map-in-config-caption")
def _(env):
    m = _evil(env, _model(env))
    env.expect("caption", "--model", m, "--max-tokens", 2, _image(env), exit=3,
               says=["config.json", "auto_map", "never runs"])


@case("model", "auto-map-in-tokenizer-config-generate")
def _(env):
    m = _evil(env, _model(env, "qwen2"), where="tokenizer_config.json")
    env.expect("generate", "--model", m, "hi", exit=3, says=["tokenizer_config.json", "auto_map", "never runs"])


@case("model", "auto-map-in-preprocessor-config-train")
def _(env):
    m = _evil(env, _model(env), where="preprocessor_config.json")
    env.expect("train", "--model", m, "--data", env.shapes_data, "--output", env.tmp / "run", "--iters", 1,
               exit=3, says=["preprocessor_config.json", "auto_map", "never runs"])


@case("model", "model-file-export")
def _(env):
    m = _evil(env, _model(env, "qwen2"), key="model_file")
    env.expect("export", "--model", m, "--adapter", make_adapter(env, "qwen2"), "--target", "mlx-lm",
               "--output", env.tmp / "bundle", exit=3, says=["config.json", "model_file", "never runs"])


@case("model", "auto-map-data-check")
def _(env):
    m = _evil(env, _model(env))
    env.expect("data", "check", env.shapes_data, "--model", m, exit=3,
               says=["config.json", "auto_map", "never runs"])


@case("model", "shipped-python-compare")
def _(env):
    m = _model(env)
    (m / "modeling_custom.py").write_text(env.marker_code("shipped"))
    env.keep(m)
    env.expect("compare", "--model", m, "--adapter", make_adapter(env), "--data", env.shapes_data, "--limit", 1,
               exit=3, says=["modeling_custom.py", "never runs"])


# ---- damaged config.json ---------------------------------------------------------------------------

@case("model", "config-is-a-list")
def _(env):
    m = _model(env, "qwen2")
    (m / "config.json").write_text("[1, 2, 3]")
    env.expect("generate", "--model", m, "hello", exit=3, says=["config.json", "object", "re-download"])


@case("model", "config-not-json-train")
def _(env):
    m = _model(env, "qwen2")
    (m / "config.json").write_text('{"model_type": "qwen2", ')
    env.expect("train", "--model", m, "--data", env.instruction_data, "--output", env.tmp / "run", "--iters", 1,
               exit=3, says=["config.json", "not valid json", "re-download"])


@case("model", "absurd-vocab-size")
def _(env):
    m = _model(env, "qwen2")
    _edit(m / "config.json", vocab_size=10 ** 12)
    env.expect("generate", "--model", m, "hi", exit=3, says=["config.json", "vocab_size", "re-download"])


@case("model", "absurd-hidden-size-export")
def _(env):
    m = _model(env)
    _edit(m / "config.json", hidden_size=1 << 40)
    env.expect("export", "--model", m, "--adapter", make_adapter(env), "--target", "mlx-vlm",
               "--output", env.tmp / "bundle", exit=3, says=["config.json", "hidden_size", "re-download"])


@case("model", "absurd-layer-count-train")
def _(env):
    m = _model(env)
    _edit(m / "config.json", num_hidden_layers=10 ** 9)
    env.expect("train", "--model", m, "--data", env.shapes_data, "--output", env.tmp / "run", "--iters", 1,
               exit=3, says=["config.json", "num_hidden_layers", "re-download"])


@case("model", "vocab-size-is-a-string")
def _(env):
    m = _model(env)
    _edit(m / "config.json", vocab_size="lots")
    env.expect("caption", "--model", m, _image(env), exit=3, says=["config.json", "vocab_size", "re-download"])


@case("model", "negative-vision-depth")
def _(env):
    m = _model(env)
    cfg = json.loads((m / "config.json").read_text())
    cfg["vision_config"]["depth"] = -3
    (m / "config.json").write_text(json.dumps(cfg))
    env.expect("generate", "--model", m, "hi", exit=3, says=["config.json", "vision_config.depth", "re-download"])


# ---- damaged weights ---------------------------------------------------------------------------------

@case("model", "safetensors-garbage-header")
def _(env):
    m = _model(env)
    _damage_header(m, "garbage")
    env.expect("generate", "--model", m, "hi", exit=3, says=["model.safetensors", "damaged", "re-download"])


@case("model", "safetensors-huge-header-length-train")
def _(env):
    m = _model(env, "qwen2")
    _damage_header(m, "length")
    env.expect("train", "--model", m, "--data", env.instruction_data, "--output", env.tmp / "run", "--iters", 1,
               exit=3, says=["model.safetensors", "header", "re-download"])


@case("model", "safetensors-truncated-compare")
def _(env):
    m = _model(env)
    _damage_header(m, "truncated")
    env.expect("compare", "--model", m, "--adapter", make_adapter(env), "--data", env.shapes_data, "--limit", 1,
               exit=3, says=["model.safetensors", "truncated", "re-download"])


@case("model", "safetensors-empty-export")
def _(env):
    m = _model(env, "qwen2")
    _damage_header(m, "empty")
    env.expect("export", "--model", m, "--adapter", make_adapter(env, "qwen2"), "--target", "mlx-lm",
               "--output", env.tmp / "bundle", exit=3, says=["model.safetensors", "damaged", "re-download"])


@case("model", "only-pytorch-bin-weights")
def _(env):
    m = _model(env, "qwen2")
    (m / "model.safetensors").rename(m / "pytorch_model.bin")
    env.expect("generate", "--model", m, "hi", exit=3, says=[str(m), "safetensors", "convert"])


# ---- tokenizer -----------------------------------------------------------------------------------------

@case("model", "vision-model-without-tokenizer")
def _(env):
    m = _model(env)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (m / name).unlink()
    env.expect("caption", "--model", m, _image(env), exit=3, says=[str(m), "tokenizer", "copy"])


@case("model", "tokenizer-json-corrupt")
def _(env):
    m = _model(env)
    (m / "tokenizer.json").write_text("{not json")
    env.expect("train", "--model", m, "--data", env.shapes_data, "--output", env.tmp / "run", "--iters", 1,
               exit=3, says=["tokenizer.json", "not valid json", "re-download"])


# ---- paths ----------------------------------------------------------------------------------------------

@case("model", "missing-local-path-shaped-like-hub-id")
def _(env):
    (env.tmp / "models").mkdir()
    env.expect("generate", "--model", "models/mine", "hi", exit=3, says=["models/mine", "does not exist", "check the path"])


@case("model", "hub-id-offline-and-not-local")
def _(env):
    env.expect("caption", "--model", "nobody-here/no-such-model", _image(env), exit=3,
               says=["nobody-here/no-such-model", "local", "offline"])


@case("model", "model-path-is-a-file")
def _(env):
    f = env.tmp / "model.safetensors"
    f.write_bytes(b"\0" * 16)
    env.keep(f)
    env.expect("train", "--model", f, "--data", env.shapes_data, "--output", env.tmp / "run", "--iters", 1,
               exit=3, says=["model.safetensors", "not a model folder", "choose the folder"])


# ---- other files the loaders read ---------------------------------------------------------------

@case("model", "chat-template-does-not-parse-train")
def _(env):
    m = _model(env, "qwen2")
    (m / "chat_template.jinja").write_text("{% for message in messages %}{{ message.content }")
    env.expect("train", "--model", m, "--data", env.instruction_data, "--output", env.tmp / "run", "--iters", 1,
               exit=3, says=["chat_template.jinja", "line 1", "restore"])


@case("model", "chat-template-fails-on-the-prompt")
def _(env):
    m = _model(env)
    (m / "chat_template.jinja").write_text("{% for m in messages %}{{ m.no_such_field.at_all }}{% endfor %}")
    env.expect("caption", "--model", m, "--max-tokens", 2, _image(env), exit=3,
               says=["chat_template.jinja", "chat template failed", "restore"])


@case("model", "generation-config-is-a-list")
def _(env):
    m = _model(env, "qwen2")
    (m / "generation_config.json").write_text("[0]")
    env.expect("export", "--model", m, "--adapter", make_adapter(env, "qwen2"), "--target", "mlx-lm",
               "--output", env.tmp / "bundle", exit=3, says=["generation_config.json", "object", "re-download"])


@case("model", "weight-index-is-a-list")
def _(env):
    m = _model(env)
    (m / "model.safetensors.index.json").write_text("[]")
    env.expect("generate", "--model", m, "hi", exit=3, says=["model.safetensors.index.json", "object", "re-download"])
