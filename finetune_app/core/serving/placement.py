"""Which turn an image belongs to, shared by every layout.

A row whose messages place images explicitly (content lists with image parts) keeps that order.
Any other row (captions, question/answer, ShareGPT or string messages with a top-level `images`)
has its images where the runtimes put images given beside a prompt: mlx-vlm's
`apply_chat_template(..., num_images=N)` gives them to the *last* user message (prompt_utils.py,
`_allocate_media_counts`), and so do its chat loop and Apple's FastVLM app (the last message).
"""

from __future__ import annotations

from finetune_app.core.data.sample import Sample


def last_answer(sample: Sample) -> int:
    return max(i for i, t in enumerate(sample.turns) if t.role == "assistant")


def turn_images(sample: Sample) -> list[int]:
    """Images per turn as the runtime will see them."""
    if sample.explicit_images:
        return [t.n_images for t in sample.turns]
    counts = [0] * len(sample.turns)
    n = len(sample.images)
    if n:
        end = last_answer(sample) if any(t.role == "assistant" for t in sample.turns) else len(sample.turns)
        users = [i for i, t in enumerate(sample.turns[:end]) if t.role == "user"]
        counts[users[-1] if users else 0] = n
    return counts


def span(sample: Sample, upto: int | None) -> int:
    """Turns rendered: `upto`, or (None) through the last answer; turns after it are never trained
    on, and rendering them would move the images to a later user turn."""
    if upto is not None:
        return upto
    return last_answer(sample) + 1 if any(t.role == "assistant" for t in sample.turns) else len(sample.turns)
