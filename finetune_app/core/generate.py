"""Caption an image or answer a prompt with a base model, with or without an adapter.

Generation is the libraries' own (`mlx_vlm.stream_generate` / `mlx_lm.stream_generate`), greedy by
default, on prompts rendered in the layout the model was trained with (core/serving: the one its
adapter or bundle records, else the runtime's default), so the app answers as the model's runtime
will. A layout the library does not build itself (Apple's FastVLM app) hands it its own ids and pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from finetune_app.core.data.sample import ImageRef, Sample, Turn

DEFAULT_CAPTION_PROMPT = "Describe this image."


@dataclass
class GenerationSettings:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0


def conversation(prompt: str, n_images: int) -> Sample:
    return Sample(turns=(Turn("user", prompt, n_images), Turn("assistant", "")),
                  images=tuple(ImageRef(label=f"image {i}") for i in range(n_images)))


def vocab_guard(tokenizer):
    """Logits processor that never picks ids past the tokenizer's vocabulary.

    Models pad their embedding matrix (Qwen2-VL: 151,936 rows for 151,657 tokens); a padded id has
    no text, and mlx-vlm's detokenizer raises IndexError on it. Masking those logits keeps greedy
    decoding identical whenever it would have produced a real token."""
    n = len(tokenizer)

    def guard(tokens, logits):
        import mlx.core as mx

        if logits.shape[-1] <= n:
            return logits
        keep = mx.arange(logits.shape[-1]) < n
        return mx.where(keep, logits, mx.array(-float("inf"), dtype=logits.dtype))

    return guard


def _prompt_text(base, encoder, sample: Sample) -> str:
    """The rendered prompt; a chat template that fails on it is the model folder's error, located."""
    from finetune_app.core.errors import FinetuneError, ModelError

    try:
        return encoder.prompt_text(sample)
    except FinetuneError:
        raise
    except Exception as exc:  # jinja2 errors, a template that expects other message fields, ...
        from finetune_app.core.model_folder import chat_template_source

        found = chat_template_source(Path(base.path)) if getattr(base, "path", None) else None
        where = found[0] if found else base.path
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelError(f"the model's chat template failed on this prompt ({type(exc).__name__}: {msg}).",
                         "Restore the chat template from the original model (chat_template.jinja or the "
                         "chat_template entry of tokenizer_config.json).", file=where) from None


def stream(base, prompt: str, images: list | None = None, *, settings: GenerationSettings | None = None,
           encoder=None, sample: Sample | None = None) -> Iterator[str]:
    """Yield the answer's text piece by piece. `images` are PIL images (already loaded).

    With `sample`, the prompt is that conversation up to its last answer (training samples)."""
    from finetune_app.core.data.tokenize import Encoder

    settings = settings or GenerationSettings()
    images = list(images or [])
    encoder = encoder or Encoder(base)
    text = _prompt_text(base, encoder, sample if sample is not None else conversation(prompt, len(images)))
    model = base.model
    model.eval()  # dropout off; a trainer restores its own modes afterwards
    if base.kind == "vlm":
        from mlx_vlm import stream_generate

        kwargs = dict(max_tokens=settings.max_tokens, temperature=settings.temperature,
                      logits_processors=[vocab_guard(base.tokenizer)])
        if settings.top_p < 1.0:
            kwargs["top_p"] = settings.top_p
        if not getattr(encoder.layout, "library_inputs", True):  # the layout's own ids and pixels
            kwargs.update(generation_inputs(encoder, text, images))
        for chunk in stream_generate(model, base.processor, text, image=images or None, **kwargs):
            if chunk.text:
                yield chunk.text
    else:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p if settings.top_p < 1 else 0.0)
        for chunk in stream_generate(model, base.processor, text, max_tokens=settings.max_tokens, sampler=sampler,
                                     logits_processors=[vocab_guard(base.tokenizer)]):
            if chunk.text:
                yield chunk.text


def generation_inputs(encoder, text: str, images: list) -> dict:
    """The ids and image tensors of `text` and `images` in the encoder's layout, as arrays that
    mlx_vlm.stream_generate takes in place of preparing its own (input_ids, pixel_values, ...)."""
    import mlx.core as mx

    processed = encoder.layout.process(text, images)
    processed.pop("attention_mask", None)  # one row: nothing to mask
    return {k: mx.array(v) for k, v in processed.items()}


def generate(base, prompt: str, images: list | None = None, *, settings: GenerationSettings | None = None,
             encoder=None, on_text: Callable[[str], None] | None = None) -> str:
    pieces = []
    for piece in stream(base, prompt, images, settings=settings, encoder=encoder):
        pieces.append(piece)
        if on_text:
            on_text(piece)
    return "".join(pieces).strip()


def generate_for_sample(base, sample: Sample, images: list, *, settings: GenerationSettings | None = None,
                        encoder=None) -> str:
    return "".join(stream(base, sample.prompt, images, settings=settings, encoder=encoder, sample=sample)).strip()


def caption_files(base, paths: list[str | Path], *, prompt: str = DEFAULT_CAPTION_PROMPT,
                  settings: GenerationSettings | None = None) -> list[str]:
    from finetune_app.core.data.images import load_image

    from finetune_app.core.data.tokenize import Encoder

    encoder = Encoder(base)
    out = []
    for p in paths:
        image = load_image(ImageRef(path=Path(p).resolve(), label=str(p)))
        out.append(generate(base, prompt, [image], settings=settings, encoder=encoder))
    return out
