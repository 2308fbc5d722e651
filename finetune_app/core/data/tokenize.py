"""Turn a Sample into model inputs exactly as the runtime it will be served with does it.

The layout (chat template, where images go, how pixels are made) is the serve target's
(core/serving): mlx-vlm's apply_chat_template + the model's processor, mlx-lm's chat template, or
Apple's FastVLM app's own prompt and preprocessing.

The prompt/answer split is explicit: `target_mask[t]` is True where token t belongs to an
assistant answer (its text and the end-of-turn token), so the completion-only loss covers exactly
the answers, never the system prompt, the user's words or the image tokens.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from finetune_app.core.data.sample import Sample
from finetune_app.core.errors import DataError
from finetune_app.core.serving.placement import span, turn_images


@dataclass
class Example:
    """One tokenised sample. Image tensors are host (numpy) arrays until batching."""

    index: int
    input_ids: np.ndarray  # int32 [L]; FastVLM keeps one -200 placeholder per image
    target_mask: np.ndarray  # bool [L]: token is supervised
    images: dict[str, np.ndarray] = field(default_factory=dict)  # pixel_values, image_grid_thw, ...
    n_images: int = 0
    model_length: int = 0  # positions the language model sees (FastVLM: placeholders expanded)
    lazy_images: bool = False  # image tensors dropped to save memory; re-encode the sample to get them
    feature_keys: list = field(default_factory=list)  # vision-cache keys replacing pixel_values
    image_ids: list = field(default_factory=list)  # each picture's identity (path) where pixels come later

    @property
    def n_targets(self) -> int:
        return int(self.target_mask[1:].sum())

    @property
    def units(self) -> int:
        """What the objective counts (its loss is a mean over them): supervised tokens."""
        return self.n_targets

    @property
    def parts(self) -> tuple["Example", ...]:
        """The token sequences the family prepares and plans (a pair has two)."""
        return (self,)

    def without_targets(self) -> "Example":
        """A copy with nothing supervised (a data-parallel rank left without examples)."""
        empty = copy.copy(self)  # (keeps what a family attached, e.g. mRoPE ids)
        empty.target_mask = self.target_mask & False
        return empty

    @property
    def nbytes(self) -> int:
        return self.input_ids.nbytes + self.target_mask.nbytes + sum(v.nbytes for v in self.images.values())


@dataclass
class PairExample:
    """A preference pair: one prompt with the chosen and the rejected answer, each tokenised in
    full; only the final answer's tokens are supervised. The objective counts pairs."""

    index: int
    chosen: Example
    rejected: Example
    lazy_images: bool = False

    @property
    def n_targets(self) -> int:
        return self.chosen.n_targets + self.rejected.n_targets

    @property
    def units(self) -> int:
        return 1

    @property
    def model_length(self) -> int:
        return max(self.chosen.model_length, self.rejected.model_length)

    @property
    def parts(self) -> tuple[Example, Example]:
        return (self.chosen, self.rejected)

    @property
    def has_targets(self) -> bool:
        return bool(self.chosen.n_targets and self.rejected.n_targets)

    def without_targets(self) -> "PairExample":
        return dataclasses.replace(self, chosen=self.chosen.without_targets(), rejected=self.rejected.without_targets())


class SizeUnknown(Exception):
    """A row whose picture tokens cannot be counted from picture sizes alone: decode it instead."""


class PictureSize:
    """A picture known by its decoded size only (#16 vlmwarm): what `Encoder.sized` counts."""

    def __init__(self, size: tuple[int, int]):
        self.size = size  # (width, height), as PIL gives it


