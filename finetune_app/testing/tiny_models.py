"""Tiny random-weight models of the real architectures, built offline.

Tests and the headless demo need real model folders (config.json, safetensors, tokenizer,
processor files) that load through the libraries' own loaders (`mlx_vlm.load`, `mlx_lm.load`)
exactly as a user's downloaded model would, without network access to the Hugging Face hub.
Each folder is built from the library's own `Model` class with seeded random float32 weights
(same seed -> identical weights), a small byte-level BPE tokenizer carrying the family's special
tokens and chat template, and the family's processor files.

FastVLM needs `patches.apply()` (done here, and needed again before loading the folder in a fresh
process): mlx-vlm 0.7.10 otherwise ignores the tower sizes in config.json and builds the
125M-parameter FastViTHD tower. Its random tower is also initialised and calibrated like a trained
one, so that its features carry the image's colour and shape and a LoRA on the language model
alone can learn to caption them (see `_init_fastvit`, `_calibrate_fastvit`, `_calibrate_projector`);
`image_size=256` builds a FastVLM that sees 256 px images (16 image features instead of 256).

Qwen3.5 and the families in `tiny_vlm_families` (Gemma 3, Idefics3, SmolVLM, Pixtral, Mistral 3,
Mllama, LLaVA, LLaVA-NeXT, DeepSeek-VL2, PaliGemma, Phi-3-Vision) are `MORE_VLM_FAMILIES`; `ALL_FAMILIES` is
every name a build accepts.

API: `FAMILIES`, `build_tiny_model(family, dest, seed=0, image_size=None, **overrides)`,
`cached_tiny_model(family, root=None)`, `build_tokenizer(family, dest)`, `make_tokenizer(family)`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import threading
import zlib
from pathlib import Path

import numpy as np

from finetune_app.core import atomic
from finetune_app.testing.tiny_vlm_families import SPECS

# Bump when the files a build writes change, so cached folders are rebuilt.
# 2: narrower, calibrated FastVLM tower.
# 3: FastVLM tower initialised like a trained one (colour kept, oriented edges), projector scaled.
# 4: FastVLM oblique line filters calibrated to std 3 (were 1).
BUILDER_VERSION = 4

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "fastvlm", "llama", "qwen2", "qwen3")
# The other families the engine is tested on (tests/test_more_vlm_families.py); every name here
# builds like those above.
MORE_VLM_FAMILIES = ("qwen3_5", *SPECS)
ALL_FAMILIES = FAMILIES + MORE_VLM_FAMILIES
VLM_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "fastvlm", *MORE_VLM_FAMILIES})
TEXT_FAMILIES = frozenset({"llama", "qwen2", "qwen3"})

BPE_VOCAB_SIZE = 512
# The model's vocabulary is the tokenizer's size rounded up (as real checkpoints pad theirs).
VOCAB_MULTIPLE = 64

# File written last into a built folder; its presence marks the folder complete.
MANIFEST = "tiny_model.json"

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "black", "white", "pink",
           "brown", "grey", "gray", "cyan")
SHAPES = ("circle", "square", "triangle", "star", "rectangle", "diamond", "hexagon", "oval")
SIZES = ("small", "large", "big", "tiny", "medium")
PLACES = ("in the centre", "in the center", "on the left", "on the right", "at the top",
          "at the bottom", "in the middle")


def _corpus() -> list[str]:
    """A few hundred deterministic sentences covering the demo's vocabulary and Q&A words."""
    lines = [
        "Describe the image.", "What is in the image?", "What colour is the shape?",
        "What color is it?", "What shape is it?", "How many shapes are there?",
        "Where is the shape?", "Is it a circle? Yes.", "Is it a square? No.",
        "Question: what do you see? Answer: a shape.", "Caption this picture.",
        "The picture shows one object on a plain background.", "There is one shape.",
        "You are a helpful assistant.", "Please answer the question about the photo.",
        "Thank you! You're welcome.", "The answer is yes. The answer is no.",
        "user assistant system", "Hello, how can I help you today?",
        "Which colour? Which shape? Why? When? Who? describe, caption, answer, question",
        "0 1 2 3 4 5 6 7 8 9 10 one two three four five",
    ]
    for c in COLOURS:
        for s in SHAPES:
            lines += [
                f"a {c} {s}", f"A {c} {s}.",
                f"The image shows a {c} {s}.",
                f"What colour is the {s}? It is {c}.",
                f"Question: What shape is in the image? Answer: a {s}.",
            ]
        for z in SIZES:
            lines.append(f"a {z} {c} shape")
    for s in SHAPES:
        for p in PLACES:
            lines.append(f"There is a {s} {p} of the image.")
    return lines


# Family special tokens, in the order (and so the relative ids) of the real tokenizers.
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_QWEN_VL_SPECIALS = _QWEN_SPECIALS + ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                                      "<|image_pad|>", "<|video_pad|>"]
_LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]

# family -> (special tokens, plain added tokens, bos, eos, pad)
_TOKENS = {
    "qwen2_vl": (_QWEN_VL_SPECIALS, [], None, "<|im_end|>", "<|endoftext|>"),
    "qwen2_5_vl": (_QWEN_VL_SPECIALS, [], None, "<|im_end|>", "<|endoftext|>"),
    "qwen3_vl": (_QWEN_VL_SPECIALS, ["<think>", "</think>"], None, "<|im_end|>", "<|endoftext|>"),
    "qwen3_5": (_QWEN_VL_SPECIALS, ["<think>", "</think>"], None, "<|im_end|>", "<|endoftext|>"),
    # Apple's FastVLM ships the Qwen2 tokenizer; `<image>` is split out by the processor, not a token.
    "fastvlm": (_QWEN_SPECIALS, [], None, "<|im_end|>", "<|endoftext|>"),
    "llama": (_LLAMA_SPECIALS, [], "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"),
    "qwen2": (_QWEN_SPECIALS, [], None, "<|im_end|>", "<|endoftext|>"),
    "qwen3": (_QWEN_SPECIALS, ["<think>", "</think>"], None, "<|im_end|>", "<|endoftext|>"),
    **{f: (s.specials, s.plain, s.bos, s.eos, s.pad) for f, s in SPECS.items()},
}

