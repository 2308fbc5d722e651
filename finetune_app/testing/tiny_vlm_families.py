"""Tiny configs of the vision-language families beyond Qwen-VL and FastVLM (see tiny_models.py).

Each `Spec` says what a tiny folder of the family holds: the real tokenizer's special tokens and a
chat template close to the real one, config.json (built by mlx-vlm's own config classes into its
own `Model`), and the processor files the family's processor (mlx-vlm's or transformers') reads,
with the real image processor class at a small image size (28-32 px, a handful of image tokens).

`tiny_models` merges these into its tables; this module imports nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Spec:
    specials: list[str]  # special tokens, in the real tokenizer's order
    bos: str | None
    eos: str
    pad: str
    template: str
    # (token ids, model vocab size) -> (config.json, {file name: json}, generation_config extras)
    config: Callable[[dict, int], tuple[dict, dict, dict]]
    plain: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)  # tokenizer attributes (image_token=...)


def _llama_text(vocab: int, ids: dict, bos: str, eos: str, **extra) -> dict:
    return {
        "model_type": "llama", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5, "vocab_size": vocab,
        "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "bos_token_id": ids[bos], "eos_token_id": ids[eos], **extra,
    }


def _clip_vision(image_size: int, **extra) -> dict:
    return {
        "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size,
        "patch_size": 14, "projection_dim": 32, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
        **extra,
    }


def _clip_processor(size: int, **extra) -> dict:
    return {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": size}, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True, "resample": 3, **extra,
    }


# ---- LLaVA 1.5 (llava-hf/llava-1.5-7b-hf: Vicuna tokenizer, CLIP ViT-L/14-336) ---------------

_LLAMA2_SPECIALS = ["<unk>", "<s>", "</s>"]

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _llava(ids: dict, vocab: int):
    cfg = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": _llama_text(vocab, ids, "<s>", "</s>"),
        "vision_config": _clip_vision(28),
        "image_token_index": ids["<image>"], "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2, "vocab_size": vocab, "projector_hidden_act": "gelu",
        "pad_token_id": ids["<pad>"], "torch_dtype": "float32",
    }
    files = {
        "preprocessor_config.json": _clip_processor(28),
        "processor_config.json": {"processor_class": "LlavaProcessor", "patch_size": 14,
                                  "vision_feature_select_strategy": "default",
                                  "image_token": "<image>", "num_additional_image_tokens": 1},
    }
    return cfg, files, {"bos_token_id": ids["<s>"]}


# ---- Gemma 3 (google/gemma-3-4b-it: SigLIP tower, pooled to mm_tokens_per_image) -------------

_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]

GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

SIGLIP_HALF = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _gemma3(ids: dict, vocab: int):
    text = {
        "model_type": "gemma3_text", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS,
        "query_pre_attn_scalar": HIDDEN // HEADS, "rms_norm_eps": 1e-6, "vocab_size": vocab,
        "sliding_window": 512, "sliding_window_pattern": 2, "mm_tokens_per_image": 4,
        "rope_global_base_freq": 1000000.0, "rope_local_base_freq": 10000.0,
        "max_position_embeddings": 4096,
    }
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14,
              "image_size": 56, "layer_norm_eps": 1e-6}
    cfg = {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": text, "vision_config": vision, "vocab_size": vocab,
        "image_token_index": ids["<image_soft_token>"], "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"], "mm_tokens_per_image": 4,
        "pad_token_id": ids["<pad>"], "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "torch_dtype": "float32",
    }
    pre = {"image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
           "do_resize": True, "size": {"height": 56, "width": 56}, "resample": 2,
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, **SIGLIP_HALF,
           "do_convert_rgb": True, "do_pan_and_scan": False, "image_seq_length": 4}
    files = {"preprocessor_config.json": pre,
             "processor_config.json": {"processor_class": "Gemma3Processor",
                                       "image_seq_length": 4}}
    return cfg, files, {"bos_token_id": ids["<bos>"]}


# ---- Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3) and SmolVLM (HuggingFaceTB/SmolVLM-Instruct):
# SigLIP tower, pixel shuffle by scale_factor 2; no image splitting at this size -------------------

_IDEFICS_IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>",
                         "<global-img>"]


def _idefics_template(start: str) -> str:
    return (
        start + "{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
        "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


def _idefics(model_type: str, processor: str, image_processor: str, bos: str):
    def config(ids: dict, vocab: int):
        text = _llama_text(vocab, ids, bos, "<end_of_utterance>")
        vision = {"model_type": "idefics3_vision" if model_type == "idefics3" else "smolvlm_vision",
                  "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "patch_size": 14, "image_size": 56}
        cfg = {
            "architectures": [f"{processor[:-len('Processor')]}ForConditionalGeneration"],
            "model_type": model_type, "text_config": text, "vision_config": vision,
            "scale_factor": 2, "image_token_id": ids["<image>"], "vocab_size": vocab,
            "eos_token_id": ids["<end_of_utterance>"], "torch_dtype": "float32",
        }
        pre = {"image_processor_type": image_processor, "processor_class": processor,
               "do_resize": True, "size": {"longest_edge": 56}, "resample": 1,
               "do_image_splitting": False, "max_image_size": {"longest_edge": 56},
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, **SIGLIP_HALF,
               "do_pad": True, "do_convert_rgb": True}
        files = {"preprocessor_config.json": pre,
                 "processor_config.json": {"processor_class": processor, "image_seq_len": 4}}
        return cfg, files, {"bos_token_id": ids[bos]}
    return config


# ---- Pixtral (mistral-community/pixtral-12b) and Mistral 3 (Mistral-Small-3.1-24B-Instruct):
# Pixtral tower with 2-D RoPE; [IMG] per patch, [IMG_BREAK] per row, [IMG_END] ------------------

_MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]",
                     "[IMG_END]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]


def _mistral_template(system: bool) -> str:
    sys_part = ("{%- if messages[0]['role'] == 'system' %}{%- set loop_messages = messages[1:] %}"
                "{{- '[SYSTEM_PROMPT]' + (messages[0]['content'] if messages[0]['content'] is string"
                " else messages[0]['content'][0]['text']) + '[/SYSTEM_PROMPT]' }}"
                "{%- else %}{%- set loop_messages = messages %}{%- endif %}") if system else \
        "{%- set loop_messages = messages %}"
    return (
        "{{- bos_token }}" + sys_part +
        "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}{{- '[INST]' }}"
        "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
        "{%- for chunk in message['content'] %}{%- if chunk['type'] == 'text' %}{{- chunk['text'] }}"
        "{%- elif chunk['type'] == 'image' %}{{- '[IMG]' }}{%- endif %}{%- endfor %}{%- endif %}"
        "{{- '[/INST]' }}{%- elif message['role'] == 'assistant' %}"
        "{%- if message['content'] is string %}{{- message['content'] }}"
        "{%- else %}{{- message['content'][0]['text'] }}{%- endif %}{{- eos_token }}"
        "{%- endif %}{%- endfor %}"
    )


def _mistral_text(vocab: int, ids: dict) -> dict:
    return {
        "model_type": "mistral", "hidden_size": HIDDEN, "head_dim": HIDDEN // HEADS,
        "num_hidden_layers": LAYERS, "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5,
        "vocab_size": vocab, "rope_theta": 1000000000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }


def _pixtral_vision(patch: int, image_size: int) -> dict:
    return {"model_type": "pixtral", "hidden_size": 32, "head_dim": 16, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size,
            "patch_size": patch, "rope_theta": 10000.0, "num_channels": 3}


def _pixtral_files(processor: str, patch: int, image_size: int, merge: int) -> dict:
    pre = {"image_processor_type": "PixtralImageProcessor", "processor_class": processor,
           "do_resize": True, "size": {"longest_edge": image_size},
           "patch_size": {"height": patch, "width": patch}, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
           "image_std": CLIP_STD, "do_convert_rgb": True, "resample": 3}
    return {"preprocessor_config.json": pre,
            "processor_config.json": {"processor_class": processor, "patch_size": patch,
                                      "spatial_merge_size": merge, "image_token": "[IMG]",
                                      "image_break_token": "[IMG_BREAK]",
                                      "image_end_token": "[IMG_END]"}}


def _pixtral(ids: dict, vocab: int):
    cfg = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "pixtral",
        "text_config": _mistral_text(vocab, ids), "vision_config": _pixtral_vision(16, 32),
        "image_token_index": ids["[IMG]"], "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full", "projector_hidden_act": "gelu",
        "vocab_size": vocab, "eos_token_id": ids["</s>"], "torch_dtype": "float32",
    }
    return cfg, _pixtral_files("PixtralProcessor", 16, 32, 1), {"bos_token_id": ids["<s>"]}


def _mistral3(ids: dict, vocab: int):
    cfg = {
        "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
        "text_config": _mistral_text(vocab, ids), "vision_config": _pixtral_vision(14, 56),
        "image_token_index": ids["[IMG]"], "spatial_merge_size": 2,
        "multimodal_projector_bias": False, "projector_hidden_act": "gelu",
        "vision_feature_layer": -1, "vocab_size": vocab, "eos_token_id": ids["</s>"],
        "torch_dtype": "float32",
    }
    return cfg, _pixtral_files("Mistral3Processor", 14, 56, 2), {"bos_token_id": ids["<s>"]}


# ---- Mllama (meta-llama/Llama-3.2-11B-Vision-Instruct): tiled tower, cross-attention layers ---

_LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|python_tag|>",
                    "<|image|>"]

MLLAMA_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}{%- else %}"
    "{%- for content in message['content'] %}{%- if content['type'] == 'image' %}"
    "{{- '<|image|>' }}{%- elif content['type'] == 'text' %}{{- content['text'] | trim }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)


def _mllama(ids: dict, vocab: int):
    text = _llama_text(vocab, ids, "<|begin_of_text|>", "<|eot_id|>", model_type="mllama",
                       num_hidden_layers=3, cross_attention_layers=[1], rope_theta=500000.0)
    vision = {"model_type": "mllama", "image_size": 28, "patch_size": 14, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "num_attention_heads": 2, "max_num_tiles": 4, "intermediate_layers_indices": [0],
              "vision_output_dim": 64, "norm_eps": 1e-5}
    cfg = {
        "architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama",
        "text_config": text, "vision_config": vision, "image_token_index": ids["<|image|>"],
        "vocab_size": vocab, "eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]],
        "torch_dtype": "float32",
    }
    pre = {"image_processor_type": "MllamaImageProcessor", "processor_class": "MllamaProcessor",
           "do_resize": True, "size": {"height": 28, "width": 28}, "max_image_tiles": 4,
           "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_convert_rgb": True, "do_pad": True}
    files = {"preprocessor_config.json": pre,
             "processor_config.json": {"processor_class": "MllamaProcessor"}}
    return cfg, files, {"bos_token_id": ids["<|begin_of_text|>"]}


# ---- LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf: anyres tiles, image_newline) --------------


def _llava_next(ids: dict, vocab: int):
    text = _mistral_text(vocab, ids)
    cfg = {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "text_config": text, "vision_config": _clip_vision(28),
        "image_token_index": ids["<image>"], "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2, "image_grid_pinpoints": [[28, 56], [56, 28], [56, 56]],
        "projector_hidden_act": "gelu", "vocab_size": vocab, "eos_token_id": ids["</s>"],
        "torch_dtype": "float32",
    }
    pre = _clip_processor(28, image_processor_type="LlavaNextImageProcessor",
                          image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]], do_pad=True)
    files = {"preprocessor_config.json": pre,
             "processor_config.json": {"processor_class": "LlavaNextProcessor", "patch_size": 14,
                                       "vision_feature_select_strategy": "default",
                                       "image_token": "<image>",
                                       "num_additional_image_tokens": 1}}
    return cfg, files, {"bos_token_id": ids["<s>"]}


LLAVA_NEXT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' }}{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{- '<image>\n' }}{%- endfor %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{- content['text'] }}{%- endfor %}{%- endif %}{{- ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{{- message['content'][0]['text'] }}{%- endif %}{{- eos_token }}"
    "{%- endif %}{%- endfor %}"
)


# ---- DeepSeek-VL2 (deepseek-ai/deepseek-vl2-tiny: SigLIP tower, global + local tiles,
# MoE language model with plain attention) ------------------------------------------------------

_DEEPSEEK_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>",
                      "<|User|>", "<|Assistant|>"]

DEEPSEEK_VL2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|User|>:"
    "{% elif message['role'] == 'assistant' %}<|Assistant|>{% endif %} "
    "{{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def _deepseek_vl_v2(ids: dict, vocab: int):
    text = {
        "model_type": "deepseek_v2", "vocab_size": vocab, "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "moe_intermediate_size": 32, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "n_shared_experts": 1,
        "n_routed_experts": 4, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "kv_lora_rank": 16, "q_lora_rank": None, "qk_rope_head_dim": 0,
        "v_head_dim": 0, "qk_nope_head_dim": 0, "topk_method": "greedy", "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "bos_token_id": ids["<｜begin▁of▁sentence｜>"], "eos_token_id": ids["<｜end▁of▁sentence｜>"],
    }
    cfg = {
        "architectures": ["DeepseekVLV2ForCausalLM"], "model_type": "deepseek_vl_v2",
        "language_config": text,
        "vision_config": {"model_type": "vision", "layers": 2, "width": 32,
                          "intermediate_size": 64, "num_attention_heads": 2, "image_size": 32,
                          "patch_size": 16, "mlp_ratio": 2.0, "layer_norm_eps": 1e-6},
        "projector_config": {"projector_type": "downsample_mlp_gelu", "input_dim": 32,
                             "n_embed": HIDDEN, "depth": 2, "mlp_ratio": 1,
                             "downsample_ratio": 2},
        "image_token_index": ids["<image>"], "pad_id": ids["<｜▁pad▁｜>"], "tile_tag": "2D",
        "global_view_pos": "head", "vocab_size": vocab,
        "eos_token_id": ids["<｜end▁of▁sentence｜>"], "torch_dtype": "float32",
    }
    proc = {"processor_class": "DeepseekVLV2Processor", "candidate_resolutions": [[32, 32]],
            "patch_size": 16, "downsample_ratio": 2, **SIGLIP_HALF, "normalize": True,
            "image_token": "<image>", "pad_token": "<｜▁pad▁｜>", "add_special_token": False,
            "sft_format": "deepseek", "mask_prompt": True, "ignore_id": -100}
    return cfg, {"processor_config.json": proc}, {"bos_token_id": ids["<｜begin▁of▁sentence｜>"]}


# ---- PaliGemma (google/paligemma-3b-mix-224: SigLIP tower, Gemma, prefix-LM; no chat template,
# mlx-vlm sends the prompt alone) ---------------------------------------------------------------

PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% if message['role'] == 'user' %}{{ '\n' }}"
    "{% else %}{{ eos_token }}{% endif %}{% endfor %}"
)


def _paligemma(ids: dict, vocab: int):
    text = {"model_type": "gemma", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
            "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS, "vocab_size": vocab,
            "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 4096}
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14,
              "image_size": 28, "projection_dim": HIDDEN, "layer_norm_eps": 1e-6}
    cfg = {
        "architectures": ["PaliGemmaForConditionalGeneration"], "model_type": "paligemma",
        "text_config": text, "vision_config": vision, "image_token_index": ids["<image>"],
        "hidden_size": HIDDEN, "projection_dim": HIDDEN, "vocab_size": vocab,
        "pad_token_id": ids["<pad>"], "eos_token_id": ids["<eos>"], "torch_dtype": "float32",
    }
    pre = {"image_processor_type": "SiglipImageProcessor", "processor_class": "PaliGemmaProcessor",
           "do_resize": True, "size": {"height": 28, "width": 28}, "resample": 3,
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, **SIGLIP_HALF,
           "do_convert_rgb": True, "image_seq_length": 4}
    files = {"preprocessor_config.json": pre,
             "processor_config.json": {"processor_class": "PaliGemmaProcessor",
                                       "image_seq_length": 4}}
    return cfg, files, {"bos_token_id": ids["<bos>"]}


# ---- Phi-3-Vision (microsoft/Phi-3-vision-128k-instruct: Phi-3 text model, CLIP ViT-L/14-336 tower
# in 336 px HD tiles, <|image_N|> tags expanded into negative ids). mlx-vlm hard-codes the tower's
# size; the phi3v_vision_config patch reads it from vision_config, so the tiny tower keeps the 336 px
# tiles and 14 px patches (the forward hard-codes them) at width 32. num_crops 1: a global view and
# one tile, 313 image positions. -------------------------------------------------------------------

_PHI3_SPECIALS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>",
                  "<|user|>"]

PHI3_V_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% set n = namespace(image=0) %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{% set n.image = n.image + 1 %}"
    "{{ '<|image_' + n.image|string + '|>\n' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}{% endif %}"
)


def _phi3_v(ids: dict, vocab: int):
    cfg = {
        "architectures": ["Phi3VForCausalLM"], "model_type": "phi3_v", "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS, "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "rms_norm_eps": 1e-5,
        "vocab_size": vocab, "rope_theta": 10000.0,
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
        "bos_token_id": ids["<s>"], "eos_token_id": ids["<|end|>"],
        "pad_token_id": ids["<|endoftext|>"], "torch_dtype": "float32",
        "img_processor": {"image_dim_out": 32, "model_name": "openai/clip-vit-large-patch14-336",
                          "name": "clip_vision_model", "num_img_tokens": 144},
        "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb",
                       "projection_cls": "mlp", "use_hd_transform": True,
                       "with_learnable_separator": True},
        # read by the phi3v_vision_config patch (mlx-vlm 0.7.10 alone builds the 303M tower)
        "vision_config": {"model_type": "phi3_v", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 336,
                          "patch_size": 14},
    }
    pre = {"image_processor_type": "Phi3VImageProcessor", "processor_class": "Phi3VProcessor",
           "num_crops": 1, "num_img_tokens": 144, "image_mean": CLIP_MEAN, "image_std": CLIP_STD}
    files = {"preprocessor_config.json": pre,
             "processor_config.json": {"processor_class": "Phi3VProcessor"}}
    return cfg, files, {"bos_token_id": ids["<s>"]}


SPECS: dict[str, Spec] = {
    "llava": Spec(_LLAMA2_SPECIALS + ["<image>", "<pad>"], "<s>", "</s>", "<pad>",
                  LLAVA_TEMPLATE, _llava),
    "gemma3": Spec(_GEMMA_SPECIALS + ["<start_of_image>", "<end_of_image>", "<image_soft_token>"],
                   "<bos>", "<end_of_turn>", "<pad>", GEMMA3_TEMPLATE, _gemma3,
                   named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                          "eoi_token": "<end_of_image>"}),
    "idefics3": Spec(["<|begin_of_text|>", "<|end_of_text|>"] + _IDEFICS_IMAGE_TOKENS,
                     "<|begin_of_text|>", "<end_of_utterance>", "<|end_of_text|>",
                     _idefics_template("<|begin_of_text|>"),
                     _idefics("idefics3", "Idefics3Processor", "Idefics3ImageProcessor",
                              "<|begin_of_text|>")),
    "smolvlm": Spec(["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _IDEFICS_IMAGE_TOKENS,
                    "<|im_start|>", "<end_of_utterance>", "<|im_end|>",
                    _idefics_template("<|im_start|>"),
                    _idefics("smolvlm", "SmolVLMProcessor", "SmolVLMImageProcessor",
                             "<|im_start|>")),
    "pixtral": Spec(_MISTRAL_SPECIALS, "<s>", "</s>", "</s>", _mistral_template(False), _pixtral),
    "mistral3": Spec(_MISTRAL_SPECIALS, "<s>", "</s>", "</s>", _mistral_template(True), _mistral3),
    "mllama": Spec(_LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>",
                   "<|finetune_right_pad_id|>", MLLAMA_TEMPLATE, _mllama),
    "llava_next": Spec(_LLAMA2_SPECIALS + ["<image>", "[INST]", "[/INST]"], "<s>", "</s>", "<unk>",
                       LLAVA_NEXT_TEMPLATE, _llava_next),
    "deepseek_vl_v2": Spec(_DEEPSEEK_SPECIALS, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                           "<｜▁pad▁｜>", DEEPSEEK_VL2_TEMPLATE, _deepseek_vl_v2),
    "paligemma": Spec(_GEMMA_SPECIALS[:5] + ["<image>"], "<bos>", "<eos>", "<pad>",
                      PALIGEMMA_TEMPLATE, _paligemma, named={"image_token": "<image>"}),
    "phi3_v": Spec(_PHI3_SPECIALS, "<s>", "<|end|>", "<|endoftext|>", PHI3_V_TEMPLATE, _phi3_v),
}
