"""Attach, save and load adapters in the libraries' own file layout.

VLM adapters use mlx-vlm's layout (`adapters.safetensors` + `adapter_config.json` with
`lora_parameters.keys`), text adapters mlx-lm's (`num_layers` + `lora_parameters`), so
`mlx_vlm.load(base, adapter_path=DIR)` and `mlx_lm.load(base, adapter_path=DIR)` load them as is.
The LoRA/DoRA layers themselves are the libraries' own classes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from finetune_app.core import atomic, run_folder
from finetune_app.core.config import TrainConfig
from finetune_app.core.errors import AdapterError, ConfigError
from finetune_app.core.models import BaseModel

ADAPTER_FILE = run_folder.ADAPTER_FILE  # the libraries' names, kept with every run-folder name
CONFIG_FILE = run_folder.ADAPTER_CONFIG_FILE
PROJECTOR_NAMES = ("mm_projector", "multi_modal_projector", "merger", "aligner", "connector")
VISION_NAMES = ("vision_tower", "vision_model", "visual")


# the libraries' LoRA/DoRA layers, by the module that defines each
LORA_CLASSES = (("mlx_vlm.trainer.peft.lora_layers", "LoRALinear"), ("mlx_vlm.trainer.peft.dora_layers", "DoRALinear"),
                ("mlx_lm.tuner.lora", "LoRALinear"), ("mlx_lm.tuner.dora", "DoRALinear"))


def _lora_classes() -> tuple:
    """The adapter layer classes whose modules are imported: a layer cannot exist before its class,
    so a text run never imports mlx-vlm (seconds) just to be told it has none of its layers (#16)."""
    import sys

    return tuple(getattr(sys.modules[m], name) for m, name in LORA_CLASSES if m in sys.modules)


def is_adapter_layer(module) -> bool:
    return isinstance(module, _lora_classes())


def _quantize(module: nn.Module, bits: int, group_size: int) -> None:
    """QLoRA: every layer the library can quantize whose input width divides by the group size."""
    import contextlib
    import io

    from mlx_vlm.quant_utils import quantize_model

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the bits per weight on stdout
        quantize_model(module, {}, group_size, bits)


def _quantization_map(model: nn.Module) -> dict:
    return {name: {"group_size": m.group_size, "bits": m.bits, "mode": getattr(m, "mode", "affine")}
            for name, m in model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}


def _vision_linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and name.split(".")[0] in VISION_NAMES
            and not any(p in name.split(".") for p in PROJECTOR_NAMES)]


def _projector_modules(model: nn.Module) -> list[nn.Module]:
    """Modules of the vision-to-language projector (FastVLM's mm_projector is a plain list of
    layers, so match every module under a projector name, not only the named one)."""
    return [m for name, m in model.named_modules() if any(p in name.split(".") for p in PROJECTOR_NAMES)]


def set_train_modes(model: nn.Module, fine_tune_type: str) -> None:
    """Frozen modules stay in eval mode (FastVLM's tower has BatchNorm); adapters train.

    BatchNorm keeps its running statistics even when the vision tower is adapted: with the small
    batches of a fine-tune, batch statistics are noise (mlx-vlm's `model.train()` breaks here)."""
    model.train(False)
    if fine_tune_type == "full":
        (getattr(model, "language_model", None) or model).train(True)
    for _, m in model.named_modules():
        if is_adapter_layer(m):
            m.train(True)
        elif isinstance(m, nn.BatchNorm):
            m.train(False)


