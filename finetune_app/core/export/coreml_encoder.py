"""The CoreML vision encoder of Apple's FastVLM app (`fastvithd.mlpackage`), built on any OS.

The FastViTHD graph is written once (`fastvit_graph.define_fastvithd`) over an op interface; here
is its second backend, `MilOps`, which emits a CoreML MIL program with coremltools' builder. The
program is converted like Apple's exporter does (ml-fastvlm `model_export/export_vision_encoder.py`:
mlprogram, minimum deployment target iOS16, compute precision float32) and saved atomically.

Contract (FastVLM.swift, `Vision.VisionModelCoreML.encode`): input `images` float32
[1, 3, S, S] (NCHW, RGB, pixels already scaled to [0, 1]: the app's processor resamples the
CIImage, applies mean 0 / std 1 from preprocessor_config.json and hands the planar array straight
to `prediction(images:)`; Apple's exporter traces the tower without any rescale), output
`image_features` float32 [1, (S/64)^2, width] where width is the tower's `mm_hidden_size`;
the app itself requires [1, 256, 3072] (S = 1024, real FastViTHD).

CoreML cannot predict or compile on Linux. What can be checked here: the numpy evaluation of the
same definition against the MLX tower (`evaluate_graph_numpy`), the package's spec (names,
dtypes, shapes: `check_mlpackage`), and the saved program itself, read back from the package
and interpreted with numpy (`read_mlpackage_program`, `evaluate_mlpackage_numpy`), which also
covers coremltools' graph passes (BatchNorm and layer-scale folding, etc.).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from finetune_app.core import atomic
from finetune_app.core.errors import FinetuneError, ModelError
from finetune_app.core.export import fastvit_graph as fg

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "image_features"
PACKAGE_NAME = "fastvithd.mlpackage"

Progress = Callable[[float, str], None]


def _coremltools():
    """Import coremltools quietly (on Linux it logs that its native runtime is missing)."""
    root = logging.getLogger()
    ct_log = logging.getLogger("coremltools")
    level = ct_log.level
    ct_log.setLevel(logging.ERROR)
    previous = root.level
    try:
        import coremltools as ct
    finally:
        ct_log.setLevel(level)
        root.setLevel(previous)
    return ct


# --------------------------------------------------------------------------------------------
# MIL builder backend
# --------------------------------------------------------------------------------------------

class MilOps(fg.Ops):
    """Emits each op with `coremltools.converters.mil.Builder` (inside an `mb.program`)."""

    def __init__(self):
        from coremltools.converters.mil import Builder as mb
        self.mb = mb

    def const(self, name, value):
        return self.mb.const(val=np.ascontiguousarray(value, dtype=np.float32), name=name)

    def shape(self, x):
        return tuple(int(d) for d in x.shape)

    def _n(self, kw, name):
        if name:
            kw["name"] = name
        return kw

    def conv(self, x, weight, bias, *, stride, pad, groups, name=None):
        kw = dict(x=x, weight=weight, strides=[stride, stride], pad_type="custom",
                  pad=[pad, pad, pad, pad], dilations=[1, 1], groups=groups)
        if bias is not None:
            kw["bias"] = bias
        return self.mb.conv(**self._n(kw, name))

    def batch_norm(self, x, mean, var, gamma, beta, *, eps, name=None):
        return self.mb.batch_norm(**self._n(dict(x=x, mean=mean, variance=var, gamma=gamma,
                                                 beta=beta, epsilon=np.float32(eps)), name))

    def layer_norm_channels(self, x, gamma, beta, *, eps, name=None):
        return self.mb.layer_norm(**self._n(dict(x=x, axes=[1], gamma=gamma, beta=beta,
                                                 epsilon=np.float32(eps)), name))

    def gelu(self, x, name=None):
        return self.mb.gelu(**self._n(dict(x=x, mode="EXACT"), name))

    def relu(self, x, name=None):
        return self.mb.relu(**self._n(dict(x=x), name))

    def sigmoid(self, x, name=None):
        return self.mb.sigmoid(**self._n(dict(x=x), name))

    def add(self, x, y, name=None):
        return self.mb.add(**self._n(dict(x=x, y=y), name))

    def mul(self, x, y, name=None):
        return self.mb.mul(**self._n(dict(x=x, y=y), name))

    def scale(self, x, factor, name=None):
        return self.mb.mul(**self._n(dict(x=x, y=np.float32(factor)), name))

    def linear(self, x, weight, bias, name=None):
        kw = dict(x=x, weight=weight)
        if bias is not None:
            kw["bias"] = bias
        return self.mb.linear(**self._n(kw, name))

    def matmul(self, x, y, *, transpose_y=False, name=None):
        return self.mb.matmul(**self._n(dict(x=x, y=y, transpose_x=False,
                                             transpose_y=transpose_y), name))

    def softmax(self, x, *, axis, name=None):
        return self.mb.softmax(**self._n(dict(x=x, axis=axis), name))

    def reshape(self, x, shape, name=None):
        return self.mb.reshape(**self._n(dict(x=x, shape=[int(s) for s in shape]), name))

    def transpose(self, x, perm, name=None):
        return self.mb.transpose(**self._n(dict(x=x, perm=[int(p) for p in perm]), name))

    def split(self, x, *, parts, axis, name=None):
        return list(self.mb.split(**self._n(dict(x=x, num_splits=parts, axis=axis), name)))

    def mean_spatial(self, x, name=None):
        return self.mb.reduce_mean(**self._n(dict(x=x, axes=[2, 3], keep_dims=True), name))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _arch(vision_tower, vision_config) -> fg.FastViTArch:
    if vision_config is None:
        vision_config = getattr(getattr(vision_tower, "vision_model", None), "config", None)
    return fg.FastViTArch.from_config(vision_config)


def expected_features_shape(vision_config, image_size: int = fg.APP_IMAGE_SIZE
                            ) -> tuple[int, int, int]:
    """[1, (S/64)^2, embed_dims[-1] * cls_ratio] for this tower config."""
    return fg.FastViTArch.from_config(vision_config).features_shape(image_size)


def verify_app_contract(vision_config, *, image_size: int = fg.APP_IMAGE_SIZE,
                        mm_hidden_size: int | None = None) -> tuple[int, int, int]:
    """Raise unless this tower yields what Apple's FastVLM app requires: [1, 256, 3072] at 1024.

    `mm_hidden_size` (the model config's), when given, must also equal the tower width, since
    the projector `multi_modal_projector.linear_0` takes that many inputs."""
    arch = fg.FastViTArch.from_config(vision_config)
    shape = arch.features_shape(image_size)
    problems = []
    if image_size != fg.APP_IMAGE_SIZE:
        problems.append(f"the image size is {image_size} px (the app feeds "
                        f"{fg.APP_IMAGE_SIZE} px)")
    if shape != fg.APP_FEATURES_SHAPE:
        problems.append(f"the vision tower outputs {list(shape)} features (the app checks "
                        f"{list(fg.APP_FEATURES_SHAPE)})")
    if mm_hidden_size is not None and int(mm_hidden_size) != arch.feature_width:
        problems.append(f"mm_hidden_size is {mm_hidden_size} but the tower's width is "
                        f"{arch.feature_width}")
    if problems:
        raise ModelError(
            "This model cannot run in Apple's FastVLM app: " + "; ".join(problems) + ".",
            "Export FastVLM models with the stock FastViTHD tower (embed_dims ending in 1536, "
            "cls_ratio 2) at 1024 px, or choose the mlx-vlm export target instead.")
    return shape


def build_mil_program(vision_tower, vision_config=None, *, image_size: int = fg.APP_IMAGE_SIZE,
                      weights: Mapping[str, np.ndarray] | None = None,
                      on_stage: Callable[[int, int], None] | None = None):
    """The MIL program (pymil `Program`) of the encoder, before coremltools' passes."""
    ct = _coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    arch = _arch(vision_tower, vision_config)
    if weights is None:
        weights = fg.tower_weights(vision_tower)
    if image_size % arch.total_stride:
        raise FinetuneError(f"Image size {image_size} is not a multiple of the tower's stride "
                            f"{arch.total_stride}.", "Use 1024 (FastVLM's size).")

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, image_size, image_size),
                                            dtype=types.fp32)],
                opset_version=ct.target.iOS16)
    def prog(images):
        return fg.define_fastvithd(MilOps(), images, weights, arch, output_name=OUTPUT_NAME,
                                   on_stage=on_stage)

    return prog


