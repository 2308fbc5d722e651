"""Load a base model (VLM through mlx-vlm, text LLM through mlx-lm) and describe it.

A model is a hub id (downloaded with huggingface_hub into the normal HF cache, with progress) or a
local folder. Loading goes through the libraries' own loaders, so what trains here is exactly what
`mlx_vlm.load` / `mlx_lm.load` give a user.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from finetune_app.core.errors import ModelError

log = logging.getLogger(__name__)

# Families (core/families) name the models the engine is tested on; other models mlx-vlm /
# mlx-lm load are trained through the generic family.
# mlx-vlm says these cannot be trained (mlx_vlm.trainer.core.not_supported_for_training).
UNTRAINABLE = {"gemma3n": "its audio/vision towers are not differentiable in mlx-vlm",
               "qwen3_omni": "mlx-vlm does not support training it"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

ProgressFn = Callable[[int, int, str], None]  # (done_bytes, total_bytes, what)


@dataclass
class BaseModel:
    """A loaded base model with its processor (VLM) or tokenizer (text)."""

    model: Any
    processor: Any
    kind: str  # "vlm" or "text"
    model_type: str
    path: Path
    config: dict = field(repr=False)
    source: str = ""  # what the user gave (hub id or folder)
    # the prompt layout its adapter (adapters.load_into) or fused bundle was trained with: our own
    # generation renders prompts that way (None: auto, the runtime's default)
    serve_target: str | None = None
    reading: "WeightRead | None" = field(default=None, repr=False, compare=False)  # load_base(read_later=True)

    def wait_for_weights(self) -> None:
        """The weights are in memory once this returns (load_base(read_later=True)); raises the
        read's ModelError. Cheap when there is nothing to wait for."""
        reading, self.reading = self.reading, None
        if reading is not None:
            reading.wait()

    def while_reading(self, work: Callable[[], Any]) -> Any:
        """`work()`, with the weights read meanwhile where they are read on this thread (GPU: see
        WeightRead): then `work` runs on a thread of its own while this one reads, so the run's
        setup takes the longer of the two, not their sum (#16 textwarm). `work` must not use MLX
        (the data preparation of a text model does not). The read's failure comes first, as when
        the weights were read up front; then `work`'s."""
        reading = self.reading
        if reading is None or reading.threaded:
            return work()
        done: dict = {}

        def run() -> None:
            try:
                done["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread below
                done["error"] = exc

        worker = threading.Thread(target=run, name="prepare-rows", daemon=True)
        worker.start()
        try:
            self.wait_for_weights()
        finally:
            worker.join()
        if "error" in done:
            raise done["error"]
        return done["value"]

    @property
    def family(self) -> str:
        """The name people know the model's family by."""
        from finetune_app.core.families import display_name

        return display_name(self.model_type)

    @property
    def is_fastvlm(self) -> bool:
        """Apple's FastVLM app runs this model (its family says so)."""
        from finetune_app.core.families import family_class

        return family_class(self.model_type).apple_app

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer (under mlx-lm's wrapper or the VLM processor)."""
        from finetune_app.core.patches.hf_tokenizer import unwrap

        return unwrap(getattr(self.processor, "tokenizer", self.processor))


@dataclass(frozen=True)
class ModelInfo:
    family: str
    kind: str
    model_type: str
    parameters: int
    dtype: str
    quantization: str  # "none" or e.g. "4-bit (group 64)"
    path: str

    def summary(self) -> str:
        kind = "vision-language" if self.kind == "vlm" else "text"
        return (f"{self.family} ({kind}), {_human_count(self.parameters)} parameters, {self.dtype}, "
                f"quantization: {self.quantization}")


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


# ---- resolving ---------------------------------------------------------------------------------

def resolve_model_path(source: str | Path, *, progress: ProgressFn | None = None,
                       revision: str | None = None) -> Path:
    """A local folder as is; a hub id downloaded (or found) in the HF cache.

    The hub is tried only for text shaped like `owner/name` that is not clearly a local path (it
    does not start with `.`, `/` or `~`, and `owner` is not a folder here): `models/mine` beside an
    existing `models/` folder is a missing local folder, not a download."""
    return _resolved(source, progress, revision)[0]


def _resolved(source: str | Path, progress: ProgressFn | None = None,
              revision: str | None = None) -> tuple[Path, dict]:
    """(folder, its config.json), the folder checked once (its checks parse tokenizer.json)."""
    text = str(source).strip()
    if not text:
        raise ModelError("No base model was given.", "Choose a local model folder or enter a Hugging Face id such as mlx-community/FastVLM-0.5B-bf16.")
    if "\0" in text:
        raise ModelError("The model path contains a NUL character.", "Choose the model folder again.", field="model")
    path = Path(text).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ModelError(f"Model path '{text[:200]}' cannot be used ({exc.strerror or exc}).", "Check the path.") from None
    if exists:
        if not path.is_dir():
            raise ModelError(f"'{path}' is a file, not a model folder.", "Choose the folder that holds config.json and the .safetensors weights.", file=path)
        return path.resolve(), _check_folder(path)
    if not looks_like_hub_id(text):
        raise ModelError(f"Model folder '{text}' does not exist.",
                         "Check the path, or give a Hugging Face id in the form owner/name.", file=text)
    return _download(text, progress=progress, revision=revision)


def looks_like_hub_id(text: str) -> bool:
    """`owner/name` that cannot be a local path: no leading `.`, `/` or `~`, and no folder `owner` here."""
    if not HUB_ID.match(text) or text.startswith((".", "/", "~")):
        return False
    return not Path(text.split("/", 1)[0]).expanduser().exists()


def _check_folder(path: Path) -> dict:
    """A model folder we may hand to the libraries (see core.model_folder); its config.json."""
    from finetune_app.core.model_folder import check_model_folder

    return check_model_folder(path)


def _download(repo_id: str, *, progress: ProgressFn | None, revision: str | None) -> tuple[Path, dict]:
    import huggingface_hub
    from huggingface_hub.utils import (GatedRepoError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    patterns = ["*.json", "*.jsonl", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
    kwargs: dict[str, Any] = dict(repo_id=repo_id, revision=revision, allow_patterns=patterns)
    if progress is not None:
        kwargs["tqdm_class"] = _progress_tqdm(progress, repo_id)
    try:
        path = Path(huggingface_hub.snapshot_download(**kwargs))
    except RepositoryNotFoundError:
        raise ModelError(f"'{repo_id}' is not a local model folder and was not found on Hugging Face (or it is private).",
                         "If it is a local folder, check the path; if it is a Hugging Face id, check its spelling, or log in "
                         "with `hf auth login` if it is private.", file=repo_id) from None
    except GatedRepoError:
        raise ModelError(f"'{repo_id}' is gated on Hugging Face.", "Accept its licence on huggingface.co and log in with `hf auth login`.") from None
    except RevisionNotFoundError:
        raise ModelError(f"Revision '{revision}' of '{repo_id}' does not exist.", "Leave the revision empty or pick an existing branch or tag.") from None
    except LocalEntryNotFoundError:
        raise ModelError(f"'{repo_id}' is neither a local model folder nor in the local Hugging Face cache, and it cannot be "
                         "downloaded: this machine is offline (or HF_HUB_OFFLINE is set).",
                         "If it is a local folder, check the path; if it is a Hugging Face id, connect to the internet "
                         "and try again, or download the model elsewhere and choose its local folder.", file=repo_id) from None
    except OSError as exc:
        raise ModelError(f"Downloading '{repo_id}' failed: {exc}.", "Check the network connection and free disk space, then try again.") from None
    except Exception as exc:  # network errors from httpx/requests
        name = type(exc).__name__
        if "Connect" in name or "Timeout" in name or "Network" in name or "HTTP" in name:
            raise ModelError(f"Cannot reach Hugging Face to download '{repo_id}' ({name}).",
                             "Check the network connection, or choose a local model folder.") from None
        raise
    return path, _check_folder(path)  # the downloaded snapshot gets the same checks as a local folder


def _progress_tqdm(progress: ProgressFn, what: str):
    from tqdm.auto import tqdm

    class ProgressTqdm(tqdm):  # huggingface_hub reports bytes through a tqdm class
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            if self.unit == "B" or (self.total and self.total > 1000):
                progress(int(self.n), int(self.total or 0), what)
            return out

    return ProgressTqdm


def read_config(path: Path) -> dict:
    from finetune_app.core.model_folder import read_json_object

    return read_json_object(Path(path) / "config.json")


def model_kind(config: dict) -> str:
    """'vlm' or 'text', from config.json, refusing models neither library can train."""
    model_type = str(config.get("model_type", "")).lower()
    if not model_type:
        raise ModelError("config.json has no model_type, so the architecture is unknown.", "Use a model converted for MLX (mlx-community) whose config.json names its model_type.")
    if model_type in UNTRAINABLE:
        raise ModelError(f"{model_type} models cannot be fine-tuned here: {UNTRAINABLE[model_type]}.", "Choose another model, e.g. Qwen2.5-VL or FastVLM.")
    from finetune_app.core.families import known_vlm

    if known_vlm(model_type) or any(k in config for k in ("vision_config", "mm_projector_type", "img_processor")):
        return "vlm"
    return "text"


# ---- loading -----------------------------------------------------------------------------------

def load_base(source: str | Path, *, progress: ProgressFn | None = None, lazy: bool = False,
              read_later: bool = False) -> BaseModel:
    """Load a base model through mlx-vlm or mlx-lm, refusing clearly what they cannot load.

    The folder is checked first (core.model_folder: no code of its own, sane sizes, readable
    headers), and the loaders are told `trust_remote_code=False` (the no_remote_code patch
    holds even where a library asks for True).

    `read_later` (a text model): the model is built and its weight files matched to it as now, but
    the weights are read on a thread of their own (`WeightRead`), so the caller's next steps (LoRA
    attach, tokenising the data) overlap the read; it calls `base.wait_for_weights()` before
    anything evaluates the model (#16 startup2). For a VLM (and for a text model on a GPU), it
    also hands the loader the arrays `read_ahead` began reading; mlx-vlm's eager load then waits
    for them."""
    from finetune_app.core import patches

    path, config = _resolved(source, progress)
    kind = model_kind(config)
    # mlx-lm only needs the no-code wall; the other patches change mlx-vlm's classes, and importing
    # mlx-vlm for them costs a text run seconds before its first step (#16)
    patches.apply(only=None if kind == "vlm" else ("no_remote_code",))
    model_type = str(config["model_type"]).lower()
    # (see WeightRead: another thread can read only the main thread's arrays, and only on the CPU
    # back-end: on Metal and CUDA MLX 0.32 refuses that, "There is no Stream(gpu, 0) in current
    # thread", ml-explore/mlx#3529: there the main thread reads, and the data preparation runs on a
    # thread meanwhile, BaseModel.while_reading)
    eager_here = read_later and not lazy and threading.current_thread() is threading.main_thread()
    later = eager_here and kind == "text"
    ahead = _READ_AHEAD.pop(_key(path), None) if eager_here else None  # (a VLM's too: mlx-vlm reads eagerly)
    if eager_here:
        _READ_AHEAD.clear()  # a read begun for another folder is dropped, not held
    try:
        if kind == "vlm":
            from mlx_vlm.utils import load as vlm_load

            with _weights_read_ahead(ahead, "mlx_vlm.utils"):
                model, processor = vlm_load(str(path), lazy=lazy, trust_remote_code=False)
        else:
            import mlx_lm

            with _weights_read_ahead(ahead, "mlx_lm.utils"):
                model, processor = mlx_lm.load(str(path), lazy=lazy or later, trust_remote_code=False,
                                               tokenizer_config={"trust_remote_code": False})
    except ModelError:
        raise
    except Exception as exc:  # the libraries' own errors (ValueError, RuntimeError from MLX, JSON, ...)
        raise _load_failed(exc, path, kind, model_type) from None
    model.eval()
    from finetune_app.core.serving import bundle_layout

    base = BaseModel(model=model, processor=processor, kind=kind, model_type=model_type, path=path,
                     config=config, source=str(source), serve_target=bundle_layout(path))
    if later:
        base.reading = WeightRead(base, threaded=not reads_on_main_thread())
    return base


def reads_on_main_thread() -> bool:
    """Whether a run's weights are read on the main thread (Metal, CUDA: see WeightRead)."""
    from finetune_app.core.training.backend import on_cpu

    return not on_cpu()


# ---- reading ahead (#16 readearly) -------------------------------------------------------------
# On a GPU the main thread reads the weights (WeightRead), and before this it read them only after
# the imports (transformers, mlx-lm: seconds of Python). `read_ahead` starts the read as soon as the
# folder is known: `mx.load` (lazy) of the files mlx-lm would load and `mx.async_eval` of them, so
# MLX reads them on its own threads, without the GIL, while this one imports (on the CPU back-end
# part of the read happens in the `async_eval` call itself: docs/performance.md); load_base hands
# those arrays to mlx-lm's (a VLM: mlx-vlm's) own loader (construction, sanitize, quantization
# unchanged) in place of its `mx.load`, so nothing is read twice.
_READ_AHEAD: dict[str, dict[str, dict]] = {}  # folder -> {weight file -> its arrays}


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def _loader_files(folder: Path, kind: str) -> list[str]:
    """The weight files the library's loader reads (read ahead no others: a stray file would be read
    and held for nothing). mlx-lm 0.32: `model*.safetensors`; mlx-vlm 0.7.10 `load_model`: the
    existing shards of model.safetensors.index.json's weight_map, else `*.safetensors` but
    consolidated.safetensors."""
    import glob

    if kind != "vlm":
        return glob.glob(str(folder / "model*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            found = [str(folder / s) for s in sorted(shards) if (folder / s).exists()]
        except (ValueError, OSError, AttributeError):
            found = []
        if found:
            return found
    return [f for f in glob.glob(str(folder / "*.safetensors")) if not f.endswith("consolidated.safetensors")]


def read_ahead(folder: str | Path, kind: str = "text") -> bool:
    """Start reading a model's weights now (where the main thread reads them: a GPU); the next
    `load_base(folder, read_later=True)` on this thread uses them (a text model's through
    mlx-lm's loader, a VLM's through mlx-vlm's: #16 readearly, vlmtorch). A folder whose weight files
    do not pass model_folder's header check is left to the load, which says what is wrong with it.
    True when a read was started."""
    if not reads_on_main_thread() or threading.current_thread() is not threading.main_thread():
        return False
    import mlx.core as mx

    from finetune_app.core.model_folder import check_weights

    folder = Path(folder)
    try:
        check_weights(folder)
        files = {_key(f): mx.load(f) for f in _loader_files(folder, kind)}
        if not files:
            return False
        mx.async_eval([a for arrays in files.values() for a in arrays.values()])
    except (ModelError, OSError, ValueError, RuntimeError):
        return False
    _READ_AHEAD.clear()
    _READ_AHEAD[_key(folder)] = files
    return True


class _MlxWithReadAhead:
    """mlx.core as the loader's module (mlx_lm.utils, mlx_vlm.utils) sees it during one load: `load` of a file read ahead gives the
    arrays already being read (each once); everything else is mlx.core's."""

    def __init__(self, mx, files: dict[str, dict]):
        self._mx, self._files = mx, files

    def __getattr__(self, name: str):
        return getattr(self._mx, name)

    def load(self, file, *args, **kwargs):
        arrays = None if args or kwargs else self._files.pop(_key(file), None)
        return dict(arrays) if arrays is not None else self._mx.load(file, *args, **kwargs)


class _weights_read_ahead:
    """Within the block, the loader in module `loader` (mlx_lm.utils, mlx_vlm.utils: both read the
    weight files with their module's `mx.load`) takes the arrays `read_ahead` started reading."""

    def __init__(self, files: dict[str, dict] | None, loader: str):
        self.files, self.loader, self.utils = files, loader, None

    def __enter__(self):
        if self.files:
            import importlib

            self.utils = importlib.import_module(self.loader)
            self.real = self.utils.mx
            self.utils.mx = _MlxWithReadAhead(self.real, self.files)
        return self

    def __exit__(self, *exc) -> None:
        if self.utils is not None:
            self.utils.mx = self.real
        self.files = None


def _load_failed(exc: BaseException, path: Path, kind: str, model_type: str) -> ModelError:
    """The located error for a library's failure to load (or read) the model in `path`."""
    if isinstance(exc, MemoryError):
        return ModelError(f"Not enough memory to load the model in '{path}'.",
                          "Close other apps or choose a smaller (or quantized) model.", file=path)
    msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if "not supported" in msg or isinstance(exc, ImportError):
        return ModelError(f"{model_type} models are not supported by {'mlx-vlm' if kind == 'vlm' else 'mlx-lm'} ({msg}).",
                          "Choose a supported family: FastVLM, Qwen2/2.5/3-VL, Llama, Qwen2/3 or Mistral.", file=path)
    if "Could not load any image processor class" in msg:  # e.g. Idefics3 on transformers 5.17 without torch
        from importlib.metadata import version

        from finetune_app.core.patches.transformers_without_torch import pil_files_need_torch

        advice = ("Upgrade transformers (5.18 or later: pip install -U transformers), or install torchvision."
                  if pil_files_need_torch() else "Install torchvision (pip install torchvision): this model's "
                  "image processor needs it.")
        return ModelError(f"transformers {version('transformers')} could not build the image processor of the model in "
                          f"'{path}' ({msg}).", advice, file=path)
    return ModelError(f"Could not load the model in '{path}': {type(exc).__name__}: {msg}.",
                      "The folder may be incomplete or from an incompatible converter; re-download it or convert it again with mlx-vlm / mlx-lm.", file=path)


class WeightRead:
    """A lazily loaded model's weights read on a thread of their own (#16 startup2).

    `mx.eval` of the loader's arrays (the file read; on CUDA also the copy to the device) releases
    the GIL, so the run's Python-heavy setup after the load (LoRA attach and its imports, the
    tokeniser over every row) runs meanwhile instead of after it. Only this thread evaluates the
    base weights until `wait()`; the caller builds graphs on them (LoRA layers) but evaluates
    nothing of the model before then.

    MLX 0.32 streams are thread-local: arrays made on a thread other than the main one cannot be
    evaluated elsewhere ("There is no Stream(cpu, 1) in current thread"), so load_base starts this
    only on the main thread (the CLI), and `wait()` evaluates on the caller's thread whatever the
    reading thread could not; only a failure there is the load's error (a located ModelError).
    On Metal and CUDA (`threaded=False`) nothing reads until `wait()`, which reads on the caller's
    thread, and the data preparation runs on a thread meanwhile instead (BaseModel.while_reading)."""

    def __init__(self, base: BaseModel, threaded: bool = True):
        from mlx.utils import tree_flatten

        self.path, self.kind, self.model_type = base.path, base.kind, base.model_type
        self.error: BaseException | None = None
        self._model = base.model
        self.threaded = threaded  # False (GPU): `wait()` reads, on the caller's thread (while_reading)
        self._thread = None
        if threaded:
            arrays = [v for _, v in tree_flatten(base.model.parameters())]
            self._thread = threading.Thread(target=self._read, args=(arrays,), name="read-weights", daemon=True)
            self._thread.start()

    def _read(self, arrays: list) -> None:
        import mlx.core as mx

        try:
            mx.eval(arrays)
        except BaseException as exc:  # noqa: BLE001 - handed to wait(), on the caller's thread
            self.error = exc
        finally:
            del arrays[:]
            mx.clear_streams()  # a thread that used MLX releases its streams (docs/engine.md "Threads")

    def wait(self) -> None:
        """Block until the weights are in memory; the read's failure as a located ModelError."""
        import mlx.core as mx

        if self._thread is not None:
            self._thread.join()
        model, self._model = self._model, None
        if model is not None and (self.error is not None or not self.threaded):
            self.error = None
            try:  # here, on the thread that made the arrays (an evaluated one is skipped)
                mx.eval(model.parameters())
            except Exception as exc:  # noqa: BLE001 - the libraries' own errors, located
                raise _load_failed(exc, self.path, self.kind, self.model_type) from None


# ---- describing --------------------------------------------------------------------------------

def count_parameters(model) -> int:
    """Parameter count of the original weights (a 4-bit packed matrix counts its logical size)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    def count(module) -> int:
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return module.weight.size * (32 // module.bits) + (module.bias.size if "bias" in module else 0)
        return sum(v.size for _, v in tree_flatten(module.parameters()))

    leaves = tree_flatten(model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module))
    return int(sum(count(m) for _, m in leaves))


def describe(base: BaseModel) -> ModelInfo:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    dtypes: dict[str, int] = {}
    for _, v in tree_flatten(base.model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            dtypes[str(v.dtype).replace("mlx.core.", "")] = dtypes.get(str(v.dtype).replace("mlx.core.", ""), 0) + v.size
    dtype = max(dtypes, key=dtypes.get) if dtypes else "unknown"
    q = base.config.get("quantization") or base.config.get("quantization_config") or {}
    quant = f"{q['bits']}-bit (group {q.get('group_size', 64)})" if isinstance(q, dict) and q.get("bits") else "none"
    return ModelInfo(family=base.family, kind=base.kind, model_type=base.model_type,
                     parameters=count_parameters(base.model), dtype=dtype, quantization=quant,
                     path=str(base.path))