def attach(base: BaseModel, cfg: TrainConfig) -> dict:
    """Quantize (QLoRA) and attach LoRA/DoRA layers, or unfreeze for a full fine-tune.

    Returns the adapter_config dict to be saved beside the weights."""
    model = base.model
    already_quantized = bool(_quantization_map(model))
    if cfg.quantize_bits and cfg.fine_tune_type == "full":
        raise ConfigError("A full fine-tune needs full-precision weights.", "Use LoRA for a quantized base, or leave quantization empty.", field="quantize_bits")
    if cfg.fine_tune_type == "full" and already_quantized:
        from mlx_vlm.quant_utils import dequantize_model

        dequantize_model(model)
    elif cfg.quantize_bits and not already_quantized:
        if base.kind == "vlm":
            lm = model.language_model
            _quantize(lm, cfg.quantize_bits, cfg.quantize_group_size)
            if cfg.quantize_vision:
                for name in VISION_NAMES:
                    if getattr(model, name, None) is not None:
                        _quantize(getattr(model, name), cfg.quantize_bits, cfg.quantize_group_size)
        else:
            _quantize(model, cfg.quantize_bits, cfg.quantize_group_size)
    base_quantization = _quantization_map(model)

    if base.kind == "vlm":
        config = _attach_vlm(base, cfg)
    else:
        config = _attach_text(base, cfg)
    from finetune_app.core.training.lora_dtype import in_model_dtype

    in_model_dtype(model)  # the libraries' LoRA/DoRA layers, the branch in the model's dtype (#16 textmem2, lmstep)
    if base_quantization and cfg.fine_tune_type != "full":
        config["base_quantization"] = base_quantization
    if cfg.train_projector:
        for m in _projector_modules(model):
            m.unfreeze()
    if cfg.train_vision and cfg.fine_tune_type == "full":
        for name in VISION_NAMES:
            if getattr(model, name, None) is not None:
                getattr(model, name).unfreeze()
    _freeze_norm_stats(model)
    from finetune_app.core import serving

    # the prompt layout trained with (core/serving): export warns when its target's layout differs
    config["finetune_app"] = {"base_model": base.source or str(base.path), "model_type": base.model_type,
                              "train_vision": cfg.train_vision, "train_projector": cfg.train_projector,
                              "serve_target": serving.for_model(cfg.serve_target, base)}
    set_train_modes(model, cfg.fine_tune_type)
    if not tree_flatten(model.trainable_parameters()):
        raise ConfigError("Nothing would be trained with these settings.", "Check the LoRA target layer names.", field="lora_targets")
    return config


def _freeze_norm_stats(model: nn.Module) -> None:
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm):
            m.freeze(keys=["running_mean", "running_var"], strict=False)


def _attach_vlm(base: BaseModel, cfg: TrainConfig) -> dict:
    from mlx_vlm.trainer.peft import find_all_linear_names, get_peft_model

    model = base.model
    if cfg.fine_tune_type == "full":
        model.freeze()
        model.language_model.unfreeze()
        return {"fine_tune_type": "full"}
    targets = cfg.lora_targets
    if cfg.train_vision:  # the language model's targets (suffixes, as mlx-vlm finds them) + the tower's Linears
        targets = list(targets or find_all_linear_names(getattr(model, "language_model", model)))
        targets += _vision_linear_names(model)
    try:
        get_peft_model(model, targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       use_dora=cfg.fine_tune_type == "dora", verbose=False)
    except ValueError as exc:  # raised while resolving the names, before the model changes
        raise ConfigError(f"LoRA targets {cfg.lora_targets} match no layer of this model.",
                          f"Use layer names such as q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. ({str(exc)[:300]})",
                          field="lora_targets") from None
    recorded = model.config  # get_peft_model records the adapter_config on the model's config
    return dict(recorded["lora"] if isinstance(recorded, dict) else recorded.lora)