# Chat templates. Qwen2-VL / Qwen2.5-VL: the real template. Qwen2 / Qwen3 / Qwen3-VL / Llama 3:
# the real ones without tool calling. FastVLM: Apple's Qwen2 ChatML, `<image>\n` for an image item.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_VL_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

FASTVLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{ '<image>\\n' }}{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

CHAT_TEMPLATES = {
    "qwen2_vl": QWEN2_VL_TEMPLATE,
    "qwen2_5_vl": QWEN2_VL_TEMPLATE,
    "qwen3_vl": QWEN3_VL_TEMPLATE,
    "qwen3_5": QWEN3_VL_TEMPLATE,
    "fastvlm": FASTVLM_TEMPLATE,
    "llama": LLAMA3_TEMPLATE,
    "qwen2": QWEN2_TEMPLATE,
    "qwen3": QWEN3_TEMPLATE,
    **{f: s.template for f, s in SPECS.items()},
}

_bpe_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _base_bpe_json() -> str:
    """Train the shared byte-level BPE once per process (deterministic, ~0.1 s); return its JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    with _bpe_lock:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=BPE_VOCAB_SIZE,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_corpus(), trainer)
        return tok.to_str()


def _check_family(family: str) -> None:
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown tiny-model family {family!r}; choose one of {', '.join(ALL_FAMILIES)}")


def make_tokenizer(family: str):
    """A fresh `PreTrainedTokenizerFast` for `family` (the trained BPE is cached per process)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    _check_family(family)
    specials, plain, bos, eos, pad = _TOKENS[family]
    raw = Tokenizer.from_str(_base_bpe_json())
    raw.add_special_tokens(specials)
    if plain:
        raw.add_tokens(plain)
    # Fill up to the model's (rounded) vocabulary with reserved specials, as Llama 3 does, so every
    # id a random model can emit decodes (mlx-vlm's detokenizer raises IndexError on an id the
    # tokenizer lacks).
    size = raw.get_vocab_size(with_added_tokens=True)
    target = -(-size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    raw.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(target - size)])
    if bos is not None:  # Llama 3 prepends <|begin_of_text|> when encoding plain text.
        raw.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, raw.token_to_id(bos))])
    extra = [t for t in specials if t not in (bos, eos, pad)]
    kwargs = dict(tokenizer_object=raw, eos_token=eos, pad_token=pad,
                  additional_special_tokens=extra, model_max_length=32768)
    if bos is not None:
        kwargs["bos_token"] = bos
    if family in SPECS and SPECS[family].named:  # e.g. Gemma 3's tokenizer.image_token / boi_token
        kwargs["extra_special_tokens"] = dict(SPECS[family].named)
    tok = PreTrainedTokenizerFast(**kwargs)
    tok.chat_template = CHAT_TEMPLATES[family]
    return tok


