"""`validate`: one pass over every row -> a Report of what is usable and what is wrong, per row.

Checks: the row parses (JSON, columns, roles, non-empty answer), its text could fit max_length
at all (a character bound, before any tokenising), its images exist inside the dataset folder and
decode, it is not a duplicate, and (given a token counter) it fits max_length. Training runs the
same checks, so `data check` and `train` agree on which rows are usable.
Policy "skip" drops bad rows and counts them; "strict" raises on the first problems.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from finetune_app.core.data.dataset import Dataset
from finetune_app.core.data.images import image_key, inspect_image
from finetune_app.core.data.report import Report
from finetune_app.core.data.sample import Sample
from finetune_app.core.errors import DataError, ModelError, Problem

TokenCounter = Callable[[Sample], int]
# No tokenizer turns fewer than this many characters into a token (English runs ~4 per token), so
# a row with more text than max_length * this can never fit, and is refused without tokenising it
# (a 200 MB caption once drove training to 22 GB inside the tokenizer).
CHARS_PER_TOKEN_BOUND = 32


def text_limit(max_length: int) -> int:
    """Characters of text a row may have for a given max length in tokens."""
    return int(max_length) * CHARS_PER_TOKEN_BOUND


def oversized(sample: Sample, max_chars: int) -> Problem | None:
    """The row's text is too long to ever fit: a located problem, before any tokenising."""
    total = sum(len(t.text) for t in sample.turns)
    max_tokens = max_chars // CHARS_PER_TOKEN_BOUND
    if len(sample.turns) > max_tokens:  # every turn takes at least one token
        return Problem(sample.source, sample.line, None,
                       f"the row has {len(sample.turns):,} turns, more than a max length of "
                       f"{max_tokens:,} tokens could hold; it was not tokenised. Split the "
                       "conversation (or raise --max-length).")
    if total <= max_chars:
        return None
    n, turn = max((len(t.text), k) for k, t in enumerate(sample.turns))
    return Problem(sample.source, sample.line, sample.turns[turn].role,
                   f"the row has {total:,} characters of text (turn {turn + 1}, "
                   f"{sample.turns[turn].role}: {n:,}), more than the {max_chars:,} a max length "
                   f"of {max_chars // CHARS_PER_TOKEN_BOUND:,} tokens could hold; it was not "
                   "tokenised. Shorten the row (or raise --max-length).")


def sample_key(sample: Sample) -> str:
    """Identity of a row's content: same images (path or bytes) and same turns -> same key."""
    parts = [image_key(r) for r in sample.images]
    for t in sample.turns:
        parts += ("\x1e", t.role, str(t.n_images), t.text)
    if sample.rejected is not None:  # preference rows: another rejected answer is another pair
        parts += ("\x1d", sample.rejected.text)
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"),
                           digest_size=12).hexdigest()


