"""`finetune-app export`: write an adapter, a fused (optionally quantized) model, or a Swift bundle.

Prints progress on stderr, then the verification result and the bundle's files with their sizes on
stdout (or one JSON object with --json). Exit codes: those of finetune_app.core.errors
(2 destination/disk/usage, 3 model, 5 settings, 6 adapter), 130 when interrupted. Ctrl-C or
SIGTERM stops cleanly: the staging folder is removed and nothing appears at --output.
"""

from __future__ import annotations

import json
import signal
import sys


def register(sub) -> None:
    from finetune_app.core.export.export import TARGET_HELP, TARGETS

    p = sub.add_parser(
        "export", help="export an adapter, a fused / quantized model, or a FastVLM app bundle",
        description="Export a fine-tuned model. Targets: "
        + "; ".join(f"{t}: {TARGET_HELP[t]}" for t in TARGETS) + ". "
        "The bundle is written to a hidden staging folder, verified, and moved into place only when complete.")
    p.add_argument("--model", default=None, help="base model (local folder or Hugging Face id); default: the one "
                   "recorded in the adapter's adapter_config.json")
    p.add_argument("--adapter", default=None, metavar="DIR", help="adapter or run folder (adapters.safetensors + adapter_config.json)")
    p.add_argument("--checkpoint", default=None, metavar="best|latest|STEP",
                   help="with a run folder as --adapter: export this checkpoint of it instead of the run's final "
                        "adapter (best: the one the run marks as best by its best_by setting)")
    p.add_argument("--target", required=True, choices=TARGETS, help="what to write (see above)")
    p.add_argument("--quantize", dest="quantize_bits", type=int, choices=(4, 8), default=None,
                   help="quantize the fused model to 4 or 8 bits (default: full precision)")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128), default=64, help="quantization group size (default 64)")
    p.add_argument("--quantize-vision", action="store_true", help="also quantize the vision tower (default: it stays in float)")
    p.add_argument("--mlpackage", default=None, metavar="PATH",
                   help="mlx-swift only: use this fastvithd.mlpackage (checked) instead of building one from the model's tower")
    p.add_argument("--output", required=True, metavar="DIR", help="destination folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.add_argument("--prompt", default=None, help="verification prompt (default: a caption request, or a question for text models)")
    p.add_argument("--image", default=None, metavar="FILE", help="verification image for vision-language models (default: a drawn shape)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip reloading and checking the export")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from finetune_app.core.export.export import ExportOptions, export, human_bytes

    adapter = args.adapter
    if args.checkpoint:
        from finetune_app.core import run_folder
        from finetune_app.core.errors import ConfigError

        if not adapter:
            raise ConfigError("--checkpoint needs the run folder as --adapter.", "Pass --adapter RUN_FOLDER.",
                              field="adapter")
        adapter = str(run_folder.pick_checkpoint(adapter, args.checkpoint))
    opts = ExportOptions(output=args.output, target=args.target, adapter=adapter, model=args.model,
                         quantize_bits=args.quantize_bits, group_size=args.group_size,
                         quantize_vision=args.quantize_vision, mlpackage=args.mlpackage, overwrite=args.force,
                         verify=args.verify, prompt=args.prompt, image=args.image)
    from finetune_app.cli.progress import fraction_printer

    progress, close = fraction_printer(sys.stderr)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        result = export(opts, progress=progress)
    except OSError as err:  # a folder or disk that failed while writing: located, no traceback
        from finetune_app.core.export.export import ExportError

        raise ExportError(f"Could not write the export ({err.strerror or err}); nothing new was put at "
                          f"'{args.output}'.", "Check that the folder is writable and the disk has space, then "
                          "export again.", file=err.filename or args.output) from None
    finally:
        close()
        signal.signal(signal.SIGTERM, old)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"Exported {result.target} to {result.output} in {result.seconds:.1f} s"
          + (f" ({result.fuse_summary})" if result.fuse_summary else "")
          + (f", quantization: {result.quantization}" if result.quantization != "none" else ""))
    if result.verification is not None:
        print("\n".join(result.verification.lines()))
    else:
        print("Verification skipped (--no-verify).")
    for w in result.warnings:
        if result.verification is None or w not in result.verification.warnings:
            print(f"warning: {w}")
    print(f"Files ({len(result.files)}, {human_bytes(result.total_bytes)}; estimated {human_bytes(result.estimate_bytes)}):")
    print("\n".join(result.file_lines()))
    return 0
