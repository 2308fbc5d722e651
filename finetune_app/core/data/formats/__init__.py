"""Row formats: which keys a row has -> which reader turns it into a `Sample`.

A format is about the *rows*; where the rows live (JSONL, JSON array, CSV, folder layouts, HF
datasets) is the container, detected from the path (see `finetune_app.core.data.layout`).
"""

from __future__ import annotations

from finetune_app.core.data.formats import caption, chat, instruct, preference, template
from finetune_app.core.data.formats.common import RowError, SourceCtx, first_key
from finetune_app.core.errors import DataError

# name -> (what it is, for messages and --help)
FORMATS = {
    "caption": "image + caption rows (captions.csv, HF image folders, {\"image\", \"caption\"})",
    "messages": "OpenAI-style 'messages' with optional 'images' (mlx-vlm, mlx-lm chat)",
    "sharegpt": "ShareGPT 'conversations' of from/value turns, <image> markers",
    "llava": "LLaVA JSON: [{\"id\", \"image\", \"conversations\"}] (read like ShareGPT)",
    "alpaca": "Alpaca instruction / input / output",
    "qa": "question / answer (or prompt / completion) columns, optional image",
    "preference": "prompt + chosen / rejected answers (TRL, mlx-vlm; ShareGPT with a final pair), for DPO / ORPO",
    "template": "your own column mapping (template={\"prompt\": ..., \"answer\": ...})",
}
ALIASES = {
    "captions-csv": "caption", "csv": "caption", "imagefolder": "caption", "captions": "caption",
    "openai": "messages", "chat": "messages", "mlx-vlm": "messages", "mlx": "messages",
    "conversations": "sharegpt", "dpo": "preference", "orpo": "preference", "pairs": "preference", "vqa": "qa", "prompt-completion": "qa", "completion": "qa",
}


def canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise DataError(f"unknown dataset format '{name}'.",
                        f"Use one of: {', '.join(FORMATS)}.", field="format")
    return key


def detect(keys: set[str]) -> str | None:
    """Best guess from the keys of the first rows; None when nothing fits."""
    if "chosen" in keys and "rejected" in keys:  # before chat: ShareGPT rows with a final pair
        return "preference"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys or "conversation" in keys:
        return "llava" if "image" in keys and "id" in keys else "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if first_key(keys, instruct.QUESTION_KEYS) and first_key(keys, instruct.ANSWER_KEYS):
        return "qa"
    if first_key(keys, caption.IMAGE_KEYS) and (first_key(keys, caption.TEXT_KEYS)
                                                or len(keys) == 2):
        return "caption"
    return None


def configure(name: str, keys: set[str], *, file: str, template_spec: dict | None = None):
    """Return `parse(row, ctx, line) -> (Sample, [(field, warning)])` for format `name`."""
    if name == "caption":
        return caption.configure(keys, file=file)
    if name == "messages":
        return chat.configure_messages(keys, file=file)
    if name in ("sharegpt", "llava"):
        return chat.configure_sharegpt(keys, file=file)
    if name == "alpaca":
        return instruct.configure_alpaca(keys, file=file)
    if name == "qa":
        return instruct.configure_qa(keys, file=file)
    if name == "preference":
        return preference.configure(keys, file=file)
    if name == "template":
        return template.configure(keys, file=file, template=template_spec)
    raise DataError(f"unknown dataset format '{name}'.", f"Use one of: {', '.join(FORMATS)}.")


__all__ = ["FORMATS", "ALIASES", "RowError", "SourceCtx", "canonical", "configure", "detect"]
