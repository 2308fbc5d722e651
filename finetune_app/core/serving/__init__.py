"""Where the trained model will run decides how a sample becomes tokens and pixels.

A *serve target* is named like the export target that produces it (core/export TARGETS). Each
target module holds one `Layout`: how a conversation is rendered to text, how that text becomes
ids, and how images become pixels, exactly as that runtime does it at inference. Training on that
layout is what makes the adapter behave the same in the user's runtime as in our samples.

    mlx-vlm    mlx_vlm.prompt_utils.apply_chat_template + the model's own processor (prepare_inputs)
    mlx-lm     the tokenizer's chat template (what mlx_lm.generate feeds the model)
    mlx-swift  Apple's FastVLM app (apple/ml-fastvlm app/FastVLM/FastVLM.swift FastVLMProcessor)
    mlx-swift-lm  MLXVLM's Qwen-VL processor / MLXLLM's chat template (ml-explore/mlx-swift-examples)
"""

from __future__ import annotations

import importlib

from finetune_app.core.errors import ConfigError

AUTO = "auto"
LAYOUT_FILE = "finetune_app.json"  # in fused bundles: the prompt layout (serve target) trained with
# serve target -> module holding its Layout (imported on demand: MLX stays out of config imports)
TARGETS = {"mlx-vlm": "mlx_vlm", "mlx-lm": "mlx_lm", "mlx-swift": "fastvlm_app", "mlx-swift-lm": "mlx_swift_lm"}
SWIFT_LM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # VLMs whose MLXVLM processor mlx_swift_lm transcribes
SERVE_TARGETS = (AUTO, *TARGETS)
DESCRIPTIONS = {
    AUTO: "mlx-vlm for vision-language models, mlx-lm for text models",
    "mlx-vlm": "mlx-vlm (Python): its chat-template layout and the model's own image processor",
    "mlx-lm": "mlx-lm (Python): the tokenizer's chat template",
    "mlx-swift": "Apple's FastVLM app: its own prompt (image tokens after the text) and image resizing",
    "mlx-swift-lm": "mlx-swift-lm (MLXVLM / MLXLLM): the chat template with each image after its text, "
                    "its own image resizing (Qwen-VL family and text models)",
}


def swift_lm_covers(model_type: str, kind: str) -> bool:
    """Whether the mlx-swift-lm layout is modelled for this model (text models, the Qwen-VL family)."""
    return kind == "text" or model_type in SWIFT_LM_FAMILIES


def resolve(target: str | None, base) -> str:
    """The concrete target for this model ("auto" -> mlx-vlm / mlx-lm), refused when it cannot
    run the model."""
    target = target or AUTO
    if target == AUTO:
        return "mlx-vlm" if base.kind == "vlm" else "mlx-lm"
    if target not in TARGETS:
        raise ConfigError(f"Unknown serve target '{target}'.", f"Choose one of: {', '.join(SERVE_TARGETS)}.",
                          field="serve_target")
    if target == "mlx-vlm" and base.kind != "vlm":
        raise ConfigError("serve target mlx-vlm is for vision-language models; this is a text model.",
                          "Use --serve-target mlx-lm (or auto).", field="serve_target")
    if target == "mlx-lm" and base.kind != "text":
        raise ConfigError("serve target mlx-lm is for text models; this is a vision-language model.",
                          "Use --serve-target mlx-vlm (or auto).", field="serve_target")
    if target == "mlx-swift" and not getattr(base, "is_fastvlm", False):
        raise ConfigError("serve target mlx-swift is Apple's FastVLM app, which runs FastVLM models only.",
                          "Use --serve-target auto for this model.", field="serve_target")
    if target == "mlx-swift-lm" and not swift_lm_covers(getattr(base, "model_type", ""), base.kind):
        raise ConfigError(f"serve target mlx-swift-lm covers text models and {', '.join(SWIFT_LM_FAMILIES)}; its "
                          f"processor for {getattr(base, 'model_type', 'this model')} is not transcribed.",
                          "Use --serve-target auto (mlx-vlm's layout) for this model.", field="serve_target")
    return target


def for_model(target: str | None, base) -> str:
    """The concrete target a setting means for this model. None or "auto": the layout the base's
    adapter or fused bundle records (`BaseModel.serve_target`: training one of our bundles goes on
    in the layout it runs in), else the library's (`resolve`)."""
    if (target or AUTO) == AUTO:
        target = getattr(base, "serve_target", None) or AUTO
    return resolve(target, base)


def layout(target: str | None, base):
    """The Layout object of `target` (see `for_model`) for this loaded base model."""
    name = for_model(target, base)
    from finetune_app.core.families import family_class

    # a family may serve a target its own way (PaliGemma: prompt + answer as the processor's suffix)
    own = family_class(getattr(base, "model_type", "")).layouts.get(name)
    module = importlib.import_module(f"{__name__}.{own or TARGETS[name]}")
    return module.Layout(base)


def trained_layout(acfg: dict | None) -> str | None:
    """The serve target (prompt layout) an adapter config records, if any."""
    return ((acfg or {}).get("finetune_app") or {}).get("serve_target")


def bundle_layout(folder) -> str | None:
    """The serve target a fused bundle (LAYOUT_FILE) records, if any: our own generation uses it,
    so the bundle answers in the app as it was trained."""
    import json
    from pathlib import Path

    from finetune_app.core.errors import ModelError

    path = Path(folder) / LAYOUT_FILE
    if not path.is_file():
        return None
    try:
        target = json.loads(path.read_text(encoding="utf-8")).get("serve_target")
    except (OSError, ValueError, AttributeError):
        raise ModelError(f"{LAYOUT_FILE} is damaged (not a JSON object).",
                         f"Export the model again, or delete {LAYOUT_FILE} to use the default layout.",
                         file=path) from None
    if target is not None and target not in TARGETS:
        raise ModelError(f"{LAYOUT_FILE} names an unknown prompt layout '{target}'.",
                         f"Use one of {', '.join(TARGETS)}, or delete {LAYOUT_FILE} to use the default layout.",
                         file=path, field="serve_target")
    return target


def layout_name_for_export(export_target: str) -> str | None:
    """The serving layout an export target's runtime uses (None: the adapter, runs anywhere)."""
    return export_target if export_target in TARGETS else None


def mismatch(trained: str | None, export_target: str, base_kind: str, model_type: str = "") -> str | None:
    """A plain warning when the export target's runtime lays prompts out differently from training."""
    served = layout_name_for_export(export_target)
    if served is None or trained is None:
        return None
    if trained == AUTO:
        trained = "mlx-vlm" if base_kind == "vlm" else "mlx-lm"
    if served == trained or base_kind == "text" and {served, trained} <= {"mlx-lm", "mlx-swift-lm"}:
        return None  # MLXLLM applies the same chat template as mlx-lm (serving/mlx_swift_lm.py)
    if served == "mlx-swift-lm" and not swift_lm_covers(model_type, base_kind):
        return (f"this model was trained with the {trained} prompt layout; mlx-swift-lm (MLXVLM / MLXLLM) builds "
                f"prompts with its own processors, and its {model_type or 'model'} processor is not modelled. "
                "Compare a few answers there with the training samples.")
    return (f"this model was trained with the {trained} prompt layout, but {export_target} lays prompts "
            f"out its own way ({DESCRIPTIONS.get(served, served)}); answers there may be worse than in "
            f"training. Retrain with --serve-target {served} to match.")