def build_fastvithd_mlpackage(vision_tower, vision_config, dest: Path, *,
                              image_size: int = fg.APP_IMAGE_SIZE,
                              progress: Progress | None = None,
                              overwrite: bool = True) -> Path:
    """Write the tower as a CoreML `.mlpackage` folder at `dest` (atomically) and return `dest`.

    `vision_tower` is mlx-vlm's FastVLM `VisionModel` (`model.vision_tower`), fine-tuned or not;
    its weights are read as they are now. `vision_config` gives the architecture lists (None:
    the tower's own `vision_model.config`). `progress(fraction, message)` is called along the
    way. The output width follows the config; use `verify_app_contract` first when the result
    must run in Apple's app. `dest` should be named `fastvithd.mlpackage` for the app (Xcode
    derives the class name from it)."""
    dest = Path(dest)
    if dest.suffix != ".mlpackage":
        raise FinetuneError(f"The CoreML encoder must be saved as a '.mlpackage' folder, not "
                            f"'{dest.name}'.", f"Name it {PACKAGE_NAME}.")
    if dest.exists() and not overwrite:
        raise FinetuneError(f"{dest} already exists.", "Choose another folder or allow "
                            "overwriting.")

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(float(fraction), message)

    t0 = time.monotonic()
    report(0.0, "Reading the vision tower's weights")
    arch = _arch(vision_tower, vision_config)
    weights = fg.tower_weights(vision_tower)
    shape = arch.features_shape(image_size)

    report(0.1, "Building the CoreML program")
    prog = build_mil_program(
        vision_tower, vision_config, image_size=image_size, weights=weights,
        on_stage=lambda i, n: report(0.1 + 0.2 * i / n, f"Building stage {i + 1} of {n}"))

    ct = _coremltools()
    report(0.3, "Converting to an ML program (float32, iOS 16)")
    mlmodel = ct.convert(prog, convert_to="mlprogram",
                         minimum_deployment_target=ct.target.iOS16,
                         compute_precision=ct.precision.FLOAT32,
                         skip_model_load=True)
    mlmodel.short_description = ("FastViTHD vision encoder for FastVLM (features before the "
                                 "multimodal projector).")
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image, NCHW float32 [1, 3, {image_size}, {image_size}], values in [0, 1].")
    mlmodel.output_description[OUTPUT_NAME] = (
        f"Vision features float32 {list(shape)} (B x H*W x C).")
    meta = mlmodel.user_defined_metadata
    meta["com.finetune.image_size"] = str(image_size)
    meta["com.finetune.features_shape"] = ",".join(str(s) for s in shape)
    meta["com.finetune.embed_dims"] = ",".join(str(d) for d in arch.embed_dims)
    meta["com.finetune.layers"] = ",".join(str(d) for d in arch.layers)

    report(0.8, "Saving the package")
    with atomic.temp_path(dest) as tmp:
        mlmodel.save(str(tmp))
    report(1.0, f"Saved {dest.name} in {time.monotonic() - t0:.1f} s")
    return dest


