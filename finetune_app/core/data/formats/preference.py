"""Preference rows: a prompt with a chosen and a rejected answer (DPO, IPO, ORPO).

Read as TRL and mlx-vlm write them:
- `{"prompt", "chosen", "rejected"}`: the prompt a string or a message list, the answers strings
  or one assistant message each (`[{"role": "assistant", "content": ...}]`);
- `{"chosen", "rejected"}` as whole conversations (TRL's implicit prompt): every message but the
  last must be the same in both, and is the prompt;
- ShareGPT / chat conversations with a final pair: `{"conversations" | "messages": [...],
  "chosen": ..., "rejected": ...}` (LLaMA-Factory's ranking rows: `{"from": "gpt", "value"}`).
Images come from the row's `images` / `image` (or the prompt's content parts) and belong to both
answers. The prompt is parsed by the chat readers (chat.py), so images, roles and markers follow
the same rules as SFT rows. The `Sample` ends with the chosen answer and carries the rejected one
(`Sample.rejected`): an SFT run on these rows learns the chosen answers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetune_app.core.data.formats import chat
from finetune_app.core.data.formats.common import RowError, SourceCtx, found, json_kind, text_of
from finetune_app.core.data.sample import Turn
from finetune_app.core.errors import DataError

PROMPT_KEYS = ("prompt", "conversations", "conversation", "messages")
ANSWER_ROLES = ("assistant", "gpt", "model", "bot", "chatgpt")


def _messages(value, key: str):
    """A message list (a JSON string holding one too), a single message, or None for plain text."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return chat._as_list(value, key)
        except RowError:
            return None
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    return None


def _role(msg: dict):
    return msg.get("role", msg.get("from"))


def _content(msg, key: str, n: int):
    if type(msg) is not dict:
        raise RowError(key, f"message {n} of '{key}' is {json_kind(msg)}, not an object with 'role' and 'content'.")
    return msg["content"] if "content" in msg else msg.get("value")


def _answer_text(value, key: str) -> str:
    """The answer of `chosen` / `rejected`: a string, or exactly one assistant message."""
    msgs = _messages(value, key)
    if msgs is None:
        text = text_of(value, key, allow_empty=False)
    else:
        if len(msgs) != 1 or type(msgs[0]) is not dict or str(_role(msgs[0])).lower() not in ANSWER_ROLES:
            raise RowError(key, f"'{key}' must be the answer only: a string or one assistant message "
                           "(the prompt goes in 'prompt'), or write both answers as whole conversations "
                           "without a 'prompt'.")
        content = _content(msgs[0], key, 1)
        if isinstance(content, list):  # content parts: text only
            if any(type(p) is dict and p.get("type") not in (None, "text") for p in content):
                raise RowError(key, f"'{key}' may hold text only; images belong to the prompt.")
            content = "\n".join(p.get("text", "") if type(p) is dict else str(p) for p in content)
        text = text_of(content, key, allow_empty=False)
    if not text.strip():
        raise RowError(key, f"the '{key}' answer is empty.")
    return text


def configure(keys: set[str], *, file: str):
    missing = [k for k in ("chosen", "rejected") if k not in keys]
    if missing:
        raise DataError(f"{Path(file).name} has no '{missing[0]}' field (found: {found(keys)}).",
                        "Preference rows need 'prompt', 'chosen' and 'rejected' (or 'chosen' and 'rejected' "
                        "as whole conversations). Pass the right --format for this file.",
                        file=file, field=missing[0])
    as_messages = chat.configure_messages({"messages"}, file=file)
    as_sharegpt = chat.configure_sharegpt({"conversations"}, file=file)

    def parse(row: dict, ctx: SourceCtx, line: int | None):
        prompt_key = next((k for k in PROMPT_KEYS if row.get(k) is not None), None)
        if prompt_key is None:  # whole conversations: the shared messages are the prompt
            chosen, rejected = (_messages(row.get(k), k) for k in ("chosen", "rejected"))
            if chosen is None or rejected is None:
                raise RowError("prompt", "the row has no 'prompt': give one, or write 'chosen' and 'rejected' "
                               "as whole conversations (message lists) that share the prompt.")
            if not chosen or not rejected:
                raise RowError("chosen" if not chosen else "rejected", "the conversation is empty.")
            if chosen[:-1] != rejected[:-1]:
                at = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
                raise RowError("rejected", f"'chosen' and 'rejected' do not share the prompt: they differ at message "
                               f"{at + 1} (only the last message, the answer, may differ). Make the earlier messages of "
                               "both the same, or put the prompt in 'prompt' and only the answers in 'chosen' and 'rejected'.")
            prompt, chosen_text, rejected_text = chosen[:-1], _answer_text(chosen[-1:], "chosen"), _answer_text(rejected[-1:], "rejected")
            prompt_key = "chosen"
        else:
            value = row[prompt_key]
            prompt = _messages(value, prompt_key)
            if prompt is None:
                prompt = [{"role": "user", "content": text_of(value, prompt_key, allow_empty=False)}]
            chosen_text, rejected_text = _answer_text(row.get("chosen"), "chosen"), _answer_text(row.get("rejected"), "rejected")
        if chosen_text.strip() == rejected_text.strip():
            raise RowError("rejected", "'chosen' and 'rejected' are the same answer; a preference pair must differ. "
                           "Write a worse answer in 'rejected' (or remove the row).")
        sharegpt = any(type(m) is dict and "from" in m for m in prompt)
        answer = {"from": "gpt", "value": chosen_text} if sharegpt else {"role": "assistant", "content": chosen_text}
        inner = {k: v for k, v in row.items() if k in ("images", "image", "system")}
        inner["conversations" if sharegpt else "messages"] = list(prompt) + [answer]
        try:
            sample, warnings = (as_sharegpt if sharegpt else as_messages)(inner, ctx, line)
        except RowError as exc:  # name the row's own field
            raise RowError(prompt_key if exc.field in ("messages", "conversations") else exc.field, exc.message) from None
        if sample.turns[-1].role != "assistant" or sample.turns[-2:-1] and sample.turns[-2].role == "assistant":
            raise RowError(prompt_key, "the prompt must end with a user message (the answers follow it).")
        return dataclasses.replace(sample, rejected=Turn("assistant", rejected_text)), warnings

    return parse
