"""Model families: `family_for(base)` is how the engine learns what a model needs.

Add a family: a module here with a `Family` subclass (usually of `Generic`) naming its
`model_types`, and one line in FAMILIES below. Models of no listed family train through
`Generic`, the library's own forward.
"""

from __future__ import annotations

from finetune_app.core.families.base import Family
from finetune_app.core.families.fastvlm import FastVLM
from finetune_app.core.families.generic import NAMES, Generic
from finetune_app.core.families.paligemma import PaliGemma
from finetune_app.core.families.qwen_vl import QwenVL
from finetune_app.core.families.text import Text

FAMILIES: tuple[type[Family], ...] = (Text, QwenVL, FastVLM, PaliGemma)


def family_class(model_type: str) -> type[Family]:
    """The family of a config.json model_type (Generic for models of no listed family)."""
    model_type = str(model_type or "").lower()
    for cls in FAMILIES:
        if model_type in cls.model_types:
            return cls
    return Generic


def family_for(base) -> Family:
    """A new family object for a loaded base model: one per run, since it holds that run's
    frozen-tower feature cache (a later run may have trained the tower)."""
    return family_class(base.model_type)(base)


def display_name(model_type: str) -> str:
    model_type = str(model_type or "").lower()
    return NAMES.get(model_type) or family_class(model_type).display_name(model_type)


def known_vlm(model_type: str) -> bool:
    """A model type the engine knows reads images (before its config's vision keys say so)."""
    cls = family_class(model_type)
    return cls is not Generic and cls.vlm


# config.json model_type of the VLMs whose processor mlx_vlm.load (the serving path) builds without
# regard to torch (#16 vlmtorch, torchhide; core/patches/transformers_without_torch,
# tests/test_startup_costs.py): mlx-vlm's own numpy processors...
OWN_PROCESSOR_WITHOUT_TORCH = frozenset({
    "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "fastvlm", "llava_qwen2", "pixtral", "mistral3",
    "phi3_v", "deepseek_vl_v2"})
# ...and mlx-vlm's processors around transformers' PIL image processor, asked for by name. These
# need transformers to take its PIL and auto image-processing files as torch-free, which 5.17 does
# not (transformers_without_torch.pil_files_need_torch): there they keep torch
PIL_PROCESSOR_WITHOUT_TORCH = frozenset({
    "llava", "llava_next", "paligemma", "gemma3", "idefics3", "smolvlm", "mllama"})
SAME_PROCESSOR_WITHOUT_TORCH = OWN_PROCESSOR_WITHOUT_TORCH | PIL_PROCESSOR_WITHOUT_TORCH


def processor_same_without_torch(model_type: str, *, pil_needs_torch: bool = False) -> bool:
    """Whether a VLM's processor, as its serving builds it, is the same with torch hidden (given
    whether the installed transformers takes its PIL image processors as needing torch)."""
    model_type = str(model_type or "").lower()
    return model_type in OWN_PROCESSOR_WITHOUT_TORCH or (model_type in PIL_PROCESSOR_WITHOUT_TORCH
                                                         and not pil_needs_torch)


def model_types() -> set[str]:
    """Every model type a family here names (a test keeps them out of the rest of the code)."""
    return {t for cls in FAMILIES for t in cls.model_types} | set(NAMES)


__all__ = ["Family", "Generic", "FAMILIES", "family_class", "family_for", "display_name", "known_vlm", "model_types",
           "processor_same_without_torch"]