def evaluate_graph_numpy(vision_tower, vision_config, images: np.ndarray) -> np.ndarray:
    """The CPU (numpy, float32) evaluation of the same definition the package is built from.

    images [N, 3, H, W] float32 in [0, 1] -> features [N, H*W/64^2, width]."""
    arch = _arch(vision_tower, vision_config)
    return fg.evaluate_numpy(images, fg.tower_weights(vision_tower), arch)


# --------------------------------------------------------------------------------------------
# Checking an existing package
# --------------------------------------------------------------------------------------------

_FEATURE_TYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32"}


def _array_desc(feature) -> tuple[str, str, list[int]]:
    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        return kind or "unknown", "", []
    t = feature.type.multiArrayType
    shape = [int(s) for s in t.shape]
    if not shape and t.WhichOneof("ShapeFlexibility") == "shapeRange":
        shape = [int(r.lowerBound) if r.lowerBound == r.upperBound else -1
                 for r in t.shapeRange.sizeRanges]
    return kind, _FEATURE_TYPES.get(int(t.dataType), f"type {int(t.dataType)}"), shape


def _program_output_shape(spec, name: str) -> list[int] | None:
    """The static shape of `name` in the ML program's main function (when the description has
    no shape)."""
    if spec.WhichOneof("Type") != "mlProgram":
        return None
    func = spec.mlProgram.functions.get("main")
    if func is None:
        return None
    for block in func.block_specializations.values():
        for op in block.operations:
            for out in op.outputs:
                if out.name == name and out.type.WhichOneof("type") == "tensorType":
                    dims = out.type.tensorType.dimensions
                    if all(d.WhichOneof("dimension") == "constant" for d in dims):
                        return [int(d.constant.size) for d in dims]
    return None


