"""Apple's FastVLM app bundle (mlx-swift language model + CoreML vision encoder).

What the app loads (shared/reference/bundles.md section 2; apple/ml-fastvlm app/FastVLM/FastVLM.swift):

* weights, strictly: `language_model.model.*` and `language_model.lm_head.weight` (only when
  embeddings are untied), the projector renamed `mm_projector.N.*` ->
  `multi_modal_projector.linear_N.*`, and no `vision_tower.*` at all (the tower is CoreML);
  quantized layers carry `<path>.scales` / `<path>.biases`;
* config.json with the keys the app decodes (APP_CONFIG_KEYS) and `image_token_index` a real
  vocabulary id: `<image>` is added to the tokenizer as one token, id = largest added id + 1 (as
  Apple's exporter does). When that id falls outside the embedding matrix (a tokenizer without
  spare rows), the embedding (and an untied lm_head) gain zero rows up to it, and vocab_size
  follows; the row's input embedding is never used (the app overwrites image positions);
* preprocessor_config.json / processor_config.json exactly as the app's processor reads them;
* `fastvithd.mlpackage`, built by coreml_encoder from the model's (possibly fine-tuned) tower, or
  a package the user chose after `check_mlpackage`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
from mlx import nn

from finetune_app.core import atomic
from finetune_app.core.errors import ModelError
from finetune_app.core.families.fastvlm import FastVLM
from finetune_app.core.export import bundle_mlx

IMAGE_TOKEN = "<image>"
PACKAGE_NAME = "fastvithd.mlpackage"
PATCH_SIZE = 64
# config.json keys FastVLM.swift decodes (FastVLMConfiguration: text, vision and base parts).
APP_CONFIG_KEYS = ("model_type", "mm_hidden_size", "hidden_size", "num_hidden_layers",
                   "intermediate_size", "num_attention_heads", "rms_norm_eps", "vocab_size",
                   "num_key_value_heads", "max_position_embeddings", "rope_theta",
                   "rope_traditional", "rope_scaling", "tie_word_embeddings", "image_token_index")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
OPTIONAL_COPIES = ("special_tokens_map.json", "generation_config.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "LICENSE")
_PROJECTOR_RE = re.compile(r"^mm_projector\.(\d+)\.(.+)$")


def preprocessor_config(image_size: int) -> dict:
    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.0, 0.0, 0.0],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [1.0, 1.0, 1.0],
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def processor_config() -> dict:
    return {"image_token": IMAGE_TOKEN, "num_additional_image_tokens": 0,
            "processor_class": "LlavaProcessor", "patch_size": PATCH_SIZE}


def image_size_of(base) -> int:
    vc = base.config.get("vision_config") or {}
    return int(vc.get("image_size") or getattr(base.model.config.vision_config, "image_size", 1024) or 1024)


def check_supported(base) -> None:
    if not base.is_fastvlm:
        raise ModelError(f"The mlx-swift (FastVLM app) target is for FastVLM models; this is {base.family}.",
                         "Choose mlx-vlm or mlx-swift-lm for this model.")
    ptype = base.config.get("mm_projector_type", "mlp2x_gelu")
    if ptype != "mlp2x_gelu":
        raise ModelError(f"Apple's FastVLM app expects a two-layer GELU projector (mlp2x_gelu); this model's is {ptype}.",
                         "Export to mlx-swift-lm or mlx-vlm instead.")
    cfg = base.config
    head_dim = cfg.get("head_dim")
    if head_dim and int(head_dim) * int(cfg["num_attention_heads"]) != int(cfg["hidden_size"]):
        raise ModelError("The app computes the attention head size as hidden_size / num_attention_heads, which this model does not follow.",
                         "Export to mlx-swift-lm or mlx-vlm instead.")


# ---- image token -------------------------------------------------------------------------------

def image_token_id(tokenizer_json: dict) -> tuple[int, bool]:
    """(id, already_present): `<image>`'s id, or the largest added-token id + 1 for a new one."""
    added = tokenizer_json.get("added_tokens") or []
    for t in added:
        if t.get("content") == IMAGE_TOKEN:
            return int(t["id"]), True
    vocab = (tokenizer_json.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict) and IMAGE_TOKEN in vocab:
        return int(vocab[IMAGE_TOKEN]), True
    ids = [int(t["id"]) for t in added]
    if not ids:
        ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1]
    return max(ids) + 1, False