def build_tokenizer(family: str, dest: str | Path) -> None:
    """Write the family's tokenizer files (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json where transformers writes it, chat_template.jinja) into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(family)
    tok.save_pretrained(str(dest))
    # transformers 5 names its backend class; name the class every version can load.
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    # transformers 5 writes `extra_special_tokens` as a list; 4.x reads that key as a dict.
    if isinstance(cfg.get("extra_special_tokens"), list):
        cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens")
    cfg.setdefault("chat_template", CHAT_TEMPLATES[family])
    atomic.write_json(cfg_path, cfg)
    atomic.write_text(dest / "chat_template.jinja", CHAT_TEMPLATES[family])


def _token_ids(family: str) -> dict[str, int]:
    tok = make_tokenizer(family)
    specials, plain, *_ = _TOKENS[family]
    return {t: tok.convert_tokens_to_ids(t) for t in specials + plain}


def tokenizer_size(family: str) -> int:
    return len(make_tokenizer(family))


def model_vocab_size(family: str) -> int:
    """The model's vocabulary: the tokenizer's size rounded up to a multiple of VOCAB_MULTIPLE
    (equal to it here, since the tokenizer is filled with reserved tokens)."""
    n = tokenizer_size(family)
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128

# Tiny FastViTHD: the real stage layout (3 RepMixer stages, 2 attention stages with conditional
# positional encodings, 5 stride-2 reductions after a stride-4 stem, 1024 px -> 16x16 = 256
# features) with one block per stage and narrow widths. MHSA uses a fixed head_dim of 32, so the
# attention stages' widths are multiples of 32.
FASTVLM_VISION = {
    "model_type": "llava_qwen2",
    "image_size": 1024,
    "patch_size": 64,
    "layers": [1, 1, 1, 1, 1],
    "embed_dims": [4, 8, 16, 32, 64],
    "mlp_ratios": [2, 2, 2, 2, 2],
    "downsamples": [True, True, True, True, True],
    "pos_embs_shapes": [None, None, None, [7, 7], [7, 7]],
    "token_mixers": ["repmixer", "repmixer", "repmixer", "attention", "attention"],
    "repmixer_kernel_size": 3,
    "down_patch_size": 7,
    "down_stride": 2,
    "cls_ratio": 2.0,
    "num_classes": 16,
    "projection_dim": 32,
    "hidden_size": 64,
    "intermediate_size": 128,
    "layer_scale_init_value": 1e-5,
}

QWEN_VL_PREPROCESSOR = {
    "min_pixels": 56 * 56,
    "max_pixels": 112 * 112,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
}


def _text_block(family: str, vocab: int, ids: dict[str, int]) -> dict:
    eos = ids.get("<|im_end|>")
    return {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "bos_token_id": ids.get("<|endoftext|>"),
        "eos_token_id": eos,
    }


def _config(family: str) -> tuple[dict, dict | None, dict]:
    """(config.json, preprocessor_config.json or None, generation_config.json) for a family."""
    ids = _token_ids(family)
    vocab = model_vocab_size(family)
    pre = None
    if family in SPECS:  # tiny_vlm_families: config.json, processor files, generation extras
        cfg, files, gen_extra = SPECS[family].config(ids, vocab)
        eos = cfg.get("eos_token_id", cfg.get("text_config", {}).get("eos_token_id"))
        gen = {"eos_token_id": eos, "pad_token_id": ids[SPECS[family].pad], "do_sample": False,
               **gen_extra}
        return cfg, files.get("preprocessor_config.json"), gen
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"):
        vl_ids = {
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
            "vision_token_id": ids["<|vision_pad|>"],
        }
        pre = dict(QWEN_VL_PREPROCESSOR)
    if family == "qwen2_vl":
        cfg = {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            **_text_block(family, vocab, ids),
            "tie_word_embeddings": True,
            # head_dim 16: sections sum to head_dim / 2, in Qwen2-VL's 16:24:24 proportion.
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            **vl_ids,
            "vision_config": {
                "model_type": "qwen2_vl",
                "depth": 2, "embed_dim": 32, "hidden_size": HIDDEN, "num_heads": 2,
                "mlp_ratio": 2, "in_channels": 3, "patch_size": 14, "spatial_patch_size": 14,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_act": "quick_gelu",
            },
            "torch_dtype": "float32",
        }
        pre.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2VLProcessor")
    elif family == "qwen2_5_vl":
        cfg = {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            **_text_block(family, vocab, ids),
            "tie_word_embeddings": True,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            **vl_ids,
            "vision_config": {
                "model_type": "qwen2_5_vl",
                "depth": 2, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": HIDDEN,
                "num_heads": 2, "in_channels": 3, "patch_size": 14, "spatial_patch_size": 14,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                "fullatt_block_indexes": [1], "tokens_per_second": 2, "hidden_act": "silu",
            },
            "torch_dtype": "float32",
        }
        pre.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2_5_VLProcessor")
    elif family == "qwen3_vl":
        text = {
            "model_type": "qwen3_vl_text",
            **_text_block(family, vocab, ids),
            "head_dim": HIDDEN // HEADS,
            "rope_theta": 5000000.0,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2],
                             "mrope_interleaved": True},
        }
        cfg = {
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "model_type": "qwen3_vl",
            "text_config": text,
            **vl_ids,
            "vision_config": {
                "model_type": "qwen3_vl",
                "depth": 2, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": HIDDEN,
                "num_heads": 2, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0], "hidden_act": "gelu_pytorch_tanh",
            },
            "tie_word_embeddings": True,
            "eos_token_id": ids["<|im_end|>"],
            "torch_dtype": "float32",
        }
        pre.update(patch_size=16, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                   size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
                   image_processor_type="Qwen2VLImageProcessorFast", processor_class="Qwen3VLProcessor")
    elif family == "qwen3_5":
        # Qwen3.5: gated-delta (linear attention) layers with a full-attention layer every
        # `full_attention_interval`; the Qwen3-VL tower without deepstack.
        text = {
            "model_type": "qwen3_5_text",
            **_text_block(family, vocab, ids),
            "head_dim": HIDDEN // HEADS,
            "linear_num_value_heads": 2, "linear_num_key_heads": 2, "linear_key_head_dim": 16,
            "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
            "full_attention_interval": 2,
            "tie_word_embeddings": True,
            "rope_parameters": {"type": "default", "mrope_section": [2, 1, 1],
                                "rope_theta": 10000000.0, "partial_rotary_factor": 0.5,
                                "mrope_interleaved": True},
        }
        cfg = {
            "architectures": ["Qwen3_5ForConditionalGeneration"],
            "model_type": "qwen3_5",
            "text_config": text,
            **vl_ids,
            "vision_config": {
                "model_type": "qwen3_5",
                "depth": 2, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": HIDDEN,
                "num_heads": 2, "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "num_position_embeddings": 64,
                "deepstack_visual_indexes": [], "hidden_act": "gelu_pytorch_tanh",
            },
            "tie_word_embeddings": True,
            "eos_token_id": ids["<|im_end|>"],
            "torch_dtype": "float32",
        }
        pre.update(patch_size=16, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                   size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
                   image_processor_type="Qwen2VLImageProcessorFast", processor_class="Qwen3VLProcessor")
    elif family == "fastvlm":
        vis = copy.deepcopy(FASTVLM_VISION)
        cfg = {
            "architectures": ["LlavaQwen2ForCausalLM"],
            "model_type": "llava_qwen2",
            **_text_block(family, vocab, ids),
            "tie_word_embeddings": True,
            "image_token_index": -200,
            "image_aspect_ratio": "pad",
            "mm_hidden_size": int(vis["embed_dims"][-1] * vis["cls_ratio"]),
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_tower": "mobileclip_l_1024",
            "mm_vision_select_feature": "patch",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "tokenizer_model_max_length": 8192,
            "tokenizer_padding_side": "right",
            "vision_config": vis,
            "torch_dtype": "float32",
        }
        pre = {
            "crop_size": {"height": 1024, "width": 1024},
            "size": {"shortest_edge": 1024},
            "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
            "do_rescale": True, "do_resize": True, "resample": 3,
            "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
            "rescale_factor": 1 / 255,
            "image_processor_type": "CLIPImageProcessor",
        }
    elif family == "llama":
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **_text_block(family, vocab, ids),
            "head_dim": HIDDEN // HEADS,
            "rope_theta": 500000.0,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|begin_of_text|>"],
            "eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]],
            "torch_dtype": "float32",
        }
    elif family == "qwen2":
        cfg = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            **_text_block(family, vocab, ids),
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        }
    else:  # qwen3
        cfg = {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **_text_block(family, vocab, ids),
            "head_dim": HIDDEN // HEADS,
            "attention_bias": False,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        }
    eos = cfg.get("eos_token_id", cfg.get("text_config", {}).get("eos_token_id"))
    pad = ids[_TOKENS[family][4]]
    gen = {"eos_token_id": eos, "pad_token_id": pad, "do_sample": False}
    if family == "llama":
        gen["bos_token_id"] = ids["<|begin_of_text|>"]
    return cfg, pre, gen


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def _rng(seed: int, name: str) -> np.random.Generator:
    """One generator per (seed, parameter name): weights do not depend on construction order
    or on MLX's global random state."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])


