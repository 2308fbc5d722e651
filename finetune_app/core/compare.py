"""Base model vs fine-tuned: which fine-tuned model to use, both models loaded once per thread,
caption inputs (files, bytes, URLs) checked before they reach a model, and the comparison over a
set (validation split, a dataset, or a folder of images) with agreement scores.

Headless (no Qt): the GUI's caption worker and `finetune-app compare` both use it.

    cache = ModelCache()                       # on the thread that will generate (MLX streams
    tuned = TunedSource.detect("runs/my-run")  # are thread-local: load and use on one thread)
    result = compare_items(cache, "model/", tuned, items_from_data("data/"))

Memory: a LoRA/DoRA adapter shares the base's weights. The fine-tuned model is the base with the
adapter's layers attached; the base's outputs come from the same model with each adapter layer
swapped back for the layer it wraps, which is exactly the base's computation. Full fine-tunes,
QLoRA adapters on a full-precision base, and exported bundles get a copy of their own.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from finetune_app.core import run_folder, scoring
from finetune_app.core.data.sample import ImageRef, Sample
from finetune_app.core.errors import AdapterError, DataError, FinetuneError, ModelError

MAX_IMAGE_PIXELS = 50_000_000  # caption tests refuse larger pictures (50 megapixels)
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
DOWNLOAD_TIMEOUT = 15.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                  ".tga", ".ico", ".heic", ".heif", ".avif", ".jfif")
_STEP_DIR = run_folder.STEP_DIR

StatusFn = Callable[[str], None]


# ---- which fine-tuned model ---------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    """A concrete fine-tuned model: an adapter folder (checkpoint or final) or an exported bundle."""

    kind: str  # "adapter" or "bundle"
    path: Path
    label: str  # "checkpoint step 40", "adapter my-run", "exported model my-export"
    step: int | None = None
    key: tuple = ()  # changes when the files change (a newer save of the same folder)


@dataclass(frozen=True)
class TunedSource:
    """What the person chose: a run folder (its latest checkpoint), an adapter folder, or an
    exported model folder (a fused bundle that loads like a base model)."""

    kind: str  # "run", "adapter" or "bundle"
    path: Path

    @classmethod
    def detect(cls, path: str | Path) -> "TunedSource":
        p = Path(path).expanduser()
        if not p.exists():
            raise AdapterError(f"'{p}' does not exist.", "Choose a run folder, an adapter folder or an exported model folder.", file=p)
        if not p.is_dir():
            raise AdapterError(f"'{p}' is a file, not a folder.", "Choose the folder that holds adapters.safetensors (or an exported model's config.json).", file=p)
        p = p.resolve()
        if run_folder.checkpoints_dir(p).is_dir() or (run_folder.config_path(p).is_file() and not _STEP_DIR.match(p.name)):
            return cls("run", p)
        if run_folder.has_adapter(p):
            return cls("adapter", p)
        if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
            return cls("bundle", p)
        raise AdapterError(f"'{p}' is not a run, adapter or exported model folder.",
                           "Choose a run folder (with checkpoints/), a folder with adapters.safetensors and adapter_config.json, "
                           "or an exported MLX model folder (config.json and .safetensors weights).", file=p)

    @property
    def name(self) -> str:
        return self.path.name

    def resolve(self) -> Resolved:
        """The files to load now (a run's newest complete checkpoint at the time of asking)."""
        if self.kind == "bundle":
            return Resolved("bundle", self.path, f"exported model {self.path.name}", key=("bundle", str(self.path), _stamp(self.path / "config.json")))
        if self.kind == "run":
            from finetune_app.core.training import checkpoint as ckpt

            found, _ = ckpt.latest_valid(self.path)
            if found is not None:
                step = int(_STEP_DIR.match(found.name).group(1))
                return _adapter(found, f"checkpoint step {step}", step)
            if run_folder.has_adapter(self.path):
                return _adapter(self.path, f"adapter {self.path.name}", _state_step(self.path))
            every = _save_every(self.path)
            when = f" (the first is written at step {every})" if every else ""
            raise AdapterError(f"The run in '{self.path}' has no checkpoint yet{when}.",
                               "Wait for the first checkpoint, or choose an adapter folder.", file=self.path)
        step = _state_step(self.path)
        m = _STEP_DIR.match(self.path.name)
        if m:
            step = int(m.group(1))
            return _adapter(self.path, f"checkpoint step {step}", step)
        return _adapter(self.path, f"adapter {self.path.name}", step)


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return (0, 0)


def _adapter(folder: Path, label: str, step: int | None) -> Resolved:
    return Resolved("adapter", folder, label, step, key=("adapter", str(folder), _stamp(run_folder.adapter_path(folder))))


def _state_step(folder: Path) -> int | None:
    try:
        return int(run_folder.read_state(folder)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_every(run_dir: Path) -> int | None:
    try:
        value = run_folder.read_settings(run_dir).get("save_every")
        return int(value) if value else None
    except (ValueError, TypeError):
        return None


def recorded_base(source: TunedSource) -> str | None:
    """The base model an adapter (or run) says it was trained on, when it says so."""
    if source.kind == "bundle":
        return None
    if source.kind == "run":
        model = run_folder.read_settings(source.path).get("model")
        if model:
            return str(model)
    try:
        from finetune_app.core import adapters

        folder = source.path if source.kind == "adapter" else source.resolve().path
        return (adapters.read_config(folder).get("finetune_app") or {}).get("base_model") or None
    except FinetuneError:
        return None


# ---- adapters on and off ------------------------------------------------------------------------

def _adapter_layers(model) -> list[tuple[str, object]]:
    from finetune_app.core.adapters import is_adapter_layer

    return [(name, m) for name, m in model.named_modules() if is_adapter_layer(m) and hasattr(m, "linear")]


def _set_module(root, dotted: str, module) -> None:
    parts = dotted.split(".")
    obj = root
    for p in parts[:-1]:
        obj = obj[int(p)] if isinstance(obj, (list, tuple)) else obj[p]
    last = parts[-1]
    if isinstance(obj, list):
        obj[int(last)] = module
    else:
        setattr(obj, last, module)


def strip_adapters(model) -> int:
    """Put back the layers the adapter wraps (undoes attaching). Returns how many were removed."""
    layers = _adapter_layers(model)
    for name, m in layers:
        _set_module(model, name, m.linear)
    return len(layers)


def has_adapter_weights(model) -> bool:
    from mlx.utils import tree_flatten

    return any(".lora_" in k or k.startswith("lora_") for k, _ in tree_flatten(model.parameters()))


@contextmanager
def adapters_bypassed(model):
    """Within the block, every LoRA/DoRA layer is replaced by the layer it wraps: the model
    computes exactly what the base does. Put back afterwards."""
    layers = _adapter_layers(model)
    for name, m in layers:
        _set_module(model, name, m.linear)
    try:
        yield model
    finally:
        for name, m in layers:
            _set_module(model, name, m)


# ---- both models, once per thread ---------------------------------------------------------------

class ModelCache:
    """The base and fine-tuned models for one thread, loaded on first use and kept between requests.

    `status` hears what is being loaded ("loading base model…", "loading checkpoint step 40…")."""

    def __init__(self, status: StatusFn | None = None):
        self.status = status
        self._base = None  # BaseModel (plain, or with the shared adapter attached)
        self._base_source: str | None = None
        self._base_qmap: dict = {}
        self._base_layout: str | None = None  # the prompt layout the base itself records (a bundle)
        self._shared: Resolved | None = None  # adapter attached to self._base
        self._own = None  # a fine-tuned model with weights of its own
        self._own_key: tuple | None = None

    def _say(self, text: str) -> None:
        if self.status is not None:
            self.status(text)

    def clear(self) -> None:
        self._base = self._own = None
        self._base_source = self._shared = self._own_key = None
        gc.collect()
        try:
            import mlx.core as mx

            mx.clear_cache()
        except Exception:
            pass

    def _ensure_base(self, source: str):
        source = str(source).strip()
        if not source:
            raise ModelError("No base model was given.", "Choose a base model (Model & Settings) or start a run first.")
        if self._base is None or self._base_source != source:
            self.clear()
            from finetune_app.core.adapters import _quantization_map
            from finetune_app.core.models import load_base

            self._say("loading base model…")
            self._base = load_base(source)
            self._base_source = source
            self._base_layout = self._base.serve_target  # a bundle's; an attached adapter's replaces it
            self._base_qmap = _quantization_map(self._base.model)
        return self._base

    @contextmanager
    def base(self, source: str) -> Iterator:
        """The base model (adapter layers bypassed while the block runs)."""
        b = self._ensure_base(source)
        tuned_layout, b.serve_target = b.serve_target, self._base_layout  # the base's own layout too
        try:
            with adapters_bypassed(b.model):
                yield b
        finally:
            b.serve_target = tuned_layout

    def _shareable(self, config: dict) -> bool:
        if config.get("fine_tune_type", "lora") not in ("lora", "dora"):
            return False
        wanted = config.get("base_quantization") or {}
        # the adapter's base quantization must already be the loaded base's (nothing to re-quantize)
        return all(self._base_qmap.get(name) == dict(params) for name, params in wanted.items())

    def tuned(self, source: str | None, tuned: TunedSource) -> tuple[object, Resolved]:
        """(fine-tuned model, what it is). Loads a newer checkpoint of a run when there is one."""
        from finetune_app.core import adapters

        resolved = tuned.resolve()
        if resolved.kind == "bundle":
            if self._own_key != resolved.key:
                from finetune_app.core.models import load_base

                self._own = None
                gc.collect()
                self._say(f"loading {resolved.label}…")
                self._own = load_base(resolved.path)
                self._own_key = resolved.key
            return self._own, resolved
        base_source = source or recorded_base(tuned)
        if not base_source:
            raise ModelError("The adapter does not say which base model it was trained on.",
                             "Choose the base model on the Model & Settings screen.")
        config = adapters.read_config(resolved.path)
        base = self._ensure_base(base_source)
        if self._shareable(config):
            if self._shared is not None and self._shared.key == resolved.key:
                return base, self._shared
            self._say(f"loading {resolved.label}…")
            strip_adapters(base.model)
            self._shared = None
            base.serve_target = self._base_layout
            try:
                adapters.load_into(base, resolved.path)
            except Exception:
                strip_adapters(base.model)
                base.serve_target = self._base_layout
                raise
            if not _adapter_layers(base.model) and has_adapter_weights(base.model):  # layer kinds we cannot bypass
                self.clear()
                return self._tuned_own(base_source, resolved)
            self._shared = resolved
            return base, resolved
        return self._tuned_own(base_source, resolved)

    def _tuned_own(self, base_source: str, resolved: Resolved):
        from finetune_app.core import adapters
        from finetune_app.core.models import load_base

        key = (base_source,) + resolved.key
        if self._own_key != key:
            self._own = None
            gc.collect()
            self._say(f"loading {resolved.label}…")
            own = load_base(base_source)
            adapters.load_into(own, resolved.path)
            self._own, self._own_key = own, key
        return self._own, resolved


# ---- caption inputs -----------------------------------------------------------------------------

def is_image_name(name: str) -> bool:
    return Path(name.split("?")[0].split("#")[0]).suffix.lower() in IMAGE_SUFFIXES


def check_pixels(width: int, height: int, label: str, limit: int = MAX_IMAGE_PIXELS) -> None:
    if width * height > limit:
        raise DataError(f"{label} is {width:,} × {height:,} pixels ({width * height / 1e6:.0f} megapixels), "
                        f"over the {limit / 1e6:.0f}-megapixel limit for caption tests.",
                        "Downscale it first (models see a few hundred pixels a side anyway).", file=label)


def fetch_url(url: str, *, timeout: float = DOWNLOAD_TIMEOUT, limit: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """Download an image from an http(s) URL, with a clear message when the network is unavailable."""
    import socket
    import urllib.error
    import urllib.request

    if not url.lower().startswith(("http://", "https://")):
        raise DataError(f"Cannot open {url}: only http and https links are supported.", "Save the image and drop the file instead.")
    request = urllib.request.Request(url, headers={"User-Agent": "Finetune caption test"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise DataError(f"Downloading {url} failed: the server answered HTTP {exc.code} ({exc.reason}).",
                        "Check the link, or save the image and drop the file instead.") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"Cannot download {url}: no network connection ({reason}).",
                        "Connect to the internet, or save the image and drop the file instead.") from None
    if len(data) > limit:
        raise DataError(f"{url} is larger than {limit // (1024 * 1024)} MB.", "Save a smaller copy and drop the file instead.")
    if not data:
        raise DataError(f"{url} sent no data.", "Check the link, or save the image and drop the file instead.")
    return data


@dataclass(frozen=True)
class ImageInput:
    """One picture to caption: a file, raw bytes (dragged from another app) or a URL."""

    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    url: str | None = None
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.path is not None:
            return self.path.name
        return self.url or "dropped image"

    def load(self, *, limit: int = MAX_IMAGE_PIXELS):
        """The picture as an RGB PIL image (DataError with a readable message otherwise)."""
        from PIL import Image

        from finetune_app.core.data.images import load_image

        data = self.data
        if self.url is not None and data is None:
            data = fetch_url(self.url)
        ref = ImageRef(path=self.path, data=None if self.path is not None else data, label=self.name)
        try:  # header only: refuse huge pictures before decoding them
            with (open(self.path, "rb") if self.path is not None else io.BytesIO(data or b"")) as fh:
                with Image.open(fh) as im:
                    check_pixels(im.width, im.height, self.name, limit)
        except DataError:
            raise
        except Exception:
            pass  # load_image reports unreadable files properly
        return load_image(ref)


# ---- comparison over a set ----------------------------------------------------------------------

@dataclass
class CompareItem:
    prompt: str
    reference: str = ""
    images: tuple[ImageRef, ...] = ()
    sample: Sample | None = None  # the dataset's conversation: generation uses it whole
    index: int | None = None
    label: str = ""

    @property
    def image(self) -> str:
        if not self.images:
            return ""
        ref = self.images[0]
        return str(ref.path) if ref.path is not None else ref.describe()


@dataclass
class CompareRow:
    index: int | None
    label: str
    image: str
    prompt: str
    reference: str
    base: str = ""
    tuned: str = ""
    base_scores: dict = field(default_factory=dict)
    tuned_scores: dict = field(default_factory=dict)
    error: str = ""

    def score(self) -> None:
        if self.reference:
            for out, target in ((self.base, self.base_scores), (self.tuned, self.tuned_scores)):
                target.update(scoring.row_scores(out, self.reference))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CompareResult:
    model: str
    tuned: str  # what the fine-tuned side was ("checkpoint step 40")
    tuned_path: str
    data: str
    rows: list[CompareRow]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def scored_rows(self) -> list[CompareRow]:
        return [r for r in self.rows if r.reference and not r.error]

    def summary(self) -> dict:
        rows = self.scored_rows
        out = {"rows": len(self.rows), "scored": len(rows), "errors": sum(1 for r in self.rows if r.error)}
        if rows:
            refs = [r.reference for r in rows]
            out["base"] = scoring.agreement([r.base for r in rows], refs)
            out["tuned"] = scoring.agreement([r.tuned for r in rows], refs)
        ok = [r for r in self.rows if not r.error]
        out["outputs_differ"] = sum(1 for r in ok if r.base.strip() != r.tuned.strip())
        return out

    def verdict(self) -> str:
        return verdict(self.summary())

    def to_dict(self) -> dict:
        return {"model": self.model, "tuned": self.tuned, "tuned_path": self.tuned_path, "data": self.data,
                "settings": self.settings, "seconds": round(self.seconds, 2), "summary": self.summary(),
                "verdict": self.verdict(), "rows": [r.to_dict() for r in self.rows]}


def verdict(summary: dict) -> str:
    """One sentence a person can act on."""
    if not summary.get("scored"):
        n = summary.get("rows", 0)
        return (f"No references to score against; the outputs differ on {summary.get('outputs_differ', 0)} of {n} "
                f"items. Read them side by side.") if n else "Nothing was compared."
    b, t = summary["base"], summary["tuned"]
    gain = t["rouge_l"] - b["rouge_l"]
    em = f"exact match {b['exact_match']:.0%} → {t['exact_match']:.0%}"
    if gain > 0.02 or t["exact_match"] > b["exact_match"]:
        return f"The fine-tune agrees more with the references (ROUGE-L {b['rouge_l']:.2f} → {t['rouge_l']:.2f}, {em})."
    if gain < -0.02 or t["exact_match"] < b["exact_match"]:
        return f"The fine-tune agrees less with the references (ROUGE-L {b['rouge_l']:.2f} → {t['rouge_l']:.2f}, {em})."
    return f"No clear difference (ROUGE-L {b['rouge_l']:.2f} → {t['rouge_l']:.2f}, {em})."


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def items_from_data(path: str | Path, *, valid_fraction: float = 0.1, seed: int = 0, limit: int | None = None,
                    prompt: str | None = None, part: str = "valid") -> list[CompareItem]:
    """Items to compare: a dataset's validation split (the trainer's split for the same
    valid_fraction and seed; `part="all"` for every usable row), or every image of a plain
    folder of pictures (no references: outputs side by side, unscored)."""
    from finetune_app.core.data import open_dataset, split, validate
    from finetune_app.core.generate import DEFAULT_CAPTION_PROMPT

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"'{p}' does not exist.", "Choose a dataset or a folder of images.", file=p)
    try:
        dataset = open_dataset(p)
    except DataError:
        if p.is_dir() and _image_files(p):
            files = _image_files(p)[:limit] if limit else _image_files(p)
            text = prompt or DEFAULT_CAPTION_PROMPT
            return [CompareItem(prompt=text, images=(ImageRef(path=f.resolve(), label=f.name),), index=i, label=f.name)
                    for i, f in enumerate(files)]
        raise
    report = validate(dataset, check_images=False)
    if part == "all":
        indices = list(report.usable_indices)
    else:
        _, indices = split(report, valid_fraction=valid_fraction, seed=seed)
        if not indices:
            indices = list(report.usable_indices)  # no validation split: every usable row
    if limit:
        indices = indices[:limit]
    items = []
    for i in indices:
        try:
            sample = dataset.sample(i)
        except FinetuneError:
            continue
        label = sample.images[0].describe() if sample.images else f"row {sample.line or i}"
        items.append(CompareItem(prompt=prompt or sample.prompt, reference=sample.answer, images=tuple(sample.images),
                                 sample=None if prompt else sample, index=i, label=Path(label).name if sample.images else label))
    if not items:
        raise DataError(f"'{p}' has no usable rows to compare.", "Run `finetune-app data check` on it to see why.", file=p)
    return items


def _generate(base, item: CompareItem, images: list, settings, encoder, on_text: Callable[[str], None] | None,
              cancelled: Callable[[], bool] | None) -> str:
    from finetune_app.core.generate import stream

    pieces = []
    for piece in stream(base, item.prompt, images, settings=settings, encoder=encoder, sample=item.sample):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
        if cancelled is not None and cancelled():
            break
    return "".join(pieces).strip()


def compare_items(cache: ModelCache, model: str | None, tuned: TunedSource, items: Sequence[CompareItem], *,
                  settings=None, image_size: int | None = None, data: str = "",
                  on_row: Callable[[int, CompareRow], None] | None = None,
                  on_text: Callable[[int, str, str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> CompareResult:
    """Base and fine-tuned outputs for each item, scored against the item's reference.

    `on_text(i, "base"|"tuned", piece)` streams; `on_row(i, row)` reports each finished row."""
    import time

    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.generate import GenerationSettings

    settings = settings or GenerationSettings()
    t0 = time.perf_counter()
    model = model or recorded_base(tuned)
    if not model:
        raise ModelError("No base model to compare with.", "Give the base model (--model), or choose it on the Model & Settings screen.")
    rows: list[CompareRow] = []
    resolved: Resolved | None = None
    for i, item in enumerate(items):
        if cancelled is not None and cancelled():
            break
        row = CompareRow(index=item.index, label=item.label, image=item.image, prompt=item.prompt, reference=item.reference)
        try:
            tuned_model, resolved = cache.tuned(model, tuned)  # first: a newer checkpoint is picked up per row
            with cache.base(model) as base:
                encoder = Encoder(base, image_size=image_size)
                # dataset rows: their images as the trainer loads them (the run's image_size)
                images = encoder.load_images(item.sample) if item.sample is not None else [_load_ref(r) for r in item.images]
                row.base = _generate(base, item, images, settings, encoder,
                                     (lambda piece, i=i: on_text(i, "base", piece)) if on_text else None, cancelled)
            tuned_model, resolved = cache.tuned(model, tuned)
            row.tuned = _generate(tuned_model, item, images, settings, Encoder(tuned_model, image_size=image_size),
                                  (lambda piece, i=i: on_text(i, "tuned", piece)) if on_text else None, cancelled)
        except DataError as err:  # this item's picture: report it, go on with the others
            row.error = err.message
        row.score()
        rows.append(row)
        if on_row is not None:
            on_row(i, row)
    return CompareResult(model=str(model or ""), tuned=resolved.label if resolved else tuned.name,
                         tuned_path=str(resolved.path if resolved else tuned.path), data=data, rows=rows,
                         settings={"max_tokens": settings.max_tokens, "temperature": settings.temperature},
                         seconds=time.perf_counter() - t0)


def _load_ref(ref: ImageRef):
    from finetune_app.core.data.images import load_image

    return load_image(ref)


def run_compare(model: str | None, tuned: str | Path | TunedSource, data: str | Path, *, limit: int | None = 20,
                valid_fraction: float = 0.1, seed: int = 0, prompt: str | None = None, part: str = "valid",
                settings=None, status: StatusFn | None = None, **kwargs) -> CompareResult:
    """The whole comparison, headless, on the calling thread (what `finetune-app compare` runs)."""
    source = tuned if isinstance(tuned, TunedSource) else TunedSource.detect(tuned)
    items = items_from_data(data, valid_fraction=valid_fraction, seed=seed, limit=limit, prompt=prompt, part=part)
    cache = ModelCache(status=status)
    try:
        return compare_items(cache, model, source, items, settings=settings, data=str(data), **kwargs)
    finally:
        cache.clear()


# ---- saving -------------------------------------------------------------------------------------

CSV_FIELDS = ("index", "label", "image", "prompt", "reference", "base", "tuned", "base_exact_match", "tuned_exact_match",
              "base_bleu", "tuned_bleu", "base_rouge_l", "tuned_rouge_l", "error")


def rows_to_csv(rows: Sequence[CompareRow]) -> str:
    """The rows as CSV; text cells a spreadsheet would run as formulas get a leading quote."""
    from finetune_app.core.spreadsheet import safe_cell

    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        d = {k: safe_cell(getattr(r, k)) for k in ("index", "label", "image", "prompt", "reference", "base", "tuned",
                                                    "error")}
        for side, scores in (("base", r.base_scores), ("tuned", r.tuned_scores)):
            for k in ("exact_match", "bleu", "rouge_l"):
                v = scores.get(k)
                d[f"{side}_{k}"] = "" if v is None else f"{v:.4f}"
        w.writerow(d)
    return out.getvalue()


def save_result(result: CompareResult, path: str | Path) -> Path:
    """CSV (rows), JSON (rows, summary, verdict) or an HTML report (metrics with bootstrap
    intervals, the rows that changed most, the run's loss curves), by the file's suffix."""
    from finetune_app.core import atomic

    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        from finetune_app.core.evaluation.evaluate import from_compare
        from finetune_app.core.evaluation.report import render

        atomic.write_text(path, render(from_compare(result)))
    elif path.suffix.lower() == ".csv":
        atomic.write_text(path, rows_to_csv(result.rows))
    else:
        atomic.write_text(path, json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path


def format_table(result: CompareResult, width: int = 100) -> str:
    """The comparison as plain text for a terminal."""
    lines = [f"Base: {result.model}", f"Fine-tuned: {result.tuned} ({result.tuned_path})", f"Data: {result.data}", ""]
    col = max(20, (width - 12) // 3)

    def cut(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= col else text[: col - 1] + "…"

    lines.append(f"{'#':>4}  {'reference':<{col}}  {'base':<{col}}  {'fine-tuned':<{col}}")
    for i, r in enumerate(result.rows):
        tuned = f"ERROR: {r.error}" if r.error else r.tuned
        lines.append(f"{(r.index if r.index is not None else i):>4}  {cut(r.reference or '–'):<{col}}  {cut(r.base):<{col}}  {cut(tuned):<{col}}")
    s = result.summary()
    lines.append("")
    if s.get("scored"):
        for side, name in (("base", "base      "), ("tuned", "fine-tuned")):
            a = s[side]
            lines.append(f"{name}  exact match {a['exact_match']:.1%}  BLEU {a['bleu']:.1f}  chrF {a['chrf']:.1f}  "
                         f"ROUGE-L {a['rouge_l']:.3f}  (n={a['n']})")
    if s.get("scored"):
        lines.append(f"BLEU and chrF: corpus sacreBLEU ({scoring.signatures()['bleu']}); ROUGE-L: rouge-score F1, stemmed.")
    lines.append(result.verdict())
    return "\n".join(lines)
