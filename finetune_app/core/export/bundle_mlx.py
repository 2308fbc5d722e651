"""Write model folders the Python libraries load: mlx-vlm (VLMs) and mlx-lm (text), and the
MLXVLM variant mlx-swift-lm reads (mlx-vlm names plus a complete FastVLM `vision_config`).

Weights and config.json are written by the libraries' own savers (`mlx_vlm.utils.save_weights` /
`save_config` for VLMs, `mlx_lm.utils.save_model` / `save_config` for text): the model's parameter
names in `model.safetensors` or 5 GB shards, with `model.safetensors.index.json`; config.json is
the base's, with `quantization` set or removed. The savers write files in place: callers write into
the export's staging folder, which is published whole (publish.py). Tokenizer, chat template,
processor and generation files are copied from the base folder; nothing executable (`*.py`) and
no PyTorch weights are copied. See shared/reference/bundles.md sections 1 and 3.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten

from finetune_app.core import atomic
from finetune_app.core.families import family_class

WEIGHTS_INDEX = "model.safetensors.index.json"
# Files of a model folder that travel with an export (everything else is left behind).
SUPPORT_PATTERNS = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "*.tiktoken", "vocab.json",
    "vocab.txt", "merges.txt", "added_tokens.json", "special_tokens_map.json", "chat_template.json",
    "chat_template.jinja", "preprocessor_config.json", "processor_config.json",
    "video_preprocessor_config.json", "generation_config.json", "LICENSE", "LICENSE.*", "LICENCE*",
)
# mlx-swift-lm's MLXVLM reads these FastViTHD keys from vision_config (bundles.md section 3).
MLXVLM_FASTVLM_TOP_KEYS = ("eos_token_id", "mm_projector_type", "mm_hidden_size",
                           "tokenizer_model_max_length", "tokenizer_padding_side")


def model_weights(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.parameters()))


def weights_module(weights: dict[str, mx.array]) -> nn.Module:
    """A module holding only `weights`, under their names: for the savers, which take a model."""
    holder = nn.Module()
    for key, value in tree_unflatten(list(weights.items())).items():
        holder[key] = value
    return holder


def save_weights(model: nn.Module, folder: Path, *, kind: str = "vlm", progress=None) -> list[str]:
    """model.safetensors (or model-0000i-of-0000n.safetensors shards) + the index, by mlx-vlm's
    `save_weights` (mlx-lm's `save_model` for text); returns the file names."""
    if progress:
        progress(0.0, "Writing the weights")
    mx.eval(model.parameters())
    if kind == "text":
        from mlx_lm.utils import save_model

        save_model(folder, model)
    else:
        from mlx_vlm.utils import save_weights as library_save_weights

        library_save_weights(folder, model)
    index = json.loads((Path(folder) / WEIGHTS_INDEX).read_text(encoding="utf-8"))
    names = sorted(set(index["weight_map"].values()))
    if progress:
        progress(1.0, f"Wrote {', '.join(names)}")
    return names + [WEIGHTS_INDEX]


def save_config(folder: Path, config: dict, *, kind: str = "vlm") -> None:
    """config.json by the library's `save_config` (keys sorted; mlx-lm adds `quantization_config`)."""
    if kind == "text":
        from mlx_lm.utils import save_config as library_save_config
    else:
        from mlx_vlm.utils import save_config as library_save_config
    library_save_config(copy.deepcopy(config), Path(folder) / "config.json")


def support_files(src: Path) -> list[Path]:
    return [p for p in sorted(Path(src).iterdir())
            if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in SUPPORT_PATTERNS)]


def copy_support_files(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> list[str]:
    copied = []
    for p in support_files(src):
        if p.name in skip:
            continue
        shutil.copyfile(p, dst / p.name)
        copied.append(p.name)
    return copied


def export_config(base_config: dict, quantization: dict | None) -> dict:
    """The base's config.json for the exported weights: quantization set or removed."""
    cfg = copy.deepcopy(base_config)
    for key in ("quantization", "quantization_config", "_name_or_path", "model_file"):
        cfg.pop(key, None)
    if isinstance(cfg.get("text_config"), dict):
        cfg["text_config"].pop("quantization_config", None)
        cfg["text_config"].pop("quantization", None)
    if quantization:
        cfg["quantization"] = dict(quantization)
        cfg["quantization_config"] = dict(quantization)
    return cfg


def write_mlx_bundle(base, model: nn.Module, folder: Path, *, quantization: dict | None,
                     progress=None) -> list[str]:
    """The mlx-vlm / mlx-lm folder: weights, config.json, tokenizer and processor files."""
    names = save_weights(model, folder, kind=base.kind, progress=progress)
    save_config(folder, export_config(base.config, quantization), kind=base.kind)
    names += ["config.json"] + copy_support_files(base.path, folder)
    return names


# ---- mlx-swift-lm (MLXVLM) ----------------------------------------------------------------------

def fastvlm_full_vision_config(model: nn.Module, base_config: dict) -> dict:
    """Every FastViTHD key MLXVLM decodes, from the loaded tower's (patched) config."""
    from finetune_app.core import patches

    vision = dict(base_config.get("vision_config") or {})
    vision.update(patches.fastvlm_vision_config.fastvlm_vision_dict(model.config.vision_config))
    vision.setdefault("model_type", base_config.get("model_type") or family_class(base_config.get("model_type")).swift_model_type)
    return vision


def mlxvlm_config(base, model: nn.Module, quantization: dict | None) -> dict:
    """config.json for mlx-swift-lm: the mlx-vlm config plus what MLXVLM's FastVLM requires."""
    cfg = export_config(base.config, quantization)
    if quantization:  # mlx-swift decodes only group_size/bits here; no HF-style duplicate
        cfg.pop("quantization_config", None)
    family = family_class(base.model_type)
    if not family.apple_app:
        return cfg
    mc = model.config
    if cfg.get("model_type") not in family.model_types:
        cfg["model_type"] = family.swift_model_type
    cfg["vision_config"] = fastvlm_full_vision_config(model, base.config)
    eos = cfg.get("eos_token_id", getattr(mc, "eos_token_id", None))
    if isinstance(eos, list):  # MLXVLM decodes a single Int
        eos = eos[0] if eos else None
    if eos is None:
        eos = base.tokenizer.eos_token_id
    cfg["eos_token_id"] = int(eos)
    cfg.setdefault("mm_projector_type", getattr(mc, "mm_projector_type", "mlp2x_gelu"))
    cfg.setdefault("mm_hidden_size", int(mc.mm_hidden_size))
    cfg.setdefault("tokenizer_model_max_length", int(getattr(mc, "tokenizer_model_max_length", 8192) or 8192))
    cfg.setdefault("tokenizer_padding_side", getattr(mc, "tokenizer_padding_side", "right") or "right")
    cfg.setdefault("image_token_index", int(getattr(mc, "image_token_index", -200)))
    return cfg


def write_mlxvlm_bundle(base, model: nn.Module, folder: Path, *, quantization: dict | None,
                        progress=None) -> list[str]:
    names = save_weights(model, folder, progress=progress)
    save_config(folder, mlxvlm_config(base, model, quantization))
    names += ["config.json"] + copy_support_files(base.path, folder)
    processor = family_class(base.model_type).swift_processor
    if processor:  # MLXVLM picks its processor by preprocessor_config.json's processor_class
        for name in ("preprocessor_config.json", "processor_config.json"):
            path = folder / name
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            data["processor_class"] = processor
            atomic.write_json(path, data)
            if name not in names:
                names.append(name)
    return names