def _attach_text(base: BaseModel, cfg: TrainConfig) -> dict:
    from finetune_app.core.patches.mlx_lm_tuner_imports import import_module

    linear_to_lora_layers = import_module("mlx_lm.tuner.utils").linear_to_lora_layers  # (no wandb import: #16)
    model = base.model
    num_layers = len(model.layers)
    if cfg.fine_tune_type == "full":
        model.unfreeze()
        return {"fine_tune_type": "full", "num_layers": num_layers}
    model.freeze()
    params = {"rank": cfg.lora_rank, "scale": cfg.lora_scale, "dropout": cfg.lora_dropout}
    if cfg.lora_targets:
        layer_names = [n for n, m in model.layers[0].named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
        keys = [n for n in layer_names if n in cfg.lora_targets or n.split(".")[-1] in cfg.lora_targets]
        if not keys:
            raise ConfigError(f"LoRA targets {cfg.lora_targets} match no layer of this model.",
                              f"Available names: {', '.join(layer_names)}.", field="lora_targets")
        params["keys"] = keys
    linear_to_lora_layers(model, num_layers, params, use_dora=cfg.fine_tune_type == "dora")
    return {"fine_tune_type": cfg.fine_tune_type, "num_layers": num_layers, "lora_parameters": params}


def trainable_weights(model: nn.Module, fine_tune_type: str) -> dict[str, mx.array]:
    """What goes into adapters.safetensors: trainable parameters (every weight for a full run,
    since the libraries load full checkpoints strictly)."""
    tree = model.parameters() if fine_tune_type == "full" else model.trainable_parameters()
    return dict(tree_flatten(tree))


def save(model: nn.Module, config: dict, folder: str | Path, *, train_config: TrainConfig | None = None,
         direct: bool = False, same_as: Path | None = None) -> Path:
    """Write adapters.safetensors + adapter_config.json (+ train_config.toml) atomically.
    `direct`: the weights are evaluated already; write them without MLX's scheduler (tensor_files).
    `same_as`: a folder whose adapters.safetensors holds these very weights (the checkpoint just
    written): hard-linked instead of written again where the file system allows (#16: the run's
    end writes the adapter once; checkpoints are never changed in place, and removing one leaves
    the link's file)."""
    from finetune_app.core import tensor_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = trainable_weights(model, config.get("fine_tune_type", "lora"))
    with atomic.temp_path(folder / ADAPTER_FILE) as tmp:
        if not (same_as is not None and _linked(Path(same_as) / ADAPTER_FILE, tmp)):
            tensor_files.save(tmp, weights, {"format": "mlx"}, direct=direct)
    atomic.write_json(folder / CONFIG_FILE, config)
    if train_config is not None:
        run_folder.write_config(folder, train_config)
    return folder


def _linked(source: Path, dest: Path) -> bool:
    try:
        dest.unlink(missing_ok=True)
        os.link(source, dest)
        return True
    except OSError:  # no hard links here (another disk, FAT): written instead
        return False


RESTORE_FIX = "Restore the adapter from a checkpoint of its run folder, or train it again."


def read_config(folder: str | Path) -> dict:
    """adapter_config.json as an object whose fields have the types the libraries expect."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise AdapterError(f"Adapter folder '{folder}' does not exist." if not folder.exists() else
                           f"'{folder}' is a file, not an adapter folder.",
                           "Choose a run folder written by Finetune, mlx_vlm.train or mlx_lm lora.", file=folder)
    if not (folder / ADAPTER_FILE).is_file() or not path.is_file():
        raise AdapterError(f"'{folder}' is not an adapter folder: it needs {ADAPTER_FILE} and {CONFIG_FILE}.",
                           "Choose a run folder written by Finetune, mlx_vlm.train or mlx_lm lora.", file=folder)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{CONFIG_FILE} is not valid JSON ({exc}).", RESTORE_FIX, file=path) from None
    except OSError as exc:
        raise AdapterError(f"{CONFIG_FILE} cannot be read ({exc.strerror or exc}).", RESTORE_FIX, file=path) from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} must hold a JSON object.", RESTORE_FIX, file=path)
    _check_config_fields(config, path)
    return config


def _check_config_fields(config: dict, path: Path) -> None:
    def bad(field: str, want: str):
        raise AdapterError(f"{CONFIG_FILE} has an invalid '{field}' ({json.dumps(config_get(field))[:80]}): it must be {want}.",
                           RESTORE_FIX, file=path, field=field)

    def config_get(field: str):
        obj = config
        for part in field.split("."):
            obj = obj.get(part) if isinstance(obj, dict) else None
        return obj

    def count(v, limit: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= limit

    for name in ("finetune_app", "lora_parameters", "base_quantization"):
        if name in config and not isinstance(config[name], dict):
            bad(name, "a JSON object")
    ftt = config.get("fine_tune_type", "lora")
    if ftt not in ("lora", "dora", "full"):
        bad("fine_tune_type", "lora, dora or full")
    if "num_layers" in config and config["num_layers"] != -1 and not count(config["num_layers"], 4096):
        bad("num_layers", "-1 (all layers) or a whole number from 1 to 4096")
    lp = config.get("lora_parameters") or {}
    for key in ("rank", "lora_rank"):
        for where, obj in (("", config), ("lora_parameters.", lp)):
            if key in obj and not count(obj[key], 1 << 14):
                bad(where + key, "a whole number from 1 to 16384")
    for key in ("scale", "alpha", "dropout"):
        for where, obj in (("", config), ("lora_parameters.", lp)):
            v = obj.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) > 1e6):
                bad(where + key, "a finite number")
    keys = lp.get("keys", config.get("keys"))
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
        bad("lora_parameters.keys" if "keys" in lp else "keys", "a list of layer names")


def check_weights_file(path: Path) -> dict:
    """adapters.safetensors (or a checkpoint's copy) with a sound header and finite values."""
    from finetune_app.core import tensor_files

    try:
        tensor_files.read_header(path)
        weights = mx.load(str(path))
    except (ValueError, RuntimeError, OSError) as exc:
        raise AdapterError(f"{path.name} is damaged: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}.",
                           RESTORE_FIX, file=path) from None
    bad = [k for k, v in weights.items() if mx.issubdtype(v.dtype, mx.floating) and not bool(mx.all(mx.isfinite(v)))]
    if bad:
        raise AdapterError(f"{path.name} holds NaN or infinite values ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}).",
                           "The training that wrote it diverged; use an earlier checkpoint of the run, or train again with "
                           "a lower learning rate.", file=path)
    return weights


def load_into(base: BaseModel, folder: str | Path) -> dict:
    """Apply a saved adapter to a freshly loaded base with the libraries' own loaders.

    The files are checked first (config fields, safetensors header, finite values) and the loaded
    tensors' shapes after, so a damaged or mismatched adapter is an AdapterError, never a crash in
    the middle of generation."""
    folder = Path(folder)
    config = read_config(folder)
    shapes = {k: tuple(v.shape) for k, v in check_weights_file(folder / ADAPTER_FILE).items()}  # no second copy kept
    recorded = (config.get("finetune_app") or {}).get("model_type")
    if recorded and recorded != base.model_type:
        raise AdapterError(f"This adapter was trained on a {recorded} model, but the base model is {base.model_type}.",
                           f"Load it with the base model it was trained on ({(config.get('finetune_app') or {}).get('base_model', 'see adapter_config.json')}).", file=folder)
    before = {k: v.shape for k, v in tree_flatten(base.model.parameters())}
    try:
        if base.kind == "vlm":
            from mlx_vlm.trainer.peft import apply_lora_layers

            apply_lora_layers(base.model, str(folder))
        else:
            from finetune_app.core.patches.mlx_lm_tuner_imports import import_module

            import_module("mlx_lm.tuner.utils").load_adapters(base.model, str(folder))
        _check_loaded(base.model, folder, config, shapes, before)
    except AdapterError:
        raise
    except Exception as exc:  # the libraries' own errors (ValueError, RuntimeError from MLX, ...)
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise AdapterError(f"The adapter in '{folder}' does not fit this base model ({text}).",
                           "Use the base model the adapter was trained on (see adapter_config.json).", file=folder) from None
    base.model.eval()
    from finetune_app.core.serving import trained_layout

    base.serve_target = trained_layout(config)  # our generation renders prompts as it was trained
    return config


def _linear_dims(linear) -> tuple[int, int] | None:
    """(input, output) features of a (possibly quantized) linear layer."""
    w = getattr(linear, "weight", None)
    if w is None or w.ndim != 2:
        return None
    if isinstance(linear, nn.QuantizedLinear):
        return w.shape[1] * 32 // linear.bits, w.shape[0]
    return (w.shape[1], w.shape[0]) if isinstance(linear, nn.Linear) else None


def _check_loaded(model: nn.Module, folder: Path, config: dict, shapes: dict, before: dict) -> None:
    """The libraries load adapter weights non-strictly (mlx-vlm) and take a tensor's shape as it
    comes; refuse tensors that went nowhere or do not fit the layer they landed in."""
    params = dict(tree_flatten(model.parameters()))
    bad = [f"{k} {v} (no such parameter)" for k, v in shapes.items() if k not in params]
    for name, m in model.named_modules():
        if not is_adapter_layer(m) or "lora_a" not in m or "lora_b" not in m:
            continue
        dims = _linear_dims(getattr(m, "linear", None))
        a, b = m.lora_a.shape, m.lora_b.shape
        ok = len(a) == 2 and len(b) == 2 and a[1] == b[0]
        if ok and dims is not None:
            ok = a[0] == dims[0] and b[1] == dims[1] and ("m" not in m or tuple(m.m.shape) == (dims[1],))
        if not ok:
            want = f" vs layer {dims[0]}→{dims[1]}" if dims else ""
            bad.append(f"{name}.lora_a {tuple(a)} / lora_b {tuple(b)}{want}")
    if not config.get("base_quantization"):
        bad += [f"{k} {v} vs model {tuple(before[k])}" for k, v in shapes.items()
                if k in before and tuple(before[k]) != v]
    if bad:
        raise AdapterError(f"The adapter in '{folder}' does not fit this base model: {'; '.join(bad[:3])}{' …' if len(bad) > 3 else ''}.",
                           "Use the base model the adapter was trained on (see adapter_config.json), or train the adapter again.",
                           file=folder / ADAPTER_FILE)
