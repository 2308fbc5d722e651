"""Single-answer rows: Alpaca (instruction / input / output) and question / answer columns.

Alpaca's optional `history` ([[question, answer], ...]) and `system` become earlier turns; an
optional `images`/`image` column makes either a vision row (`<image>` markers place them).
"""

from __future__ import annotations

from pathlib import Path

from finetune_app.core.data.formats.common import (
    RowError,
    SourceCtx,
    attach_images,
    check_answer,
    first_key,
    found,
    image_refs,
    row_image_key,
    sample_meta,
    take_markers,
    text_of,
)
from finetune_app.core.data.sample import Sample, Turn
from finetune_app.core.errors import DataError

IMAGE_KEYS = ("images", "image", "file_name", "image_path")
QUESTION_KEYS = ("question", "query", "prompt", "input", "instruction")
ANSWER_KEYS = ("answer", "response", "completion", "output", "answers", "chosen")


def _finish(turns: list[Turn], row: dict, ctx: SourceCtx, line, answer_key):
    image_key = row_image_key(row, IMAGE_KEYS)
    markers = sum(t.n_images for t in turns)
    images = image_refs(row.get(image_key), ctx, image_key) if image_key else []
    turns = attach_images(turns, markers, len(images), image_key or "image")
    check_answer(turns, answer_key)
    return (Sample(tuple(turns), tuple(images), ctx.file, line, ctx.split,
                   sample_meta(image_key if images else None)), [])


def _user(text: str) -> Turn:
    text, k = take_markers(text)
    return Turn("user", text, k)


def _system(row: dict) -> list[Turn]:
    text = text_of(row.get("system"), "system")
    return [Turn("system", text)] if text.strip() else []


def configure_alpaca(keys: set[str], *, file: str):
    missing = [k for k in ("instruction", "output") if k not in keys]
    if missing:
        raise DataError(f"{Path(file).name} has no '{missing[0]}' column (found: {found(keys)}).",
                        "Alpaca rows need 'instruction', optional 'input', and 'output'. Rename "
                        "the columns or pass the right --format.", file=file, field=missing[0])

    def parse(row: dict, ctx: SourceCtx, line: int | None):
        instruction = text_of(row.get("instruction"), "instruction")
        extra = text_of(row.get("input"), "input")
        if not instruction.strip() and not extra.strip():
            raise RowError("instruction", "the instruction (and input) is empty.")
        output = row.get("output")
        if output is None or not text_of(output, "output").strip():
            raise RowError("output", "the answer ('output') is empty or missing.")
        prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
        turns = _system(row)
        history = row.get("history") or []
        if not isinstance(history, list):
            raise RowError("history", "'history' must be a list of [question, answer] pairs.")
        for n, pair in enumerate(history, 1):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RowError("history", f"history entry {n} is not a [question, answer] pair.")
            turns += [_user(text_of(pair[0], "history")),
                      Turn("assistant", text_of(pair[1], "history"))]
        turns += [_user(prompt), Turn("assistant", text_of(output, "output"))]
        return _finish(turns, row, ctx, line, "output")

    return parse


def configure_qa(keys: set[str], *, file: str):
    question_key = first_key(keys, QUESTION_KEYS)
    answer_key = first_key(keys, ANSWER_KEYS)
    if question_key is None or answer_key is None:
        what = "question" if question_key is None else "answer"
        raise DataError(f"{Path(file).name} has no '{what}' column (found: {found(keys)}).",
                        "Question/answer rows need 'question' and 'answer' (or prompt/completion). "
                        "Rename the columns or pass a template such as "
                        "{\"prompt\": \"{q}\", \"answer\": \"{a}\"}.", file=file, field=what)

    def parse(row: dict, ctx: SourceCtx, line: int | None):
        question = text_of(row.get(question_key), question_key)
        answer = row.get(answer_key)
        if isinstance(answer, list):  # VQA-style list of answers: the first
            answer = next((a for a in answer if isinstance(a, str) and a.strip()), None)
        if answer is None or not text_of(answer, answer_key).strip():
            raise RowError(answer_key, f"the answer ('{answer_key}') is empty or missing.")
        turns = _system(row) + [_user(question), Turn("assistant", text_of(answer, answer_key))]
        return _finish(turns, row, ctx, line, answer_key)

    return parse
