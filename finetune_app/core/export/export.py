"""Export orchestrator: adapter, fused mlx-vlm / mlx-lm model (full precision or 4/8-bit), Apple's
FastVLM app bundle (mlx-swift + fastvithd.mlpackage), and the mlx-swift-lm (MLXVLM) layout.

`export(ExportOptions(...), progress=...)` does, in order: check the options (and a user's CoreML
package); load the base model; check free disk space against the size estimate (from the
safetensors headers); apply the adapter with the libraries' loaders; compute reference logits of
base+adapter on a validation prompt; fuse (dequantize + merge) and quantize when asked; write
everything into a hidden staging folder beside the destination;
strip absolute paths of this machine and refuse to continue if any remain; verify the staged
bundle with the destination's loader (or structurally, for Swift); and only then move it into
place, whole. A failure or kill at any point leaves no new bundle at the destination, and a kill
while replacing one leaves the old or the new bundle there (core.export.publish keeps a journal);
what a killed export left (staging folder, backup) is cleaned up or put back by the next export to
the same destination, before it looks at it. An existing destination is replaced only with
`overwrite=True`. A folder that cannot be written is an ExportError before the model loads.

`progress(fraction, message)` is called along the way; `should_stop()` is polled between steps
(ExportCancelled). Nothing here imports Qt.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from finetune_app.core import atomic, run_folder
from finetune_app.core.errors import ConfigError, FinetuneError
from finetune_app.core.export.publish import STAGE_MARKER, remove_stale_stages
from finetune_app.core.serving import LAYOUT_FILE, trained_layout

TARGETS = ("adapter", "mlx-vlm", "mlx-lm", "mlx-swift", "mlx-swift-lm")
TARGET_HELP = {
    "adapter": "the adapter alone (adapters.safetensors + adapter_config.json), for mlx_vlm.load / mlx_lm.load with adapter_path",
    "mlx-vlm": "a fused vision-language model folder for mlx-vlm (Python)",
    "mlx-lm": "a fused text model folder for mlx-lm (Python)",
    "mlx-swift": "FastVLM for Apple's FastVLM app: mlx-swift language model + fastvithd.mlpackage (CoreML vision encoder)",
    "mlx-swift-lm": "a fused model for mlx-swift-lm (MLXVLM / MLXLLM): mlx-vlm names, full FastVLM vision_config",
}
Progress = Callable[[float, str], None]


class ExportError(FinetuneError):
    """The export cannot be written (destination, disk space, a bundle that failed its check)."""

    exit_code = 2


class ExportCancelled(FinetuneError):
    exit_code = 130


@dataclass
class ExportOptions:
    output: str | Path
    target: str
    adapter: str | Path | None = None
    model: str | Path | None = None  # default: the base recorded in adapter_config.json
    quantize_bits: int | None = None
    group_size: int = 64
    quantize_vision: bool = False
    mlpackage: str | Path | None = None
    overwrite: bool = False
    verify: bool = True
    prompt: str | None = None
    image: str | Path | None = None


@dataclass
class ExportResult:
    output: Path
    target: str
    files: list[tuple[str, int]]
    total_bytes: int
    estimate_bytes: int
    verification: object | None = None
    fuse_summary: str = ""
    quantization: str = "none"
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def file_lines(self) -> list[str]:
        width = max((len(n) for n, _ in self.files), default=10)
        lines = [f"  {n:<{width}}  {human_bytes(s):>10}" for n, s in self.files]
        lines.append(f"  {'total':<{width}}  {human_bytes(self.total_bytes):>10}")
        return lines

    def to_dict(self) -> dict:
        return {"output": str(self.output), "target": self.target, "files": self.files,
                "total_bytes": self.total_bytes, "estimate_bytes": self.estimate_bytes,
                "fuse": self.fuse_summary, "quantization": self.quantization, "warnings": self.warnings,
                "verification": self.verification.to_dict() if self.verification is not None else None,
                "seconds": round(self.seconds, 2)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---- options ------------------------------------------------------------------------------------

def resolve_base_source(opts: ExportOptions) -> tuple[str, dict | None]:
    """(base model source, adapter_config or None)."""
    from finetune_app.core import adapters

    acfg = adapters.read_config(opts.adapter) if opts.adapter else None
    source = str(opts.model) if opts.model else ""
    if not source and acfg:
        source = str((acfg.get("finetune_app") or {}).get("base_model") or "")
    if not source:
        raise ConfigError("No base model was given, and the adapter does not record one.",
                          "Pass --model (a local folder or a Hugging Face id).", field="model")
    return source, acfg


def check_options(opts: ExportOptions) -> None:
    if opts.target not in TARGETS:
        raise ConfigError(f"Unknown export target '{opts.target}'.", f"Choose one of: {', '.join(TARGETS)}.", field="target")
    if opts.target == "adapter":
        if not opts.adapter:
            raise ConfigError("The adapter target needs an adapter folder.", "Pass --adapter DIR (a run folder).", field="adapter")
        if opts.quantize_bits:
            raise ConfigError("An adapter cannot be quantized on its own.",
                              "Choose a fused target (mlx-vlm, mlx-lm, mlx-swift) to get a quantized model.", field="quantize")
    if opts.quantize_bits is not None:
        from finetune_app.core.export.quantize import QuantizeSettings

        QuantizeSettings(int(opts.quantize_bits), int(opts.group_size), opts.quantize_vision).check()
    elif opts.quantize_vision:
        raise ConfigError("--quantize-vision needs --quantize 4 or 8.", "Add --quantize, or leave the vision tower in float.", field="quantize_vision")
    if opts.mlpackage and opts.target != "mlx-swift":
        raise ConfigError("A CoreML vision encoder (--mlpackage) only goes into the mlx-swift (FastVLM app) bundle.",
                          "Use --target mlx-swift, or leave --mlpackage out.", field="mlpackage")
    if not str(opts.output or "").strip():
        raise ConfigError("No destination folder was given.", "Pass --output DIR.", field="output")
    out = Path(opts.output).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"The destination '{out}' is a file.", "Choose a folder name for the export.", file=out)
    if out.exists() and not opts.overwrite:
        raise ExportError(f"The destination '{out}' already exists.",
                          "Choose another folder, or confirm replacing it (--force in the CLI).", file=out)
    if opts.adapter:
        a = Path(opts.adapter).expanduser().resolve()
        if out.resolve() == a or a in out.resolve().parents:
            raise ExportError("The destination is inside the adapter's run folder.", "Choose a folder outside the run folder.", file=out)


def check_target_for_model(target: str, kind: str, is_fastvlm: bool) -> None:
    if target == "mlx-vlm" and kind != "vlm":
        raise ConfigError("mlx-vlm is for vision-language models; this is a text model.", "Use --target mlx-lm.", field="target")
    if target == "mlx-lm" and kind != "text":
        raise ConfigError("mlx-lm is for text models; this is a vision-language model.", "Use --target mlx-vlm.", field="target")
    if target == "mlx-swift" and not is_fastvlm:
        raise ConfigError("The mlx-swift target is Apple's FastVLM app, which runs FastVLM models only.",
                          "Use mlx-swift-lm (MLXVLM / MLXLLM) or mlx-vlm / mlx-lm for this model.", field="target")


def layout_warning(acfg: dict | None, target: str, kind: str, model_type: str = "") -> str | None:
    """Plain words when the export target's runtime lays prompts out unlike training (not a refusal)."""
    from finetune_app.core import serving

    if not acfg or target == "adapter":
        return None
    trained = trained_layout(acfg)
    if trained is None:
        if serving.layout_name_for_export(target) == "mlx-swift":
            return ("This adapter does not record the prompt layout it was trained with (it predates serve "
                    "targets); Apple's FastVLM app puts the image after the text. Retrain with --serve-target "
                    "mlx-swift to match the app.")
        return None
    return serving.mismatch(trained, target, kind, model_type)