def _normal(seed: int, name: str, shape, std: float) -> np.ndarray:
    return (_rng(seed, name).standard_normal(shape) * std).astype(np.float32)


def _fan_in(shape) -> int:
    # MLX layouts put the input (and kernel) dims last: Linear [out, in], Conv2d [out, kh, kw, in/g].
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def _generic_init(name: str, value, seed: int):
    """Default scheme: weights N(0, 1/fan_in), norms 1, biases 0; anything else is left as built."""
    import mlx.core as mx

    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf == "running_mean":
        return mx.zeros(value.shape, dtype=mx.float32)
    if leaf == "running_var" or leaf.startswith("layer_scale"):
        return mx.ones(value.shape, dtype=mx.float32)
    if leaf in ("weight", "proj") or leaf.endswith("_weight"):
        if value.ndim == 1:
            return mx.ones(value.shape, dtype=mx.float32)
        return mx.array(_normal(seed, name, value.shape, 1.0 / math.sqrt(_fan_in(value.shape))))
    return value.astype(mx.float32) if hasattr(value, "astype") else value


# How the tiny FastViTHD tower is initialised and calibrated (`_init_fastvit`, `_calibrate_fastvit`).
# Measured on the demo shapes (make_shapes_dataset: 200 train / 60 held out, 64 px) with a
# 256 px build: standardised ridge probes on the tower's mean-pooled output get colour 100% and
# colour+shape 100% (previous init: 62% / 52%), and benchmarks/learn_shapes.py (the engine's
# default LoRA preset, language model only, 400 steps) gets held-out colour 100% and
# colour+shape 95-98% over 3 seeds (previous init: 60% / 23%; tiny Qwen2-VL: 100% / 67%).
FASTVIT_GELU_SHIFT = 2.0  # calibrated mean (std 1) of main-path convs feeding GELU: no dead zone
FASTVIT_BRANCH_ALPHA = 1.0  # residual-branch std / stream std, per channel (sets layer_scale)
FASTVIT_STAGE0_ALPHA = 0.1  # stage 0 carries the full-resolution luminance channel: keep it clean
FASTVIT_SE_GATE_BIAS = 2.0  # squeeze-excite gates ~0.88 on every channel (random ones shut ~1/5)
FASTVIT_OBLIQUES = (45.0, 135.0)  # line filters of the first downsampling (2 outputs per input)
FASTVIT_LINE_STD = 3.0  # their calibrated std: GELU rectifies them even on soft (upscaled) edges


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _line_kernel(size: int, theta_deg: float, across: float = 0.8, along: float = 3.0) -> np.ndarray:
    """Zero-mean elongated second derivative of a Gaussian: a V1-like oriented line/edge detector
    (sharply tuned: it barely answers edges 45 degrees off its orientation)."""
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    t = math.radians(theta_deg)
    u = xx * math.cos(t) + yy * math.sin(t)
    v = -xx * math.sin(t) + yy * math.cos(t)
    k = (u ** 2 / across ** 2 - 1) * np.exp(-u ** 2 / (2 * across ** 2) - v ** 2 / (2 * along ** 2))
    k -= k.mean()
    return k / np.abs(k).sum()


def _downsample_roles(in_ch: int, out_ch: int, first: bool) -> list:
    """Role of each output of a PatchEmbed's grouped conv (input o // r feeds output o, r = out/in):
    "+"/"-" a smoothing pair, "smooth" an unpaired smoothing, or an angle in degrees (a line
    filter: the first downsampling's last input channel, the stem's luminance channel)."""
    r = out_ch // in_ch
    roles = []
    for o in range(out_ch):
        j = o % r
        if first and o // r == in_ch - 1:
            roles.append(FASTVIT_OBLIQUES[j] if r == 2 else FASTVIT_OBLIQUES[0] + 180.0 * j / r)
        elif r % 2 == 0:
            roles.append("+" if j % 2 == 0 else "-")
        else:
            roles.append("smooth")
    return roles


def _fastvit_plan(vision_tower) -> dict:
    """Parameter name (under the tower) -> how `_init_fastvit` draws it, for the special convs."""
    from mlx_vlm.models.fastvlm import vision as fv

    plan = {}
    for mname, mod in vision_tower.named_modules():
        if isinstance(mod, (fv.RepMixer, fv.RepCPE)):
            plan[f"{mname}.reparam_conv.weight"] = ("identity",)
        elif isinstance(mod, fv.SEBlock):
            plan[f"{mname}.expand.weight"] = ("se_expand",)
            plan[f"{mname}.expand.bias"] = ("se_bias",)
    first = True
    for i, layer in enumerate(vision_tower.vision_model.network):
        if isinstance(layer, fv.PatchEmbed):
            conv = layer.proj[0].lkb_reparam
            out_ch, per_group = conv.weight.shape[0], conv.weight.shape[-1]
            if per_group == 1 and out_ch % conv.groups == 0:  # FastViTHD's depthwise-style conv
                plan[f"vision_model.network.{i}.proj.0.lkb_reparam.weight"] = (
                    "downsample", _downsample_roles(conv.groups, out_ch, first))
            first = False
    stem = "vision_model.patch_embed.blocks"
    plan[f"{stem}.0.reparam_conv.weight"] = ("stem_rgb",)
    plan[f"{stem}.1.reparam_conv.weight"] = ("stem_depthwise",)
    plan[f"{stem}.2.reparam_conv.weight"] = ("near_identity",)
    return plan


