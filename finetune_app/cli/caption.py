"""`finetune-app caption` / `generate`: the base model or base + adapter, headless."""

from __future__ import annotations

from finetune_app.core.generate import DEFAULT_CAPTION_PROMPT, GenerationSettings


def register(sub) -> None:
    c = sub.add_parser("caption", help="caption images (one line per image: PATH<TAB>CAPTION)")
    c.add_argument("--model", required=True, help="base model: hub id or local folder")
    c.add_argument("--adapter", default=None, metavar="DIR", help="adapter or run folder to apply")
    c.add_argument("--prompt", default=DEFAULT_CAPTION_PROMPT, help=f"prompt (default: {DEFAULT_CAPTION_PROMPT!r})")
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.set_defaults(func=run_caption)
    g = sub.add_parser("generate", help="answer a prompt (optionally about images)")
    g.add_argument("--model", required=True)
    g.add_argument("--adapter", default=None, metavar="DIR")
    g.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("prompt")
    g.set_defaults(func=run_generate)


def load(model: str, adapter: str | None):
    from finetune_app.core import adapters
    from finetune_app.core.models import load_base

    base = load_base(model)
    if adapter:
        adapters.load_into(base, adapter)
    return base


def run_caption(args) -> int:
    from pathlib import Path

    from finetune_app.core.data.images import load_image
    from finetune_app.core.data.sample import ImageRef
    from finetune_app.core.generate import generate

    base = load(args.model, args.adapter)
    if base.kind != "vlm":
        from finetune_app.core.errors import ModelError

        raise ModelError(f"{base.family} reads text only and cannot caption images.", "Choose a vision-language model.")
    settings = GenerationSettings(max_tokens=args.max_tokens, temperature=args.temperature)
    failures = 0
    for path in args.images:
        from finetune_app.core.errors import FinetuneError

        try:
            image = load_image(ImageRef(path=Path(path).resolve(), label=path))
        except FinetuneError as err:
            print(f"{path}\tERROR: {err.message}")
            failures += 1
            continue
        text = generate(base, args.prompt, [image], settings=settings)
        print(f"{path}\t{' '.join(text.split())}", flush=True)
    return 4 if failures else 0


def run_generate(args) -> int:
    from pathlib import Path

    from finetune_app.core.data.images import load_image
    from finetune_app.core.data.sample import ImageRef
    from finetune_app.core.generate import stream

    base = load(args.model, args.adapter)
    images = [load_image(ImageRef(path=Path(p).resolve(), label=p)) for p in args.image]
    settings = GenerationSettings(max_tokens=args.max_tokens, temperature=args.temperature)
    for piece in stream(base, args.prompt, images, settings=settings):
        print(piece, end="", flush=True)
    print()
    return 0