def validate(dataset: Dataset, *, token_counter: TokenCounter | None = None,
             max_length: int | None = None, check_images: bool = True,
             progress: Callable[[int, int], None] | None = None, policy: str = "skip",
             max_chars: int | None = None) -> Report:
    """Check every row of `dataset`; see the module docstring. Never raises for bad rows under
    policy "skip"; under "strict" raises DataError listing the first problems.

    `max_chars` (default: `text_limit` of `max_length`, else of training's default max length)
    refuses rows with more text than could ever fit, before they are tokenised or hashed;
    training applies the same bound, so the two agree on which rows are usable."""
    if max_chars is None:
        from finetune_app.core.config import TrainConfig

        max_chars = text_limit(max_length or TrainConfig.max_length)
    if policy not in ("skip", "strict"):
        raise DataError(f"unknown policy '{policy}'.", "Use 'skip' or 'strict'.", field="policy")
    total = len(dataset)
    problems: list[Problem] = list(dataset.problems)
    usable: list[int] = []
    row_keys: dict[int, str] = {}
    first_of: dict[str, int] = {}
    duplicates: list[tuple[int, int]] = []
    lengths: dict[int, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    bad_images: dict[str, DataError] = {}
    has_images, image_rows = False, 0
    split_counts: dict[str, int] = {}
    every = max(1, total // 200)
    check_rows = check_images or token_counter is not None
    light = not check_images and token_counter is None  # no Path objects needed
    for done, (i, sample, row_problems) in enumerate(dataset.iter_parsed(light=light), 1):
        if row_problems:
            problems.extend(row_problems)
            if any(p.severity == "error" for p in row_problems):
                sample = None
        if sample is not None:
            big = oversized(sample, max_chars)
            if big is not None:
                problems.append(big)
                sample = None
        if sample is not None and (not check_rows or _check_row(
                i, sample, problems, check_images, sizes, bad_images, token_counter,
                max_length, lengths)):
            usable.append(i)
            if sample.images:
                has_images, image_rows = True, image_rows + 1
            key = row_keys[i] = sample_key(sample)
            earlier = first_of.setdefault(key, i)
            if earlier != i:
                duplicates.append((i, earlier))
                ref = dataset.rows[earlier]
                other = dataset.sources[ref.source].name
                where = f" of {other}" if other != sample.source else ""
                problems.append(Problem(sample.source, sample.line, None,
                                        f"duplicate of the row at line {ref.line}{where} "
                                        "(same images and turns); remove one.", "warning"))
            if sample.split:
                split_counts[sample.split] = split_counts.get(sample.split, 0) + 1
        if progress is not None and (done % every == 0 or done == total):
            progress(done, total)
    dataset.has_images = has_images if usable else dataset.has_images
    report = Report(rows_found=total, rows_usable=len(usable), problems=problems,
                    usable_indices=usable, token_lengths=lengths, image_sizes=sizes,
                    duplicates=duplicates, row_keys=row_keys, path=str(dataset.path),
                    format=dataset.format, container=dataset.container,
                    has_images=dataset.has_images, rows_with_images=image_rows,
                    splits=split_counts if dataset.splits else {}, max_length=max_length,
                    images_checked=check_images, dataset=dataset)
    if policy == "strict" and report.errors:
        raise strict_error(report.errors)
    return report


def _check_row(i, sample: Sample, problems, check_images, sizes, bad_images,
               token_counter, max_length, lengths) -> bool:
    ok = True
    if check_images:
        field = sample.meta.get("image_field", "image")
        for ref in sample.images:
            key = image_key(ref)
            if key in sizes:
                continue
            err = bad_images.get(key)
            if err is None:
                try:
                    sizes[key] = inspect_image(ref)
                    continue
                except DataError as exc:
                    err = bad_images[key] = exc
            problems.append(Problem(sample.source, sample.line, field,
                                    f"{ref.describe()}: {err.problem} {err.fix}".strip()))
            ok = False
    if ok and token_counter is not None:
        try:
            n = int(token_counter(sample))
        except Exception as exc:
            problems.append(Problem(sample.source, sample.line, None,
                                    f"cannot count tokens with the model's chat template "
                                    f"({type(exc).__name__}: {exc})."))
            return False
        lengths[i] = n
        if max_length is not None and n > max_length:
            problems.append(Problem(sample.source, sample.line, None,
                                    f"the row is {n:,} tokens, longer than the max length "
                                    f"{max_length:,}. Raise --max-length or shorten the row."))
            del lengths[i]
            return False
    return ok


def strict_error(errors: list[Problem], shown: int = 5) -> DataError:
    """One DataError listing the first few problems (policy "strict")."""
    def where(p: Problem) -> str:
        return p.file + (f" line {p.line}" if p.line is not None else "") + \
            (f" field '{p.field}'" if p.field else "")

    listed = "; ".join(f"{where(p)}: {p.message}" for p in errors[:shown])
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    first = errors[0]
    return DataError(f"{len(errors)} row problem(s): {listed}{more}.",
                     "Fix them, or use the 'skip' policy to drop the bad rows.",
                     file=first.file, line=first.line, field=first.field)


# -- token counting with a model's own tokenizer (the lead's tokeniser may replace this) --------

def to_chat_messages(sample: Sample, *, image_parts: bool) -> list[dict]:
    """Turns -> chat-template messages; images as {"type": "image"} parts before the text."""
    messages = []
    for t in sample.turns:
        if image_parts and t.n_images:
            content = [{"type": "image"}] * t.n_images + [{"type": "text", "text": t.text}]
        elif image_parts:
            content = [{"type": "text", "text": t.text}]
        else:
            content = "<image>\n" * t.n_images + t.text
        messages.append({"role": t.role, "content": content})
    return messages


def token_counter_for(model_path: str | Path) -> TokenCounter:
    """Count a sample's tokens as the model sees them: its tokenizer and chat template.

    Local folders only, never trust_remote_code. Image placeholders count as their template
    tokens (the vision expansion depends on image size and is the trainer's business)."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise ModelError(f"model folder not found: {model_path}.",
                         "Pass a local model folder (with tokenizer files) to --model.",
                         file=str(model_path))
    from finetune_app.core import patches
    from finetune_app.core.model_folder import check_no_code, check_tokenizer

    check_no_code(path)  # no code from a model folder, ever (patches.no_remote_code is the second wall)
    check_tokenizer(path)
    patches.apply(only=("no_remote_code",))
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer from {path} ({type(exc).__name__}: {exc}).",
                         "Check that the folder has tokenizer.json / tokenizer_config.json.",
                         file=str(path)) from None
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        template = _processor_template(path)

    def render(sample: Sample) -> str:
        if not template:
            return "\n".join(f"{t.role}: {'<image>' * t.n_images}{t.text}" for t in sample.turns)
        if sample.images:
            try:
                return tokenizer.apply_chat_template(to_chat_messages(sample, image_parts=True),
                                                     chat_template=template, tokenize=False)
            except Exception:
                pass  # a text-only template that cannot take content parts
        return tokenizer.apply_chat_template(to_chat_messages(sample, image_parts=False),
                                             chat_template=template, tokenize=False)

    def count(sample: Sample) -> int:
        return len(tokenizer(render(sample), add_special_tokens=False)["input_ids"])

    return count


def _processor_template(path: Path) -> str | None:
    """VLM folders often keep the chat template beside the processor, not the tokenizer."""
    import json

    for name in ("chat_template.jinja", "chat_template.json"):
        f = path / name
        if f.is_file():
            try:
                text = f.read_text(encoding="utf-8")
                return json.loads(text).get("chat_template") if name.endswith(".json") else text
            except (OSError, ValueError, AttributeError):
                continue
    return None