def check_mlpackage(path, *, expected_width: int, image_size: int = fg.APP_IMAGE_SIZE) -> dict:
    """Check a user-chosen `.mlpackage` against the encoder contract; return what was found.

    Requires exactly one input `images` float32 [1, 3, S, S] and an output `image_features`
    float32 [1, (S/64)^2, expected_width]. Raises FinetuneError (problem + fix) otherwise."""
    path = Path(path)
    fix = (f"Choose a vision encoder exported for this model (Apple's "
           f"model_export/export_vision_encoder.py, or let Finetune build {PACKAGE_NAME} from "
           f"the model's own tower).")
    if not path.exists():
        raise FinetuneError(f"The CoreML encoder {path} does not exist.", fix, file=path)
    if path.suffix != ".mlpackage" or not (path / "Manifest.json").exists():
        raise FinetuneError(f"{path.name} is not a CoreML .mlpackage folder (no Manifest.json).",
                            fix, file=path)
    ct = _coremltools()
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:
        raise FinetuneError(f"coremltools cannot read {path.name}: {exc}", fix,
                            file=path) from exc

    grid = image_size // 64
    want_in = [1, 3, image_size, image_size]
    want_out = [1, grid * grid, int(expected_width)]
    inputs = {f.name: _array_desc(f) for f in spec.description.input}
    outputs = {f.name: _array_desc(f) for f in spec.description.output}
    problems: list[str] = []
    if list(inputs) != [INPUT_NAME]:
        problems.append(f"its inputs are {sorted(inputs) or 'none'} (needed: exactly "
                        f"'{INPUT_NAME}')")
    else:
        kind, dtype, shape = inputs[INPUT_NAME]
        if kind != "multiArrayType" or dtype != "float32" or shape != want_in:
            problems.append(f"input '{INPUT_NAME}' is {kind} {dtype} {shape} (needed: "
                            f"float32 multi-array {want_in})")
    out_shape = None
    if OUTPUT_NAME not in outputs:
        problems.append(f"its outputs are {sorted(outputs) or 'none'} (needed: "
                        f"'{OUTPUT_NAME}')")
    else:
        kind, dtype, out_shape = outputs[OUTPUT_NAME]
        if kind == "multiArrayType" and not out_shape:
            out_shape = _program_output_shape(spec, OUTPUT_NAME) or []
        if kind != "multiArrayType" or dtype != "float32" or out_shape != want_out:
            problems.append(f"output '{OUTPUT_NAME}' is {kind} {dtype} {out_shape or '?'} "
                            f"(needed: float32 multi-array {want_out})")
    if problems:
        raise FinetuneError(f"The CoreML encoder {path.name} does not fit this model: "
                            + "; ".join(problems) + ".", fix, file=path)
    return {
        "path": str(path),
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": want_in},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": want_out},
        "outputs": sorted(outputs),
        "metadata": dict(spec.description.metadata.userDefined),
    }


