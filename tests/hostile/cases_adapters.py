"""Hostile adapters: damaged or mismatched adapter folders given to caption, generate, compare and export."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hostile import case

_BUILT: dict[tuple[str, str], Path] = {}
_ROOT = Path(tempfile.mkdtemp(prefix="hostile-adapters-"))


def make_adapter(env, family: str = "qwen2_vl", name: str = "adapter") -> Path:
    """A private copy of a fresh (untrained, zero lora_b) adapter for the tiny `family` model."""
    from finetune_app.core import adapters
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.models import load_base

    model = env.tiny_model(family)
    key = (family, str(model))
    if key not in _BUILT:
        dest = _ROOT / f"{family}-{len(_BUILT)}"
        base = load_base(model)
        cfg = TrainConfig(model=str(model), data="unused", output=str(dest))
        adapters.save(base.model, adapters.attach(base, cfg), dest, train_config=cfg)
        _BUILT[key] = dest
    return env.copy(_BUILT[key], name)


def _edit_config(adapter: Path, **changes) -> None:
    f = adapter / "adapter_config.json"
    cfg = json.loads(f.read_text())
    for k, v in changes.items():
        target = cfg
        *path, last = k.split("__")
        for p in path:
            target = target[p]
        target[last] = v
    f.write_text(json.dumps(cfg))


def _rewrite_weights(adapter: Path, fn) -> None:
    import mlx.core as mx

    f = adapter / "adapters.safetensors"
    weights = dict(mx.load(str(f)))
    mx.save_safetensors(str(f), fn(weights))


def _image(env) -> Path:
    return next(p for p in sorted((env.shapes_data / "images").iterdir()) if p.is_file())


@case("adapter", "config-is-a-list")
def _(env):
    a = make_adapter(env)
    (a / "adapter_config.json").write_text("[1, 2]")
    env.keep(a)
    env.expect("caption", "--model", env.tiny_model("qwen2_vl"), "--adapter", a, "--max-tokens", 2, _image(env),
               exit=6, says=["adapter_config.json", "object", "restore"])


@case("adapter", "config-not-json")
def _(env):
    a = make_adapter(env, "qwen2")
    (a / "adapter_config.json").write_text('{"fine_tune_type": "lora", ')
    env.expect("generate", "--model", env.tiny_model("qwen2"), "--adapter", a, "hi",
               exit=6, says=["adapter_config.json", "not valid json", "restore"])


@case("adapter", "garbage-safetensors-header")
def _(env):
    a = make_adapter(env)
    f = a / "adapters.safetensors"
    data = bytearray(f.read_bytes())
    data[8:24] = b"this is garbage!"
    f.write_bytes(bytes(data))
    env.keep(a)
    env.expect("export", "--adapter", a, "--model", env.tiny_model("qwen2_vl"), "--target", "mlx-vlm",
               "--output", env.tmp / "bundle", exit=6, says=["adapters.safetensors", "damaged", "restore"])


@case("adapter", "truncated-safetensors")
def _(env):
    a = make_adapter(env)
    f = a / "adapters.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    env.expect("compare", "--model", env.tiny_model("qwen2_vl"), "--adapter", a, "--data", env.shapes_data,
               "--limit", 1, "--max-tokens", 2, exit=6, says=["adapters.safetensors", "truncated", "restore"])


@case("adapter", "empty-safetensors")
def _(env):
    a = make_adapter(env, "qwen2")
    (a / "adapters.safetensors").write_bytes(b"")
    env.expect("generate", "--model", env.tiny_model("qwen2"), "--adapter", a, "hi",
               exit=6, says=["adapters.safetensors", "damaged", "restore"])


@case("adapter", "wrong-shapes-vlm")
def _(env):
    import mlx.core as mx

    a = make_adapter(env)
    _rewrite_weights(a, lambda w: {k: mx.zeros((v.shape[0] + 1, v.shape[1])) for k, v in w.items()})
    env.expect("caption", "--model", env.tiny_model("qwen2_vl"), "--adapter", a, "--max-tokens", 2, _image(env),
               exit=6, says=["adapters.safetensors", "does not fit", "base model the adapter was trained on"])


@case("adapter", "wrong-rank-text")
def _(env):
    import mlx.core as mx

    a = make_adapter(env, "qwen2")
    _rewrite_weights(a, lambda w: {k: mx.zeros((v.shape[0], 3) if k.endswith("lora_a") else (3, v.shape[1]))
                                   for k, v in w.items()})
    env.expect("generate", "--model", env.tiny_model("qwen2"), "--adapter", a, "hi",
               exit=6, says=[str(a), "does not fit", "base model the adapter was trained on"])


@case("adapter", "nan-weights")
def _(env):
    a = make_adapter(env, "qwen2")
    _rewrite_weights(a, lambda w: {k: v + float("nan") for k, v in w.items()})
    env.expect("export", "--adapter", a, "--model", env.tiny_model("qwen2"), "--target", "mlx-lm",
               "--output", env.tmp / "bundle", exit=6, says=["adapters.safetensors", "nan", "earlier checkpoint"])


@case("adapter", "trained-on-another-family")
def _(env):
    a = make_adapter(env, "qwen2_vl")
    env.expect("generate", "--model", env.tiny_model("qwen2"), "--adapter", a, "hi",
               exit=6, says=[str(a), "qwen2_vl", "base model it was trained on"])


@case("adapter", "tensor-for-no-layer")
def _(env):
    import mlx.core as mx

    a = make_adapter(env)
    _rewrite_weights(a, lambda w: {**w, "language_model.no_such_layer.lora_a": mx.zeros((4, 4))})
    env.expect("compare", "--model", env.tiny_model("qwen2_vl"), "--adapter", a, "--data", env.shapes_data,
               "--limit", 1, "--max-tokens", 2, exit=6, says=["adapters.safetensors", "no such parameter", "base model"])


@case("adapter", "absurd-num-layers")
def _(env):
    a = make_adapter(env, "qwen2")
    _edit_config(a, num_layers=10 ** 9)
    env.expect("generate", "--model", env.tiny_model("qwen2"), "--adapter", a, "hi",
               exit=6, says=["adapter_config.json", "num_layers", "restore"])


@case("adapter", "negative-rank")
def _(env):
    a = make_adapter(env)
    _edit_config(a, lora_parameters__rank=-4)
    env.expect("caption", "--model", env.tiny_model("qwen2_vl"), "--adapter", a, "--max-tokens", 2, _image(env),
               exit=6, says=["adapter_config.json", "lora_parameters.rank", "restore"])


@case("adapter", "finetune-app-record-not-an-object")
def _(env):
    a = make_adapter(env)
    _edit_config(a, finetune_app=["not", "an", "object"])
    env.expect("compare", "--adapter", a, "--data", env.shapes_data, "--limit", 1,
               exit=6, says=["adapter_config.json", "finetune_app", "restore"])


@case("adapter", "missing-adapter-folder")
def _(env):
    env.expect("generate", "--model", env.tiny_model("qwen2"), "--adapter", env.tmp / "runs" / "nope", "hi",
               exit=6, says=["nope", "does not exist", "run folder"])


@case("adapter", "wrong-shapes-export-adapter-only")
def _(env):
    import mlx.core as mx

    a = make_adapter(env)
    _rewrite_weights(a, lambda w: {k: mx.zeros((v.shape[0], v.shape[1] + 2)) for k, v in w.items()})
    env.keep(a)
    env.expect("export", "--adapter", a, "--model", env.tiny_model("qwen2_vl"), "--target", "adapter",
               "--output", env.tmp / "bundle", exit=6, says=["adapters.safetensors", "does not fit", "base model"])


@case("adapter", "config-is-a-directory")
def _(env):
    a = make_adapter(env, "qwen2")
    (a / "adapter_config.json").unlink()
    (a / "adapter_config.json").mkdir()
    env.expect("generate", "--model", env.tiny_model("qwen2"), "--adapter", a, "hi",
               exit=6, says=["adapter_config.json", "run folder"])