class Encoder:
    """Renders and tokenises samples for one loaded base model, in the layout of the runtime the
    model will be served with (core/serving: "auto" is mlx-vlm for VLMs, mlx-lm for text)."""

    def __init__(self, base, *, completion_only: bool = True, image_size: int | None = None,
                 image_features: int | None = None,
                 image_loader: Callable | None = None, serve_target: str | None = None, pairs: bool = False):
        """`pairs`: preference objectives; `encode` returns a PairExample whose answers alone are
        supervised (whatever `completion_only` says: a pair compares answers to one prompt)."""
        from finetune_app.core import serving

        self.base = base
        self.pairs = pairs
        self.completion_only = completion_only
        self.image_size = image_size
        self.is_vlm = base.kind == "vlm"
        self.tokenizer = base.tokenizer
        cfg = base.config
        self.image_token_index = cfg.get("image_token_index", cfg.get("image_token_id"))
        # A model that expands each image placeholder itself (FastVLM) sees this many positions per
        # image; its family knows how many.
        if image_features is None and getattr(base, "model_type", None):
            from finetune_app.core.families import family_for

            image_features = family_for(base).image_features()
        self.image_features = image_features
        self._load_image = image_loader
        self._own_loader = image_loader is not None
        # (#16 vlmwarm) (text, [(w, h), ...]) -> {"input_ids", grids}: the processor's ids from picture
        # sizes alone, set by the trainer where the family's frozen-tower cache needs each picture's
        # pixels once (its first batch), so preparation need not decode any (`encode_sized`)
        self.sized: Callable | None = None
        self.layout = serving.layout(serve_target, base)
        self.serve_target = self.layout.name

    # ---- rendering -------------------------------------------------------------------------
    def messages(self, sample: Sample, upto: int | None = None) -> list[dict]:
        """The messages handed to the runtime's template (images placed by the serve target)."""
        return self.layout.messages(sample, upto)[0]

    def render(self, sample: Sample, upto: int | None = None, *, generation_prompt: bool = False) -> str:
        return self.layout.render(sample, upto, generation_prompt=generation_prompt)

    def training_text(self, sample: Sample) -> str:
        """The conversation as trained: the final answer follows exactly the generation prompt the
        runtime builds for it. Most templates render history that way already; some do not
        (mlx-vlm's DeepSeek-VL2 template writes `<|Assistant|> answer` in history but prompts with
        `<|Assistant|>:`), and there the answer is re-attached after the generation prompt. Earlier
        answers stay as the template renders history, which is what the runtime's prompt holds."""
        full = self.render(sample)
        last = span(sample, None) - 1
        prompt = self.render(sample, last, generation_prompt=True)
        if full.startswith(prompt):
            return full
        before, answer = self.render(sample, last), sample.turns[last].text
        j = full.find(answer, len(before)) if full.startswith(before) and answer else -1
        if j < 0:  # nothing to re-attach: keep the template's text (the mask check refuses it)
            return full
        lead = full[len(before):j]
        space = lead[len(lead.rstrip()):]
        return prompt + ("" if prompt.endswith(space) else space) + full[j:]

    def _answer_start(self, sample: Sample, i: int, full_text: str) -> int:
        """Where answer i starts in `full_text`, in text tokens: after its generation prompt, or,
        for a history answer of a template that renders history differently, at its text."""
        prompt = self.render(sample, i, generation_prompt=True)
        if full_text.startswith(prompt):
            return len(self.text_ids(prompt))
        j = full_text.find(sample.turns[i].text, len(self.render(sample, i)))
        return len(self.text_ids(full_text[:j])) if j >= 0 else -1

    def prompt_text(self, sample: Sample) -> str:
        """The prompt for generating the final answer (for samples and captioning)."""
        last = max(i for i, t in enumerate(sample.turns) if t.role == "assistant")
        return self.render(sample, last, generation_prompt=True)

    # ---- tokenising ------------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """Ids of plain text (no images) as the serve target's runtime tokenises it."""
        return self.layout.text_ids(text)

    def _processed(self, text: str, images: list) -> dict[str, np.ndarray]:
        if images and isinstance(images[0], PictureSize):
            return self.sized(text, [im.size for im in images])
        return self.layout.process(text, images)

    def picture_size(self, ref) -> tuple[int, int] | None:
        """The size `load_images` hands the processor, from the file's header (None: decode to know)."""
        from finetune_app.core.data.images import decoded_size

        size = decoded_size(ref)
        if size is not None and self.image_size and max(size) > self.image_size:
            scale = self.image_size / max(size)  # (load_images' resize, to the same rounding)
            size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        return size

    def encode_sized(self, sample: Sample, index: int = 0):
        """(#16 vlmwarm) The row's example with its pictures counted from their headers, not
        decoded: ids, mask and grids as `encode` gives them, no pixels (`lazy_images`: the first
        batch that needs them encodes the row in full). Rows this cannot count are encoded in full."""
        if (self.sized is None or self.pairs or self._own_loader or not sample.images
                or getattr(self.layout, "encode_row", None) is not None):
            return self.encode(sample, index)
        sizes = [self.picture_size(ref) for ref in sample.images]
        if any(s is None for s in sizes):
            return self.encode(sample, index)
        try:
            ex = self._encode(sample, index, images=[PictureSize(s) for s in sizes])
        except SizeUnknown:
            return self.encode(sample, index)
        ex.lazy_images = True
        return ex

    def load_images(self, sample: Sample) -> list:
        if self._load_image is None:
            from finetune_app.core.data.images import load_image

            self._load_image = load_image
        resize = None
        images = []
        for ref in sample.images:
            img = self._load_image(ref)
            if self.image_size and max(img.size) > self.image_size:
                scale = self.image_size / max(img.size)
                resize = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
                img = img.resize(resize)
            images.append(img)
        return images

    def encode(self, sample: Sample, index: int = 0, *, images: list | None = None):
        if self.pairs:
            return self.encode_pair(sample, index, images=images)
        return self._encode(sample, index, images=images)

    def encode_pair(self, sample: Sample, index: int = 0, *, images: list | None = None) -> PairExample:
        if sample.rejected is None:
            raise DataError("The row has no rejected answer; preference training (DPO, IPO, ORPO) needs pairs.",
                            "Give each row 'prompt', 'chosen' and 'rejected' (see `finetune-app data check`), "
                            "or train this dataset with the SFT objective.",
                            file=sample.source, line=sample.line, field="rejected")
        if self.is_vlm and images is None and sample.images:
            images = self.load_images(sample)
        chosen = self._encode(sample, index, images=images, final_only=True)
        rejected = self._encode(sample.with_rejected_answer(), index, images=images, final_only=True)
        return PairExample(index=index, chosen=chosen, rejected=rejected)

    def _encode(self, sample: Sample, index: int = 0, *, images: list | None = None, final_only: bool = False) -> Example:
        if not any(t.role == "assistant" for t in sample.turns):
            raise DataError("The row has no assistant answer to learn.", "Add an answer (caption, output or assistant message).",
                            file=sample.source, line=sample.line, field="answer")
        if sample.images and not self.is_vlm:
            raise DataError("The row has images, but the base model reads text only.",
                            "Choose a vision-language model (e.g. Qwen2-VL or FastVLM), or a text-only dataset.",
                            file=sample.source, line=sample.line, field="images")
        encode_row = getattr(self.layout, "encode_row", None)
        if encode_row is not None:  # a prefix-LM: the processor lays out prompt + answer itself
            ids, mask, image_inputs = encode_row(sample, self.load_images(sample) if images is None else images)
            # the prompt attends both ways, so only the answer can be learnt (completion only)
            return Example(index=index, input_ids=ids, target_mask=mask, images=image_inputs,
                           n_images=len(sample.images), model_length=len(ids))
        full_text = self.training_text(sample)
        image_inputs: dict[str, np.ndarray] = {}
        if self.is_vlm:
            if images is None:
                images = self.load_images(sample)
            processed = self._processed(full_text, images)
            ids = processed.pop("input_ids").reshape(-1).astype(np.int32)
            processed.pop("attention_mask", None)
            image_inputs = {k: v for k, v in processed.items() if isinstance(v, np.ndarray) and v.dtype != object}
        else:
            ids = np.asarray(self.text_ids(full_text), dtype=np.int32)
        mask = self._target_mask(sample, ids, full_text, images or [], final_only=final_only)
        n_img = len(sample.images)
        model_length = len(ids)
        if self.image_features and self.image_token_index is not None and self.image_token_index < 0:
            model_length += int((ids == self.image_token_index).sum()) * (self.image_features - 1)
        ex = Example(index=index, input_ids=ids, target_mask=mask, images=image_inputs, n_images=n_img,
                     model_length=model_length)
        if self.sized is not None and sample.images:  # (the cache's key for pictures read later)
            from finetune_app.core.data.images import image_key

            ex.image_ids = [image_key(ref) for ref in sample.images]
        return ex

    def _target_mask(self, sample: Sample, ids: np.ndarray, full_text: str, images: list,
                     final_only: bool = False) -> np.ndarray:
        mask = np.zeros(len(ids), dtype=bool)
        final = max(i for i, t in enumerate(sample.turns) if t.role == "assistant")
        if not self.completion_only and not final_only:
            mask[:] = True
            if self.image_token_index is not None:
                mask &= ids != self.image_token_index
            mask[0] = False
            return mask
        # (#16 textwarm) a text model's ids are these already: one tokenizer call a row less
        text_full = self.text_ids(full_text) if self.is_vlm else ids.tolist()
        delta = len(ids) - len(text_full)  # tokens the processor added (image expansion)
        counts = turn_images(sample)
        n_before = 0
        for i, turn in enumerate(sample.turns[:span(sample, None)]):
            if turn.role != "assistant":
                n_before += counts[i]
                continue
            if final_only and i != final:
                continue
            start_txt = self._answer_start(sample, i, full_text)
            last = i == span(sample, None) - 1
            end_txt = len(text_full) if last else len(self.text_ids(self.render(sample, i + 1)))
            if start_txt < 0:
                start, end = -1, -1
            elif n_before == len(sample.images):
                start, end = start_txt + delta, end_txt + delta
            else:  # images after this answer: measure the prefix with its own images
                prefix = self._processed(self.render(sample, i, generation_prompt=True), images[:n_before])
                start = prefix["input_ids"].size
                end = start + (end_txt - start_txt)
            if not (0 <= start < end <= len(ids)) or list(ids[start:end]) != text_full[start_txt:end_txt]:
                raise DataError("The model's chat template does not split this conversation cleanly into prompt and answer.",
                                "Turn off 'completion only' for this model, or report the model's chat template.",
                                file=sample.source, line=sample.line, field="messages")
            mask[start:end] = True
        return mask

    def count_tokens(self, sample: Sample) -> int:
        """Sequence length the model will see, for the validation report's max-length check."""
        return self.encode(sample).model_length
