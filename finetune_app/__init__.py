"""Finetune: LoRA fine-tuning of vision-language models and text LLMs with MLX."""

__version__ = "0.1.0"