def check_user_mlpackage(path: Path, config: dict) -> dict:
    """check_mlpackage against this model's tower width and image size (before any work)."""
    from finetune_app.core.export import coreml_encoder

    width = int(config.get("mm_hidden_size") or 3072)
    size = int((config.get("vision_config") or {}).get("image_size") or 1024)
    return coreml_encoder.check_mlpackage(path, expected_width=width, image_size=size)


# ---- size estimate ------------------------------------------------------------------------------

def _tensor_headers(folder: Path) -> list[tuple[str, tuple[int, ...], str]]:
    out = []
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        out += [(k, tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"]
    return out


_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "U32": 4, "I32": 4, "U8": 1, "I8": 1, "I64": 8, "BOOL": 1}


def estimate_bytes(model_path: str | Path, config: dict, *, target: str, adapter: str | Path | None = None,
                   quantize_bits: int | None = None, group_size: int = 64, quantize_vision: bool = False) -> int:
    """Size of the export from the base's safetensors headers (no model is loaded)."""
    from finetune_app.core.export import bundle_mlx

    model_path = Path(model_path)
    if target == "adapter":
        a = Path(adapter)
        return sum((a / n).stat().st_size for n in (run_folder.ADAPTER_FILE, run_folder.ADAPTER_CONFIG_FILE,
                                                     run_folder.CONFIG_FILE)
                   if (a / n).is_file())
    q = config.get("quantization") or {}
    bits_in = int(q.get("bits", 0) or 0)
    float_bytes = 2
    tensors = _tensor_headers(model_path)
    for name, _, dtype in tensors:
        if not name.endswith((".scales", ".biases")) and dtype in ("F32", "F16", "BF16"):
            float_bytes = _DTYPE_BYTES[dtype]
            break
    names = {n for n, _, _ in tensors}
    total = 0
    vision_params = 0
    for name, shape, dtype in tensors:
        if name.endswith((".scales", ".biases")) and name.rsplit(".", 1)[0] + ".weight" in names:
            continue
        count = 1
        for s in shape:
            count *= s
        if dtype == "U32" and bits_in and f"{name.rsplit('.', 1)[0]}.scales" in names:
            count = count * 32 // bits_in
        is_vision = name.split(".")[0] in ("vision_tower", "vision_model", "visual")
        if is_vision:
            vision_params += count
            if target == "mlx-swift":
                continue
        quantizable = len(shape) == 2 and (not is_vision or quantize_vision) and shape[-1] % group_size == 0
        if quantize_bits and quantizable:
            total += int(count * quantize_bits / 8 + count / group_size * 2 * float_bytes)
        else:
            total += count * (_DTYPE_BYTES.get(dtype, 4) if dtype not in ("U32",) else float_bytes)
    if target == "mlx-swift":
        total += vision_params * 4 + 64 * 1024  # float32 CoreML weights + spec
    total += sum(p.stat().st_size for p in bundle_mlx.support_files(model_path))
    return int(total)


def free_space_target(dest: Path) -> Path:
    p = dest.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk_space(dest: Path, need: int) -> None:
    where = free_space_target(dest)
    free = shutil.disk_usage(where).free
    margin = int(need * 0.1) + 20 * 1024 * 1024
    if free < need + margin:
        raise ExportError(f"Not enough free disk space in '{where}': the export needs about {human_bytes(need)} "
                          f"({human_bytes(need + margin)} with a safety margin), and {human_bytes(free)} is free.",
                          "Free some space or choose a destination on another disk.", file=where)


# ---- the destination ---------------------------------------------------------------------------

def recover_destination(dest: Path) -> list[str]:
    """Clean up after (or undo) an earlier export to `dest` that was killed: see core.export.publish."""
    from finetune_app.core.export import publish

    try:
        done = publish.recover_pending() + publish.recover(dest)
        remove_stale_stages(dest)
    except OSError as err:
        raise ExportError(f"An earlier export to '{dest}' was killed and what it left could not be cleaned up "
                          f"({err.strerror or err}).", "Make the folder writable, or choose another destination.",
                          file=err.filename or dest) from None
    return done


def check_writable(dest: Path) -> None:
    """Refuse a destination whose folder cannot be written now, before the expensive work."""
    import tempfile

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{dest.name}.probe-", dir=dest.parent)
        os.rmdir(probe)
    except OSError as err:
        raise ExportError(f"Cannot write in '{dest.parent}' ({err.strerror or err}).",
                          "Choose a destination in a folder you can write to (--output), or make that folder writable.",
                          file=dest.parent) from None


def list_files(folder: Path) -> list[tuple[str, int]]:
    """(relative name, bytes); a .mlpackage counts as one entry."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.name == STAGE_MARKER:
            continue
        if p.is_dir():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            out.append((p.name + "/", size))
        elif p.is_file():
            out.append((p.name, p.stat().st_size))
    return out


# ---- the export ---------------------------------------------------------------------------------

class _Steps:
    def __init__(self, progress: Progress | None, should_stop: Callable[[], bool] | None):
        self.progress = progress
        self.should_stop = should_stop

    def __call__(self, fraction: float, message: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise ExportCancelled("The export was cancelled.", "Nothing was written.")
        if self.progress is not None:
            self.progress(max(0.0, min(1.0, fraction)), message)

    def sub(self, start: float, end: float):
        return lambda f, m: self(start + (end - start) * f, m)


def export(opts: ExportOptions, *, progress: Progress | None = None,
           should_stop: Callable[[], bool] | None = None) -> ExportResult:
    t0 = time.monotonic()
    step = _Steps(progress, should_stop)
    step(0.0, "Checking the options")
    warnings: list[str] = []
    if str(opts.output or "").strip():
        for note in recover_destination(Path(opts.output).expanduser().absolute()):
            warnings.append(note)
            step(0.0, note)
    check_options(opts)
    dest = Path(opts.output).expanduser().absolute()
    check_writable(dest)
    source, acfg = resolve_base_source(opts)

    step(0.02, "Loading the base model")
    from finetune_app.core import models

    path = models.resolve_model_path(source)
    config = models.read_config(path)
    from finetune_app.core.families import family_class

    check_target_for_model(opts.target, models.model_kind(config), family_class(config.get("model_type")).apple_app)
    if opts.mlpackage:
        check_user_mlpackage(Path(opts.mlpackage).expanduser(), config)
    base = models.load_base(path)
    base.source = source
    if opts.target == "adapter":
        need = estimate_bytes(base.path, base.config, target="adapter", adapter=opts.adapter)
    else:
        need = estimate_bytes(base.path, base.config, target=opts.target, quantize_bits=opts.quantize_bits,
                              group_size=opts.group_size, quantize_vision=opts.quantize_vision)
    check_disk_space(dest, need)

    note = layout_warning(acfg, opts.target, base.kind, getattr(base, "model_type", ""))
    if note:
        warnings.append(note)
        step(0.02, note)
    job = _Job(opts, base, acfg, dest, step, warnings)
    result = job.run(need)
    result.seconds = time.monotonic() - t0
    step(1.0, f"Exported to {dest}")
    return result


class _Job:
    """One export's state between the steps (keeps export() readable)."""

    def __init__(self, opts: ExportOptions, base, acfg: dict | None, dest: Path, step: _Steps, warnings: list[str]):
        self.opts, self.base, self.acfg, self.dest, self.step, self.warnings = opts, base, acfg, dest, step, warnings
        self.image = None
        self.prompt = ""
        self.reference = None
        self.inputs = None
        self.fuse_report = None
        self.quant = None
        self.ref_label = "base+adapter" if opts.adapter else "the base model"

    def known_paths(self) -> list:
        extra = [self.base.path, self.dest, self.dest.parent]
        if self.opts.adapter:
            extra.append(Path(self.opts.adapter).expanduser().resolve())
        if self.opts.mlpackage:
            extra.append(Path(self.opts.mlpackage).expanduser().resolve())
        return extra

    # -- reference ---------------------------------------------------------------------------------
    def _prepare_reference(self) -> None:
        from finetune_app.core.export import verify as vf
        from finetune_app.core.generate import DEFAULT_CAPTION_PROMPT

        base = self.base
        if base.kind == "vlm":
            self.image = vf.load_image(self.opts.image) if self.opts.image else vf.default_image()
            self.prompt = self.opts.prompt or DEFAULT_CAPTION_PROMPT
        else:
            self.prompt = self.opts.prompt or vf.DEFAULT_TEXT_PROMPT
        if not self.opts.verify:
            return
        self.inputs = vf.model_inputs(base, self.prompt, self.image)
        projected = None
        if base.is_fastvlm and "pixel_values" in self.inputs:  # run the tower once
            self.app_features = vf.tower_features(base.model, self.inputs["pixel_values"])
            projected = base.model.mm_projector(self.app_features)
        self.reference = vf.logits(base, self.inputs, projected=projected)
        if self.opts.target == "mlx-swift":
            self._prepare_app_reference(projected)

    def _prepare_app_reference(self, projected) -> None:
        from tokenizers import Tokenizer

        from finetune_app.core.export import bundle_swift as bs
        from finetune_app.core.export import verify as vf

        tok_json = json.loads((self.base.path / "tokenizer.json").read_text(encoding="utf-8"))
        token_id, present = bs.image_token_id(tok_json)
        if not present:
            tok_json.setdefault("added_tokens", []).append(
                {"id": token_id, "content": bs.IMAGE_TOKEN, "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": False, "special": True})
        tok = Tokenizer.from_str(json.dumps(tok_json))
        n = self.app_features.shape[1]
        ids = tok.encode(vf.app_prompt(self.prompt, n), add_special_tokens=False).ids
        self.app_reference = vf.reference_app_logits(self.base, ids, token_id, self.inputs["pixel_values"], projected)

    # -- run -----------------------------------------------------------------------------------------
    def run(self, need: int) -> ExportResult:
        from finetune_app.core.export import fuse

        opts, base, step = self.opts, self.base, self.step
        if opts.adapter:
            step(0.12, "Applying the adapter")
            fuse.apply_adapter(base, opts.adapter)
        step(0.2, "Computing reference outputs (base + adapter)" if opts.verify else "Preparing")
        self._prepare_reference()
        if opts.target != "adapter":
            step(0.3, "Merging the adapter into the base" if opts.adapter else "Preparing the weights")
            self.fuse_report = fuse.fuse(base.model, (self.acfg or {}).get("fine_tune_type", "none"))
        from finetune_app.core.export.publish import publish

        with atomic.staged_dir(self.dest, overwrite=opts.overwrite, marker=STAGE_MARKER, publish=publish) as stage:
            if opts.target == "adapter":
                self._write_adapter(stage)
            elif opts.target == "mlx-swift":
                self._write_app(stage)
            else:
                self._write_mlx(stage)
            if opts.target != "adapter" and trained_layout(self.acfg):  # the adapter's own config records it
                atomic.write_json(stage / LAYOUT_FILE, {"serve_target": trained_layout(self.acfg),
                                                        "export_target": opts.target})
            self._scrub(stage)
            verification = self._verify(stage) if opts.verify else None
            if verification is not None and not verification.ok:
                raise ExportError("The exported bundle failed its verification: " + "; ".join(verification.problems),
                                  "Nothing was written to the destination. Report this as a bug with the model you used.")
            files = list_files(stage)
            step(0.99, "Moving the bundle into place")
        total = sum(s for _, s in files)
        quant = self.quant.describe() if self.quant else "none"
        if verification is not None:
            self.warnings.extend(w for w in verification.warnings if w not in self.warnings)
        return ExportResult(output=self.dest, target=opts.target, files=files, total_bytes=total, estimate_bytes=need,
                            verification=verification, fuse_summary=self.fuse_report.summary() if self.fuse_report and opts.adapter else "",
                            quantization=quant, warnings=self.warnings)

    def _quantize(self) -> None:
        from finetune_app.core.export.quantize import QuantizeSettings, quantize_model

        if not self.opts.quantize_bits:
            return
        qv = self.opts.quantize_vision
        if qv and self.opts.target == "mlx-swift":
            self.warnings.append("--quantize-vision has no effect on the FastVLM app bundle: its vision tower is the float32 CoreML package.")
            qv = False
        self.quant = QuantizeSettings(int(self.opts.quantize_bits), int(self.opts.group_size), qv)
        self.step(0.36, f"Quantizing ({self.quant.describe()})")
        layers = quantize_model(self.base.model, self.quant)
        self.quantized_layers = layers

    def _write_mlx(self, stage: Path) -> None:
        from finetune_app.core.export import bundle_mlx

        self._quantize()
        qcfg = self.quant.config_entry() if self.quant else None
        sub = self.step.sub(0.4, 0.7)
        if self.opts.target == "mlx-swift-lm":
            bundle_mlx.write_mlxvlm_bundle(self.base, self.base.model, stage, quantization=qcfg, progress=sub)
        else:
            bundle_mlx.write_mlx_bundle(self.base, self.base.model, stage, quantization=qcfg, progress=sub)

    def _write_adapter(self, stage: Path) -> None:
        from finetune_app.core import adapters

        self.step(0.4, "Copying the adapter")
        src = Path(self.opts.adapter).expanduser()
        for name in (adapters.ADAPTER_FILE, adapters.CONFIG_FILE, run_folder.CONFIG_FILE):
            if (src / name).is_file():
                shutil.copyfile(src / name, stage / name)

    def _write_app(self, stage: Path) -> None:
        from finetune_app.core.export import bundle_swift as bs

        base = self.base
        bs.check_supported(base)
        tok_json = json.loads((base.path / "tokenizer.json").read_text(encoding="utf-8"))
        token_id, present = bs.image_token_id(tok_json)
        rows = base.model.language_model.model.embed_tokens.weight.shape[0]
        vocab = max(rows, int(base.config.get("vocab_size") or rows), token_id + 1)
        if token_id >= rows:
            self.warnings.append(f"The tokenizer has no spare vocabulary rows, so <image> (id {token_id}) got a new zero "
                                 f"embedding row: vocab_size {rows} -> {vocab}.")
            bs.pad_vocab(base.model, vocab)
        self.image_token_index = token_id
        size = bs.image_size_of(base)
        width = int(base.config.get("mm_hidden_size") or base.model.config.mm_hidden_size)
        self.app_image_size, self.app_width = size, width
        self._write_encoder(stage, size, width)
        self._quantize()
        qcfg = self.quant.config_entry() if self.quant else None
        _, warnings = bs.write_app_bundle(base, base.model, stage, quantization=qcfg, token_id=token_id,
                                          token_present=present, vocab_size=vocab, progress=self.step.sub(0.75, 0.85))
        self.warnings += warnings

    def _write_encoder(self, stage: Path, size: int, width: int) -> None:
        from finetune_app.core.errors import ModelError
        from finetune_app.core.export import bundle_swift as bs
        from finetune_app.core.export import coreml_encoder

        try:
            coreml_encoder.verify_app_contract(self.base.model.config.vision_config, image_size=size, mm_hidden_size=width)
        except ModelError as exc:
            self.warnings.append(str(exc))
        if self.opts.mlpackage:
            self.step(0.45, "Checking the chosen CoreML encoder")  # checked before loading, and again now
            coreml_encoder.check_mlpackage(Path(self.opts.mlpackage).expanduser(), expected_width=width, image_size=size)
            if (self.acfg or {}).get("finetune_app", {}).get("train_vision"):
                self.warnings.append("This adapter also trained the vision tower, but the chosen CoreML encoder was "
                                     "built elsewhere: the app will not see the fine-tuned tower.")
            bs.copy_mlpackage(Path(self.opts.mlpackage).expanduser(), stage)
        else:
            sub = self.step.sub(0.45, 0.75)
            coreml_encoder.build_fastvithd_mlpackage(self.base.model.vision_tower, self.base.model.config.vision_config,
                                                     stage / bs.PACKAGE_NAME, image_size=size,
                                                     progress=lambda f, m: sub(f, f"CoreML encoder: {m}"))

    # -- finishing -----------------------------------------------------------------------------------
    def _scrub(self, stage: Path) -> None:
        from finetune_app.core.export import paths

        self.step(0.86, "Removing this machine's paths from the bundle")
        paths.scrub_folder(stage, self.known_paths() + [stage])
        left = paths.find_machine_paths(stage, self.known_paths() + [stage])
        if left:
            raise ExportError(f"The bundle would contain absolute paths of this machine: {left[:3]}.",
                              "Nothing was written. Report this as a bug.")

    def _verify(self, stage: Path):
        from finetune_app.core.export import verify as vf

        self.step(0.88, "Verifying the export")
        target, base = self.opts.target, self.base
        full = not self.quant
        tol = vf.FULL_PRECISION_TOLERANCE if full and _is_float32(base.model) else None
        if target == "adapter":
            loader = "mlx_vlm.load(base, adapter_path=...)" if base.kind == "vlm" else "mlx_lm.load(base, adapter_path=...)"
            loaded = vf.load_with_adapter(base.path, stage, base.kind)
            text_qlora = base.kind == "text" and bool((self.acfg or {}).get("base_quantization"))
            v = vf.verify_python(loaded, loader=loader, prompt=self.prompt, image=self.image, reference=self.reference,
                                 tolerance=None if text_qlora else tol, inputs=self.inputs, reference_label=self.ref_label)
            if text_qlora:
                v.warnings.append(f"mlx-lm applies this QLoRA adapter to the base as stored (it does not quantize it), "
                                  f"so its logits differ from training by {v.max_logit_diff:.3g}; use a quantized base "
                                  "folder or export a fused model.")
            return v
        if target == "mlx-swift":
            return self._verify_app(stage, tol)
        loader = "mlx_vlm.load" if base.kind == "vlm" else "mlx_lm.load"
        if target == "mlx-swift-lm":
            loader += " (same names and config MLXVLM/MLXLLM read; mlx-swift-lm cannot run here)"
        loaded = vf.load_bundle(stage, base.kind)
        v = vf.verify_python(loaded, loader=loader, prompt=self.prompt, image=self.image, reference=self.reference,
                             tolerance=tol, inputs=self.inputs, reference_label=self.ref_label)
        if target == "mlx-swift-lm" and base.is_fastvlm:
            self._check_mlxvlm(stage, v)
        return v

    def _check_mlxvlm(self, stage: Path, v) -> None:
        from finetune_app.core import patches

        cfg = json.loads((stage / "config.json").read_text(encoding="utf-8"))
        missing = [k for k in patches.fastvlm_vision_config.FASTVLM_VISION_KEYS if k not in (cfg.get("vision_config") or {})]
        top = [k for k in ("eos_token_id", "mm_projector_type", "mm_hidden_size", "tokenizer_model_max_length",
                           "tokenizer_padding_side") if k not in cfg]
        if missing or top:
            v.problems.append(f"config.json lacks keys MLXVLM needs: {missing + top}")
        else:
            v.checks.append("config.json has the full vision_config and top-level keys MLXVLM decodes")
        pre = json.loads((stage / "preprocessor_config.json").read_text(encoding="utf-8"))
        if pre.get("processor_class") != "FastVLMProcessor":
            v.problems.append("preprocessor_config.json does not name FastVLMProcessor")

    def _verify_app(self, stage: Path, tol):
        from finetune_app.core.export import verify as vf

        v = vf.check_app_structure(stage, mlpackage_width=self.app_width, image_size=self.app_image_size)
        v.reference = self.ref_label
        if not v.ok:
            return v
        _ids, got, text = vf.simulate_app(stage, self.app_features, self.prompt)
        ref = self.app_reference
        n = min(ref.shape[-1], got.shape[-1])
        v.prompt, v.output = self.prompt, text
        v.max_logit_diff = vf.max_diff(got[..., :n], ref[..., :n])
        v.tolerance = tol
        what = "app forward simulated on the exported weights (256 <image> tokens replaced by the tower features)"
        if tol is not None and v.max_logit_diff > tol:
            v.problems.append(f"{what}: logits differ from {v.reference} by {v.max_logit_diff:.3g}")
        else:
            v.checks.append(what)
        v.warnings.append("The bundle's numbers were checked here; loading it in the Swift app itself needs a Mac with Xcode.")
        return v


def _is_float32(model) -> bool:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return all(v.dtype == mx.float32 for _, v in tree_flatten(model.language_model.parameters() if hasattr(model, "language_model") else model.parameters())
               if mx.issubdtype(v.dtype, mx.floating))