# --------------------------------------------------------------------------------------------
# Reading a saved package back (weights, and the program itself, evaluated with numpy)
# --------------------------------------------------------------------------------------------

def read_mlpackage_program(path):
    """The pymil Program stored in a saved package (weights read from its blob file)."""
    ct = _coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)


def read_mlpackage_weights(path) -> dict[str, np.ndarray]:
    """Every tensor constant in the saved program, by op name (float arrays only)."""
    prog = read_mlpackage_program(path)
    out: dict[str, np.ndarray] = {}
    for op in prog.functions["main"].operations:
        if op.op_type == "const":
            val = op.outputs[0].val
            if isinstance(val, np.ndarray) and val.dtype.kind == "f":
                out[op.name] = val
    return out


def tower_key_for_const(name: str) -> str:
    """The tower key a const was named after by the definition ('a__b__c' -> 'a.b.c')."""
    return name.replace("__", ".")


def _pads(op, value, x_shape, w_shape, strides, dilations) -> tuple[int, int, int, int]:
    pad_type = value("pad_type") if "pad_type" in op.inputs else "valid"
    if pad_type == "custom":
        p = [int(v) for v in value("pad")]
        return p[0], p[1], p[2], p[3]
    if pad_type == "valid":
        return 0, 0, 0, 0
    if pad_type in ("same", "same_lower"):
        pads = []
        for i in range(2):
            size, k, s, d = x_shape[2 + i], w_shape[2 + i], strides[i], dilations[i]
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads += [big, small] if pad_type == "same_lower" else [small, big]
        return pads[0], pads[1], pads[2], pads[3]
    raise NotImplementedError(f"conv pad_type {pad_type}")


