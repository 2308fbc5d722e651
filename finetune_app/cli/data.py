"""`finetune-app data check PATH`: validate a dataset headless and print the report.

Exit codes: 0 when usable rows remain (problems are listed), 4 when nothing usable remains or the
dataset cannot be read, 3 when --model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect and validate datasets",
                                   description="Inspect and validate datasets.")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    check = sub.add_parser("check", help="validate every row and print a report",
                           description="Validate every row of a dataset and print a report. "
                           "Exits 4 when nothing usable remains.")
    check.add_argument("path", help="dataset file, folder, or Hugging Face hub id")
    check.add_argument("--model", help="local model folder: count tokens with its tokenizer")
    check.add_argument("--format", help="row format instead of detecting it "
                       "(caption, messages, sharegpt, llava, alpaca, qa)")
    check.add_argument("--template", help="column mapping as JSON, or @file.json, e.g. "
                       "'{\"prompt\": \"Describe {label}\", \"answer\": \"{text}\"}'")
    check.add_argument("--max-length", type=int, help="drop rows longer than this many tokens "
                       "(needs --model)")
    check.add_argument("--examples", type=int, default=0, metavar="K",
                       help="show, for the first K usable rows, the exact text, input_ids and "
                       "target_mask the trainer will use and the image size fed to the vision "
                       "tower (needs --model)")
    check.add_argument("--serve-target", default="auto",
                       help="where the model will run, which decides the layout of --examples: "
                       "auto, mlx-vlm, mlx-lm, mlx-swift, mlx-swift-lm (default auto)")
    check.add_argument("--image-size", type=int, default=None, metavar="PX",
                       help="the training image size limit, for --examples")
    check.add_argument("--objective", choices=("sft", "dpo", "ipo", "orpo", "grpo"), default=None,
                       help="count sequences as this objective trains them (default: dpo for preference "
                       "rows, else sft): a pair is two, a GRPO prompt its --grpo-group-size answers")
    check.add_argument("--grpo-group-size", type=int, default=None, metavar="G",
                       help="answers sampled per prompt, with --objective grpo")
    check.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="the training batch size, for the memory estimate (needs --model; default "
                       "the training default)")
    check.add_argument("--no-images", action="store_true", help="do not open the images")
    check.add_argument("--strict", action="store_true", help="fail on any row problem")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--show", type=int, default=20, metavar="N",
                       help="problems listed in the text report (default 20)")
    check.set_defaults(func=run_check)
    parser.set_defaults(func=lambda args: _usage(parser))


def run(args) -> int:
    return args.func(args)


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _template(value: str | None):
    from finetune_app.core.errors import DataError

    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise DataError(f"--template is not valid JSON ({exc}).",
                        "Pass a JSON object, e.g. '{\"prompt\": \"{question}\", \"answer\": "
                        "\"{answer}\"}'.", field="template") from None


def run_check(args: argparse.Namespace) -> int:
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.data import open_dataset, token_counter_for, validate
    from finetune_app.core.data.validation import text_limit
    from finetune_app.core.errors import ConfigError, FinetuneError

    try:
        if args.max_length is not None and args.max_length < 1:
            raise ConfigError(f"--max-length must be a positive number of tokens, got "
                              f"{args.max_length}.", "Pass e.g. --max-length 2048.",
                              field="max_length")
        dataset = open_dataset(args.path, format=args.format, template=_template(args.template),
                               policy="strict" if args.strict else "skip")
        counter = token_counter_for(args.model) if args.model else None
        if args.max_length is not None and counter is None:
            print("note: --max-length needs --model to count tokens; only the text length "
                  "bound was checked",
                  file=sys.stderr)
        # the text bound training applies before tokenising (from its max length), so that
        # both agree on which rows are usable
        report = validate(dataset, token_counter=counter, max_length=args.max_length,
                          check_images=not args.no_images, progress=_progress(args),
                          policy="strict" if args.strict else "skip",
                          max_chars=text_limit(args.max_length or TrainConfig.max_length))
        examples = _examples(args, report) if args.examples else None
        fit = _fit(args, report) if args.model and report.token_lengths else None
    except FinetuneError as err:
        if not args.json:
            raise
        _print(json.dumps({"error": {"message": err.message, "file": err.file, "line": err.line,
                                     "field": err.field}, "rows_usable": 0}, indent=2))
        return err.exit_code
    sequences = _sequences(args, dataset, report)
    if args.json:
        out = report.to_dict()
        out["sequences"] = sequences
        if examples is not None:
            out["examples"] = examples
        if fit is not None:
            out["memory"] = fit.to_dict()
        _print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        _print(dataset.describe())
        _print(report.summary(max_problems=args.show))
        _print("Sequences: " + sequences["text"])
        if fit is not None:
            _print(f"Memory: {fit.verdict()}")
        for ex in examples or []:
            _print(f"\nrow {ex['row']} ({ex['serve_target']} layout, {len(ex['input_ids'])} ids, "
                   f"{sum(ex['target_mask'])} supervised, images {ex['image_sizes']}):\n{ex['text']}")
    from finetune_app.core.errors import DataError

    return 0 if report.rows_usable else DataError.exit_code


def _sequences(args, dataset, report) -> dict:
    """What the usable rows amount to for the objective (core/estimates.py: a pair is two sequences)."""
    from finetune_app.core import estimates
    from finetune_app.core.config import TrainConfig

    objective = args.objective or ("dpo" if dataset.format == "preference" else "sft")
    cfg = TrainConfig(objective=objective, **({"grpo_group_size": args.grpo_group_size} if args.grpo_group_size else {}))
    return {"objective": objective, "per_row": estimates.sequences_per_example(cfg),
            "total": report.rows_usable * estimates.sequences_per_example(cfg),
            "text": estimates.sequences_text(cfg, report.rows_usable) + f" for {objective.upper()}"}


def _fit(args, report):
    """Will it fit: the settings form's memory estimate (core/estimates.py) for the longest usable
    row at the batch size, against this machine's memory budget."""
    from finetune_app.core import estimates
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.model_folder import read_json_object
    from finetune_app.core.training.memory import fit_budget

    folder = Path(args.model).expanduser()
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return None  # a tokenizer alone: lengths, but nothing to estimate the model's memory from
    params, dtype, quant = estimates.folder_parameters(folder)
    kwargs = {"objective": args.objective} if args.objective else {}  # a pair is two sequences
    if args.batch_size is not None:
        kwargs["batch_size"] = max(1, args.batch_size)
    cfg = TrainConfig(**kwargs)
    sizes = estimates.model_sizes(read_json_object(folder / "config.json"))
    seq = max(report.token_lengths.values())
    return estimates.will_it_fit(cfg, budget_bytes=fit_budget(), seq_len=seq, parameters=params, dtype=dtype,
                                 quantization=quant, sizes=sizes)


