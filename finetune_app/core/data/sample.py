"""The one internal record every dataset format is read into, and everything else consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: a file (absolute, resolved) or encoded bytes (HF datasets)."""

    path: Path | None = None
    data: bytes | None = None
    label: str = ""  # what the user wrote in the dataset, for messages

    def describe(self) -> str:
        return self.label or (str(self.path) if self.path else "<embedded image>")


@dataclass(frozen=True)
class Turn:
    """One message. Where its images go when rendered is the serve target's rule
    (core/serving), unless the dataset placed them explicitly: then `parts` holds the turn's
    content in the dataset's order, text as str and each image as None."""

    role: str  # one of ROLES
    text: str
    n_images: int = 0
    parts: tuple = ()  # explicit placement (content list with image parts); empty otherwise


@dataclass(frozen=True)
class Sample:
    """A training example: images (in order of appearance) and the conversation turns.

    The prompt/answer split for the completion-only loss is explicit: assistant turns are
    supervised, everything else is context.
    """

    turns: tuple[Turn, ...]
    images: tuple[ImageRef, ...] = ()
    source: str = ""  # dataset file the row came from
    line: int | None = None  # 1-based line (JSONL/CSV) or row index (others)
    split: str | None = None  # "train" / "valid" when the dataset says so
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    # preference rows: the rejected alternative of the final answer (`turns` ends with the chosen
    # one, so SFT on a preference dataset learns the chosen answers)
    rejected: Turn | None = None

    def with_rejected_answer(self) -> "Sample":
        """The same conversation ending with the rejected answer instead of the chosen one."""
        last = max(i for i, t in enumerate(self.turns) if t.role == "assistant")
        return dataclasses.replace(self, turns=self.turns[:last] + (self.rejected,), rejected=None)

    @property
    def explicit_images(self) -> bool:
        """The dataset placed the images itself (content lists with image parts)."""
        return any(t.parts for t in self.turns)

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    @property
    def prompt_turns(self) -> tuple[Turn, ...]:
        """Turns before the last assistant answer (the context of the final answer)."""
        last = max(i for i, t in enumerate(self.turns) if t.role == "assistant")
        return self.turns[:last]

    @property
    def answer(self) -> str:
        """The last assistant answer (the caption, for captioning sets)."""
        return next(t.text for t in reversed(self.turns) if t.role == "assistant")

    @property
    def prompt(self) -> str:
        """The last user text before the final answer."""
        users = [t.text for t in self.prompt_turns if t.role == "user"]
        return users[-1] if users else ""