def evaluate_mlpackage_numpy(path, images: np.ndarray, *, program=None) -> np.ndarray:
    """Interpret the saved package's ML program with numpy (float32) on `images` [1, 3, S, S].

    Covers the ops the FastViTHD program contains after coremltools' passes; an unknown op
    raises NotImplementedError. This checks what was written, weights included, where CoreML
    itself cannot run."""
    prog = program if program is not None else read_mlpackage_program(path)
    func = prog.functions["main"]
    env: dict[str, Any] = {}
    (in_name,) = list(func.inputs)
    env[in_name] = np.asarray(images, dtype=np.float32)
    np_ops = fg.NumpyOps()

    for op in func.operations:
        def value(param, _op=op):
            v = _op.inputs[param]
            if isinstance(v, (list, tuple)):
                return [env.get(x.name, x.val) for x in v]
            return env.get(v.name, v.val)

        def has(param, _op=op):
            return param in _op.inputs and _op.inputs[param] is not None

        t = op.op_type
        if t == "const":
            result = op.outputs[0].val
        elif t == "conv":
            x, w = value("x"), value("weight")
            strides = [int(s) for s in value("strides")] if has("strides") else [1, 1]
            dil = [int(s) for s in value("dilations")] if has("dilations") else [1, 1]
            if strides[0] != strides[1] or dil[0] != dil[1]:
                raise NotImplementedError("anisotropic conv")
            pads = _pads(op, value, x.shape, w.shape, strides, dil)
            result = fg.conv2d_nchw(x, w, value("bias") if has("bias") else None,
                                    stride=strides[0], pads=pads,
                                    groups=int(value("groups")) if has("groups") else 1,
                                    dilation=dil[0])
        elif t == "batch_norm":
            result = np_ops.batch_norm(value("x"), value("mean"), value("variance"),
                                       value("gamma") if has("gamma") else
                                       np.ones_like(value("mean")),
                                       value("beta") if has("beta") else
                                       np.zeros_like(value("mean")),
                                       eps=float(value("epsilon")) if has("epsilon") else 1e-5)
        elif t == "layer_norm":
            x = value("x")
            axes = tuple(int(a) % x.ndim for a in value("axes"))
            eps = float(value("epsilon")) if has("epsilon") else 1e-5
            u = x.mean(axis=axes, keepdims=True)
            s = ((x - u) ** 2).mean(axis=axes, keepdims=True)
            y = (x - u) / np.sqrt(s + np.float32(eps))
            bshape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
            if has("gamma"):
                y = y * value("gamma").reshape(bshape)
            if has("beta"):
                y = y + value("beta").reshape(bshape)
            result = y.astype(np.float32)
        elif t == "gelu":
            mode = value("mode") if has("mode") else "EXACT"
            if mode != "EXACT":
                raise NotImplementedError(f"gelu mode {mode}")
            result = fg.gelu_exact(value("x"))
        elif t == "relu":
            result = np_ops.relu(value("x"))
        elif t == "sigmoid":
            result = np_ops.sigmoid(value("x"))
        elif t in ("add", "mul", "sub", "real_div"):
            f = {"add": np.add, "mul": np.multiply, "sub": np.subtract,
                 "real_div": np.divide}[t]
            result = f(value("x"), value("y")).astype(np.float32)
        elif t == "linear":
            result = np_ops.linear(value("x"), value("weight"),
                                   value("bias") if has("bias") else None)
        elif t == "matmul":
            x, y = value("x"), value("y")
            if has("transpose_x") and value("transpose_x"):
                x = np.swapaxes(x, -1, -2)
            if has("transpose_y") and value("transpose_y"):
                y = np.swapaxes(y, -1, -2)
            result = np.matmul(x, y).astype(np.float32)
        elif t == "softmax":
            result = np_ops.softmax(value("x"), axis=int(value("axis")))
        elif t == "reshape":
            result = np.reshape(value("x"), [int(s) for s in value("shape")])
        elif t == "transpose":
            result = np_ops.transpose(value("x"), [int(p) for p in value("perm")])
        elif t == "reduce_mean":
            x = value("x")
            axes = tuple(int(a) for a in value("axes"))
            keep = bool(value("keep_dims")) if has("keep_dims") else False
            result = x.mean(axis=axes, keepdims=keep, dtype=np.float32)
        elif t == "split":
            x = value("x")
            axis = int(value("axis"))
            if has("split_sizes"):
                idx = np.cumsum([int(s) for s in value("split_sizes")])[:-1]
                result = np.split(x, idx, axis=axis)
            else:
                result = np.split(x, int(value("num_splits")), axis=axis)
        elif t == "squeeze":
            x = value("x")
            result = np.squeeze(x, axis=tuple(int(a) for a in value("axes"))) \
                if has("axes") else np.squeeze(x)
        elif t == "expand_dims":
            result = np.expand_dims(value("x"), tuple(int(a) for a in value("axes")))
        elif t == "slice_by_index":
            x = value("x")
            begin, end = [int(v) for v in value("begin")], [int(v) for v in value("end")]
            stride = [int(v) for v in value("stride")] if has("stride") else [1] * x.ndim
            bm = value("begin_mask") if has("begin_mask") else [False] * x.ndim
            em = value("end_mask") if has("end_mask") else [False] * x.ndim
            sl = tuple(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i])
                       for i in range(x.ndim))
            result = x[sl]
        elif t == "identity":
            result = value("x")
        else:
            raise NotImplementedError(f"MIL op '{t}' is not interpreted")
        outs = op.outputs
        if len(outs) == 1:
            env[outs[0].name] = result
        else:
            for var, val in zip(outs, result):
                env[var.name] = val
    (out_var,) = list(func.outputs)
    return env[out_var.name]