def _init_fastvit(model, seed: int, params: dict) -> None:
    """Initialise the FastViTHD tower like a trained one, with seeded random weights (step 1 of 2).

    Why a random tower fails: mlx-vlm builds the tower in its *reparameterised* (inference) form.
    There, each RepMixer / RepCPE is a single depthwise conv that in a trained network carries
    the identity of the residual it was folded from (`x + s*(mixer(x) - norm(x))`). Drawn at
    random, those convs have no identity path, and MLX's default uniform init has a variance gain
    of about 1/3 per conv (GELU halves it again), so the image signal shrinks several-fold per
    layer (to ~1e-7 after FastViTHD's ~50 convs) while the random biases do not: the output
    becomes a bias-driven constant. Fixing the scale is not enough either: the main path is a
    chain of ~12 conv+GELU layers without residuals, only 4-16 channels wide, and a random conv
    standardised to mean 0 pushes a colour's whole response into GELU's flat negative side in
    some channels, so colour is scrambled (a linear probe on the pooled output: ~62% colour on the
    demo shapes) and a LoRA on the language model cannot learn it; and nothing in a random tower
    answers the *shape* (circle vs square) strongly enough to be learnt.

    What a trained tower has, and this init gives:
      * identity paths: RepMixer / RepCPE convs are identity + small noise (what reparameterising
        `x + s*(mixer(x) - norm(x))` produces), the stem's 1x1 MobileOne is identity + noise;
      * colour kept through every GELU: main-path convs feeding GELU are calibrated to mean 2,
        std 1 (GELU's monotone, near-linear side), and each stride-2 PatchEmbed conv turns every
        input channel into a +/- pair of Gaussian-smoothed copies, calibrated to mean 0, so the
        pair keeps it exactly (GELU(z) - GELU(-z) = z) and adds its magnitude (an energy feature);
      * oriented edge detectors: the stem's last channel is luminance (mean of RGB, smoothed), and
        the first downsampling turns it into two oblique (45 and 135 degree) line-filter
        responses (calibrated to mean 0, std FASTVIT_LINE_STD), rectified by GELU; pooled, they
        tell a circle (oblique edges) from a square (none), which nothing in a random tower
        does -- the V1-like first-layer features a trained CNN has. (Only two orientations: the
        4-channel stem affords one luminance channel and the conv gives 2 outputs per input.
        Measured: the two obliques are what separates circle from square; 0/90, 22.5/112.5 or
        30/150 degrees do not.)
      * residual branches (ConvFFN, attention) that add to, not replace, the stream: He-scaled
        convs, then `layer_scale` set by `_calibrate_fastvit` so each branch's std is
        FASTVIT_BRANCH_ALPHA (stage 0: FASTVIT_STAGE0_ALPHA) times the stream's, per channel;
      * near-neutral squeeze-excite gates (random ones shut a fifth of the output channels).
    Everything else: He init for convs, N(0, 1/fan_in) linears, zero biases.
    `_calibrate_fastvit` then sets means, scales, layer scales and BatchNorm statistics.
    """
    import mlx.core as mx

    tower = "vision_tower"
    plan = {f"{tower}.{k}": v for k, v in _fastvit_plan(model.vision_tower).items()}
    for name, value in list(params.items()):
        if not name.startswith(tower + "."):
            continue
        leaf = name.rsplit(".", 1)[-1]
        role = plan.get(name, (None,))
        shape = tuple(value.shape)
        he = math.sqrt(2.0 / _fan_in(shape)) if len(shape) > 1 else 0.0
        if role[0] == "identity":  # depthwise [C, k, k, 1]
            _, kh, kw, ig = shape
            w = _normal(seed, name, shape, 0.5 / math.sqrt(kh * kw * ig))
            w[:, kh // 2, kw // 2, :] += 1.0
        elif role[0] == "near_identity" and shape[0] == shape[-1]:  # 1x1 [C, 1, 1, C]
            w = _normal(seed, name, shape, 0.3 / math.sqrt(shape[-1]))
            w[np.arange(shape[0]), 0, 0, np.arange(shape[0])] += 1.0
        elif role[0] == "stem_rgb":  # [C, 3, 3, 3]: random colour filters + luminance
            w = _normal(seed, name, shape, he)
            n = shape[1] * shape[2] * shape[3]
            w[-1] = 1.0 / n + _normal(seed, name + "/luminance", shape[1:], 0.1 / n)
        elif role[0] == "stem_depthwise" and shape[-1] == 1:  # [C, 3, 3, 1]
            w = _normal(seed, name, shape, he)
            n = shape[1] * shape[2]
            w[-1] = 1.0 / n + _normal(seed, name + "/luminance", shape[1:], 0.1 / n)
        elif role[0] == "downsample":  # [out, k, k, 1]
            _, kh, kw, _ = shape
            smooth = _gaussian_kernel(kh, 1.5)[..., None]
            w = _normal(seed, name, shape, 0.2 / math.sqrt(kh * kw))
            for o, r in enumerate(role[1]):
                if r in ("+", "smooth"):
                    w[o] += smooth
                elif r == "-":
                    w[o] -= smooth
                else:
                    w[o] = _line_kernel(kh, r)[..., None]
        elif role[0] == "se_expand":
            w = _normal(seed, name, shape, 0.1 / math.sqrt(_fan_in(shape)))
        elif role[0] == "se_bias":
            w = np.full(shape, FASTVIT_SE_GATE_BIAS, np.float32)
        elif leaf == "weight" and len(shape) == 4:  # other convs: He init for GELU
            w = _normal(seed, name, shape, he)
        elif leaf == "proj" and len(shape) == 2:  # GlobalPool2D: [in_dim, out_dim]
            w = _normal(seed, name, shape, 1.0 / math.sqrt(shape[0]))
        else:
            continue
        params[name] = mx.array(w.astype(np.float32))


def _calibration_images(seed: int, n: int = 16, size: int = 128) -> np.ndarray:
    """Synthetic scenes (coloured ellipses and boxes on white or coloured grounds), NHWC in [0, 1]."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xCA11B])
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        img = np.ones((size, size, 3), np.float32) if i % 2 == 0 else \
            np.broadcast_to(rng.uniform(0, 1, 3), (size, size, 3)).copy()
        for _ in range(2):
            colour = rng.uniform(0, 1, 3)
            cx, cy = rng.uniform(0.2, 0.8, 2)
            rx, ry = rng.uniform(0.08, 0.3, 2)
            if rng.random() < 0.5:
                inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            else:
                inside = (abs(xx - cx) <= rx) & (abs(yy - cy) <= ry)
            img[inside] = colour
        out[i] = img
    return out


def _calibration_batch(seed: int, image_size: int) -> np.ndarray:
    """The 16 calibration scenes, tiled k x k into mosaics about the size the tower will see
    (k = 1, 2, 4 for image_size < 256, < 512, >= 512): the deep stages' 7x7 convs and attention
    then run on maps of about their real size. Calibrated on 2x2 maps (128 px) and used at
    1024 px (16x16), the last stage's output drifts ~15 std and ~10x in scale; above 512 px the
    pixels (and build time) would grow, and the remaining drift is a few std. Same cost for any k."""
    k = 4 if image_size >= 512 else 2 if image_size >= 256 else 1
    scenes = _calibration_images(seed)
    n, size = scenes.shape[0], scenes.shape[1]
    return (scenes.reshape(n // (k * k), k, k, size, size, 3).transpose(0, 1, 3, 2, 4, 5)
            .reshape(n // (k * k), k * size, k * size, 3))


def _channel_stats(y):
    import mlx.core as mx

    axes = tuple(range(y.ndim - 1))
    return y.mean(axis=axes), mx.sqrt(y.var(axis=axes) + 1e-6)


def _calibrate_fastvit(vision_tower, seed: int):
    """Data-dependent init (LSUV-style), step 2 of 2: one forward pass over synthetic scenes
    (`_calibration_batch`).

    In forward order (each layer after everything upstream of it), in eval mode, on the CPU
    stream for determinism:
      * main-path convs feeding GELU (stem, PatchEmbed 1x1, conv_exp) get weight and bias
        rescaled so that, per channel, their output has mean FASTVIT_GELU_SHIFT and std 1 on the
        scenes; PatchEmbed's +/- pairs get mean 0, std 1 and its line filters mean 0, std
        FASTVIT_LINE_STD (so GELU rectifies them); ConvFFN's fc1 (inside a residual branch)
        gets mean 0, std 1;
      * every BatchNorm gets the scenes' running mean/var, as a trained network's would be;
      * every block's `layer_scale` (`layer_scale_1/2`) is set so the residual branch's std is
        FASTVIT_BRANCH_ALPHA (stage 0: FASTVIT_STAGE0_ALPHA) times the stream's, per channel.
    Returns the tower's output features on the scenes (for `_calibrate_projector`).
    """
    import mlx.core as mx
    from mlx import nn
    from mlx_vlm.models.fastvlm import vision as fv

    class _CalibratedConv(nn.Module):
        def __init__(self, conv, mean, std=1.0):
            super().__init__()
            self.conv = conv
            self.target = mean, std

        def __call__(self, x):
            mean, std = _channel_stats(self.conv(x))
            gain = self.target[1] / std
            self.conv.weight = self.conv.weight * gain.reshape(-1, 1, 1, 1)
            self.conv.bias = (self.conv.bias - mean) * gain + self.target[0]
            y = self.conv(x)
            mx.eval(y, self.conv.parameters())
            return y

    class _CalibratedBatchNorm(nn.Module):
        def __init__(self, bn):
            super().__init__()
            self.bn = bn

        def __call__(self, x):
            self.bn.running_mean, std = _channel_stats(x)
            self.bn.running_var = std * std
            return self.bn(x)

    def branch_scale(alpha, stream, branch):
        scale = alpha * _channel_stats(stream)[1] / _channel_stats(branch)[1]
        mx.eval(scale)
        return scale.reshape(1, 1, -1)

    class _CalibratedRepMixerBlock(nn.Module):  # RepMixerBlock.__call__, setting layer_scale
        def __init__(self, block, alpha):
            super().__init__()
            self.block, self.alpha = block, alpha

        def __call__(self, x):
            b = self.block
            x = b.token_mixer(x)
            f = b.convffn(x)
            b.layer_scale = branch_scale(self.alpha, x, f)
            return x + b.layer_scale * f

    class _CalibratedAttentionBlock(nn.Module):  # AttentionBlock.__call__, setting layer scales
        def __init__(self, block, alpha):
            super().__init__()
            self.block, self.alpha = block, alpha

        def __call__(self, x):
            b = self.block
            f = b.token_mixer(b.norm(x))
            b.layer_scale_1 = branch_scale(self.alpha, x, f)
            x = x + b.layer_scale_1 * f
            f = b.convffn(x)
            b.layer_scale_2 = branch_scale(self.alpha, x, f)
            return x + b.layer_scale_2 * f

    shift = FASTVIT_GELU_SHIFT
    plan = _fastvit_plan(vision_tower)
    swaps = []  # (container, key, original); key is an attribute name or a list index
    for mname, mod in vision_tower.named_modules():
        if isinstance(mod, fv.MobileOneBlock):
            swaps.append((mod, "reparam_conv", _CalibratedConv(mod.reparam_conv, shift)))
        elif isinstance(mod, fv.ReparamLargeKernelConv):
            roles = plan.get(f"{mname}.lkb_reparam.weight", ("", None))[1]
            mean, std = shift, 1.0
            if roles is not None:
                mean = mx.array([shift if r == "smooth" else 0.0 for r in roles])
                std = mx.array([1.0 if isinstance(r, str) else FASTVIT_LINE_STD for r in roles])
            swaps.append((mod, "lkb_reparam", _CalibratedConv(mod.lkb_reparam, mean, std)))
        elif isinstance(mod, fv.ConvFFN):
            swaps.append((mod, "fc1", _CalibratedConv(mod.fc1, 0.0)))
        if isinstance(mod, fv.NamedSequential) and isinstance(mod.get("bn"), nn.BatchNorm):
            swaps.append((mod, "bn", _CalibratedBatchNorm(mod.bn)))
    first_stage = True
    for layer in vision_tower.vision_model.network:
        if not isinstance(layer, list):  # a stage: CallableModuleList of blocks
            continue
        alpha = FASTVIT_STAGE0_ALPHA if first_stage else FASTVIT_BRANCH_ALPHA
        first_stage = False
        for i, block in enumerate(layer):
            if isinstance(block, fv.RepMixerBlock):
                swaps.append((layer, i, _CalibratedRepMixerBlock(block, alpha)))
            elif isinstance(block, fv.AttentionBlock):
                swaps.append((layer, i, _CalibratedAttentionBlock(block, alpha)))
    originals = []
    for container, key, wrapper in swaps:
        if isinstance(key, int):
            originals.append((container, key, container[key]))
            container[key] = wrapper
        else:
            originals.append((container, key, getattr(container, key)))
            setattr(container, key, wrapper)
    vision_tower.eval()
    try:
        with mx.stream(mx.cpu):
            image_size = int(getattr(vision_tower.vision_model.config, "image_size", 1024))
            _, feats, _ = vision_tower(mx.array(_calibration_batch(seed, image_size)))
            mx.eval(feats)
    finally:
        for container, key, original in reversed(originals):
            if isinstance(key, int):
                container[key] = original
            else:
                setattr(container, key, original)
    return feats


def _calibrate_projector(model, feats) -> None:
    """Scale the mm_projector like a trained one: its hidden layer standardised (mean 0, std 1 per
    unit on the calibration scenes' tower features), its output centred and at the scale of the
    language model's token embeddings, so image tokens neither drown nor vanish next to text."""
    import mlx.core as mx
    from mlx import nn

    proj = model.mm_projector
    layers = list(proj) if isinstance(proj, list) else [proj]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    target = float(np.std(np.array(model.language_model.model.embed_tokens.weight)))
    x = feats.reshape(-1, feats.shape[-1])
    with mx.stream(mx.cpu):
        for m in layers:
            if isinstance(m, nn.Linear) and m is not linears[-1]:
                mean, std = _channel_stats(m(x))
                m.weight = m.weight / std[:, None]
                m.bias = (m.bias - mean) / std
            elif m is linears[-1]:
                y = m(x)
                scale = target / mx.sqrt(y.var(axis=0).mean() + 1e-12)
                m.weight = m.weight * scale
                m.bias = (m.bias - y.mean(axis=0)) * scale
            x = m(x)
        mx.eval([m.parameters() for m in linears])


def _init_weights(model, seed: int, family: str) -> dict:
    """Seeded float32 weights for every array the model holds; returns the flat dict (and sets it)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    params = {k: _generic_init(k, v, seed) for k, v in tree_flatten(model.parameters())}
    if family == "fastvlm":
        _init_fastvit(model, seed, params)
    model.load_weights(list(params.items()), strict=True)
    if family == "fastvlm":
        _calibrate_projector(model, _calibrate_fastvit(model.vision_tower, seed))
        params = dict(tree_flatten(model.parameters()))
    mx.eval(model.parameters())
    return params


def _build_vlm(family: str, cfg: dict):
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    cfg = copy.deepcopy(cfg)
    model_class, _ = get_model_and_args(config=cfg)  # no model_path: never runs a model_file
    cfg.setdefault("text_config", {})
    cfg.setdefault("vision_config", {})
    cfg.setdefault("audio_config", {})
    model_config = model_class.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, model_class, cfg, ["text", "vision"])
    return model_class.Model(model_config)


def _build_text(cfg: dict):
    from finetune_app.core.patches.mlx_lm_classes import model_classes

    model_class, args_class = model_classes(cfg)
    return model_class(args_class.from_dict(copy.deepcopy(cfg)))


def _save_weights(params: dict, dest: Path) -> None:
    import mlx.core as mx

    total = 0
    for v in params.values():
        total += v.nbytes
    mx.save_safetensors(str(dest / "model.safetensors"), params, metadata={"format": "mlx"})
    index = {"metadata": {"total_size": total},
             "weight_map": {k: "model.safetensors" for k in sorted(params)}}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _with_image_size(family: str, image_size: int | None, overrides: dict,
                     pre_over: dict | None) -> tuple[dict, dict | None]:
    """(config overrides, processor overrides) with `image_size` (see `build_tiny_model`) folded
    in; an explicit override of the same keys must agree with it."""
    if image_size is None:
        return overrides, pre_over
    if family != "fastvlm":
        raise ValueError(f"image_size applies to the fastvlm family only, not {family!r} "
                         "(the Qwen-VL processors size images by min/max_pixels)")
    stride = int(_deep_merge(FASTVLM_VISION, overrides.get("vision_config") or {})["patch_size"])
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 \
            or image_size % stride:
        raise ValueError(f"image_size must be a positive multiple of {stride} (the tower's "
                         f"stride), got {image_size!r}")
    sized = {"crop_size": {"height": image_size, "width": image_size},
             "size": {"shortest_edge": image_size}}
    cfg_over = _deep_merge({"vision_config": {"image_size": image_size}}, overrides)
    pre_over = _deep_merge(sized, pre_over or {})
    if cfg_over["vision_config"].get("image_size") != image_size or \
            {k: pre_over[k] for k in sized} != sized:
        raise ValueError(f"image_size={image_size} conflicts with an explicit vision_config "
                         "image_size or preprocessor crop_size/size override")
    return cfg_over, pre_over


def tiny_config(family: str, *, image_size: int | None = None, **overrides) -> dict:
    """The config.json a build would write (overrides deep-merged: nested dicts merge;
    `image_size` as in `build_tiny_model`)."""
    _check_family(family)
    cfg, _, _ = _config(family)
    overrides = {k: v for k, v in overrides.items() if k != "preprocessor_config"}
    return _deep_merge(cfg, _with_image_size(family, image_size, overrides, None)[0])


def build_tiny_model(family: str, dest: str | Path, *, seed: int = 0, overwrite: bool = True,
                     image_size: int | None = None, **overrides) -> Path:
    """Write a complete model folder for `family` at `dest` (atomically) and return its path.

    `overrides` are deep-merged into config.json (e.g. `num_hidden_layers=3`,
    `vision_config={"depth": 1}`); `preprocessor_config={...}` merges into the image processor's
    file. They must keep the config consistent (the library builds the model from it).

    `image_size` (FastVLM only): the square size the processor resizes images to and the tower
    is configured for, a multiple of 64 (the tower's stride). It sets config.json's
    `vision_config.image_size` and the processor's `crop_size` and `size.shortest_edge` together;
    e.g. `build_tiny_model("fastvlm", dest, image_size=256)` gives 4x4 = 16 image features per
    image instead of the default 1024 px's 256, and trains several times faster. An explicit
    override of one of those keys must agree with it (ValueError otherwise)."""
    from finetune_app.core import patches

    _check_family(family)
    if family in VLM_FAMILIES:  # mlx-vlm is slow to import; text builds do not need it
        patches.apply()
    cfg, pre, gen = _config(family)
    pre_over = overrides.pop("preprocessor_config", None)
    cfg_over, pre_over = _with_image_size(family, image_size, overrides, pre_over)
    cfg = _deep_merge(cfg, cfg_over)
    if pre is not None and pre_over:
        pre = _deep_merge(pre, pre_over)

    if family in VLM_FAMILIES:
        model = _build_vlm(family, cfg)
    else:
        model = _build_text(cfg)
    model.eval()
    params = _init_weights(model, seed, family)

    dest = Path(dest)
    with atomic.staged_dir(dest, overwrite=overwrite) as stage:
        os.chmod(stage, 0o755)  # mkdtemp makes it private; a model folder is ordinary data
        _save_weights(params, stage)
        _write_json(stage / "config.json", cfg)
        _write_json(stage / "generation_config.json", gen)
        build_tokenizer(family, stage)
        if family in SPECS:
            files = SPECS[family].config(_token_ids(family), model_vocab_size(family))[1]
            for name, obj in files.items():
                _write_json(stage / name, pre if name == "preprocessor_config.json" else obj)
        elif pre is not None:
            _write_json(stage / "preprocessor_config.json", pre)
            _write_json(stage / "processor_config.json",
                        {"processor_class": pre.get("processor_class", "FastVLMProcessor")})
        if family in ("qwen3_vl", "qwen3_5"):
            video = {k: pre[k] for k in ("patch_size", "temporal_patch_size", "merge_size",
                                         "image_mean", "image_std") if k in pre}
            _write_json(stage / "video_preprocessor_config.json", video)
        manifest = {
            "family": family, "seed": seed, "builder_version": BUILDER_VERSION,
            "overrides": _jsonable(overrides if image_size is None
                                   else {"image_size": image_size, **overrides}),
            "files": sorted(p.name for p in stage.iterdir()),
            "num_parameters": int(sum(v.size for v in params.values())),
        }
        _write_json(stage / MANIFEST, manifest)
    return dest


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("mlx", "mlx-vlm", "mlx-lm", "transformers", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def cache_key(family: str) -> str:
    """Short hash of what a build depends on: builder version, family, library versions."""
    blob = json.dumps({"v": BUILDER_VERSION, "family": family, "libs": _versions()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_complete(path: str | Path) -> bool:
    """True when `path` is a finished build: its manifest and every file it lists exist."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all((path / name).is_file() for name in manifest.get("files", []))


def default_cache_root() -> Path:
    env = os.environ.get("FINETUNE_TINY_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "finetune-app" / "tiny-models"


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached_tiny_model(family: str, root: str | Path | None = None) -> Path:
    """Build `family` (seed 0, no overrides) once into a cache folder and return it.

    The folder is `<root>/<family>-<cache_key>`; root defaults to `$FINETUNE_TINY_CACHE` or
    `~/.cache/finetune-app/tiny-models`. An incomplete folder (killed build) is rebuilt. A file
    lock keeps parallel test workers from building the same folder twice."""
    _check_family(family)
    root = Path(root) if root is not None else default_cache_root()
    dest = root / f"{family}-{cache_key(family)}"
    if is_complete(dest):
        return dest
    with _file_lock(root / f".{dest.name}.lock"):
        if not is_complete(dest):
            build_tiny_model(family, dest, seed=0, overwrite=True)
    return dest