def write_tokenizer(src: Path, dst: Path, token_id: int, present: bool) -> list[str]:
    """tokenizer.json / tokenizer_config.json (and added_tokens.json if the base has one) with
    `<image>` as a special added token of id `token_id`."""
    entry = {"id": token_id, "content": IMAGE_TOKEN, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    if not present:
        tok.setdefault("added_tokens", []).append(entry)
    atomic.write_text(dst / "tokenizer.json", json.dumps(tok, ensure_ascii=False, indent=2) + "\n")
    cfg_path = src / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    decoder = cfg.setdefault("added_tokens_decoder", {})
    decoder[str(token_id)] = {k: v for k, v in entry.items() if k != "id"}
    cfg.pop("name_or_path", None)
    atomic.write_json(dst / "tokenizer_config.json", cfg)
    names = list(TOKENIZER_FILES)
    if (src / "added_tokens.json").is_file():
        added = json.loads((src / "added_tokens.json").read_text(encoding="utf-8"))
        added[IMAGE_TOKEN] = token_id
        atomic.write_json(dst / "added_tokens.json", added)
        names.append("added_tokens.json")
    return names


def pad_vocab(model: nn.Module, vocab_size: int) -> int:
    """Grow the (floating-point) embedding and untied lm_head with zero rows to `vocab_size`."""
    lm = model.language_model
    emb = lm.model.embed_tokens
    rows, dim = emb.weight.shape
    if vocab_size <= rows:
        return rows
    extra = vocab_size - rows
    emb.weight = mx.concatenate([emb.weight, mx.zeros((extra, dim), dtype=emb.weight.dtype)], axis=0)
    head = getattr(lm, "lm_head", None)
    if head is not None and "lm_head" in lm:
        head.weight = mx.concatenate([head.weight, mx.zeros((extra, head.weight.shape[1]), dtype=head.weight.dtype)], axis=0)
    return vocab_size


# ---- weights and config --------------------------------------------------------------------------

def app_weight_name(name: str) -> str | None:
    """The app's name for an mlx-vlm FastVLM parameter (None: not shipped)."""
    if name.startswith("vision_tower."):
        return None
    m = _PROJECTOR_RE.match(name)
    if m:
        return f"multi_modal_projector.linear_{m.group(1)}.{m.group(2)}"
    if name.startswith("language_model."):
        return name
    raise ModelError(f"Unexpected parameter '{name}' in the FastVLM model.",
                     "This FastVLM variant is not supported by the app exporter; export to mlx-vlm instead.")


def app_weights(model: nn.Module) -> dict[str, mx.array]:
    out = {}
    for name, value in bundle_mlx.model_weights(model).items():
        new = app_weight_name(name)
        if new is not None:
            out[new] = value
    return out


def app_config(base, *, vocab_size: int, image_token_index: int, quantization: dict | None) -> tuple[dict, list[str]]:
    """config.json with exactly the keys the app decodes (+ quantization); and warnings."""
    src = base.config
    mc = base.model.config
    tc = getattr(mc, "text_config", None)

    def pick(key, default):
        if key in src and src[key] is not None:
            return src[key]
        return getattr(tc, key, default) if tc is not None else default

    warnings = []
    rope_scaling = src.get("rope_scaling")
    if rope_scaling is not None and not (isinstance(rope_scaling, dict) and "mrope_section" in rope_scaling):
        warnings.append(f"rope_scaling {rope_scaling} is not supported by the FastVLM app (it reads only "
                        "mrope_section and otherwise stops); it was left out (plain RoPE, as Qwen2 uses).")
        rope_scaling = None
    cfg = {
        "model_type": FastVLM.swift_model_type,
        "mm_hidden_size": int(src.get("mm_hidden_size") or mc.mm_hidden_size),
        "hidden_size": int(pick("hidden_size", 896)),
        "num_hidden_layers": int(pick("num_hidden_layers", 24)),
        "intermediate_size": int(pick("intermediate_size", 4864)),
        "num_attention_heads": int(pick("num_attention_heads", 14)),
        "rms_norm_eps": float(pick("rms_norm_eps", 1e-6)),
        "vocab_size": int(vocab_size),
        "num_key_value_heads": int(pick("num_key_value_heads", 2)),
        "max_position_embeddings": int(pick("max_position_embeddings", 32768)),
        "rope_theta": float(pick("rope_theta", 1_000_000)),
        "rope_traditional": bool(pick("rope_traditional", False)),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": bool(pick("tie_word_embeddings", True)),
        "image_token_index": int(image_token_index),
    }
    if quantization:
        cfg["quantization"] = {"group_size": int(quantization["group_size"]), "bits": int(quantization["bits"])}
    return cfg, warnings


def write_app_bundle(base, model: nn.Module, folder: Path, *, quantization: dict | None,
                     token_id: int, token_present: bool, vocab_size: int, progress=None) -> tuple[list[str], list[str]]:
    """Weights, config, tokenizer and processor files (the mlpackage is added by the caller)."""
    names = bundle_mlx.save_weights(bundle_mlx.weights_module(app_weights(model)), folder, progress=progress)
    cfg, warnings = app_config(base, vocab_size=vocab_size, image_token_index=token_id, quantization=quantization)
    bundle_mlx.save_config(folder, cfg)
    names.append("config.json")
    names += write_tokenizer(base.path, folder, token_id, token_present)
    size = image_size_of(base)
    atomic.write_json(folder / "preprocessor_config.json", preprocessor_config(size))
    atomic.write_json(folder / "processor_config.json", processor_config())
    names += ["preprocessor_config.json", "processor_config.json"]
    for name in OPTIONAL_COPIES:
        if (base.path / name).is_file():
            shutil.copyfile(base.path / name, folder / name)
            names.append(name)
    return names, warnings


def copy_mlpackage(src: Path, folder: Path) -> str:
    """A user-chosen (already checked) package, under the name the app's Xcode project expects."""
    shutil.copytree(src, folder / PACKAGE_NAME, symlinks=False)
    return PACKAGE_NAME
