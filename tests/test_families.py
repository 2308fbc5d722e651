"""Model families are named in core/families only: adding one is a module there, not a hunt
through the engine, export and UI for spelled-out model types."""

import ast
from pathlib import Path

from finetune_app.core.families import FastVLM, Generic, QwenVL, Text, family_class, model_types

PACKAGE = Path(__file__).resolve().parents[1] / "finetune_app"
ALLOWED = (
    "core/families/",  # the one place
    "core/serving/",  # serving layouts per runtime (written alongside; ported into families later)
    "testing/",  # tiny-model builders name the architectures they build (and DEMO_FAMILY)
)


def test_no_model_type_is_spelled_outside_the_families():
    names = model_types()
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(ALLOWED):
            continue
        text = path.read_text(encoding="utf-8")
        if not any(n in text.lower() for n in names):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in names:
                offenders.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not offenders, "model types belong in core/families:\n" + "\n".join(offenders)


def test_family_of_each_model_type():
    assert family_class("qwen3_vl") is QwenVL and family_class("QWEN2_5_VL") is QwenVL
    assert family_class("llava_qwen2") is FastVLM and FastVLM.apple_app and not QwenVL.apple_app
    assert family_class("mistral") is Text and not Text.vlm
    assert family_class("some_new_vlm") is Generic  # trained through the library's own forward
    assert {"qwen2_vl", "fastvlm", "llama"} <= model_types()