def _examples(args, report) -> list[dict]:
    """What the trainer will feed the model for the first K usable rows, in the serve target's
    layout: compare these with the runtime's own (apply_chat_template + processor)."""
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.errors import ConfigError
    from finetune_app.core.models import load_base

    if not args.model:
        raise ConfigError("--examples needs --model (the examples are that model's tokens).",
                          "Add --model FOLDER.", field="examples")
    base = load_base(args.model)
    enc = Encoder(base, image_size=args.image_size, serve_target=args.serve_target)
    out = []
    for i in report.usable_indices[:max(0, args.examples)]:
        sample = report.dataset.sample(i)
        images = enc.load_images(sample) if sample.images else []
        ex = enc.encode(sample, i, images=images)
        out.append({"row": i, "file": sample.source, "line": sample.line, "serve_target": enc.serve_target,
                    "text": enc.render(sample), "input_ids": ex.input_ids.tolist(),
                    "target_mask": [int(m) for m in ex.target_mask], "model_length": ex.model_length,
                    "image_sizes": _tower_sizes(base, ex, images)})
    return out


def _tower_sizes(base, ex, images) -> list[list[int]]:
    """[width, height] in pixels of each image as the vision tower gets it."""
    grid = ex.images.get("image_grid_thw")
    if grid is not None:  # Qwen-VL: patches of patch_size pixels
        patch = getattr(getattr(base.processor, "image_processor", None), "patch_size", 14)
        return [[int(w) * patch, int(h) * patch] for _, h, w in grid.reshape(-1, 3)]
    pv = ex.images.get("pixel_values")
    if pv is not None and pv.ndim == 4:
        return [[int(pv.shape[-1]), int(pv.shape[-2])]] * len(images)
    return [list(im.size) for im in images]


def _print(text: str) -> None:
    """Print what a dataset said, even a lone surrogate (from a file name or broken JSON text)."""
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _progress(args):
    if args.json or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        print(f"\rchecking {done:,}/{total:,} rows", end="" if done < total else "\n",
              file=sys.stderr, flush=True)

    return show
