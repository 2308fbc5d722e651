"""Check an export the way its consumer will use it.

Python bundles are reloaded with the destination's own loader (`mlx_vlm.load`, `mlx_lm.load`, or
for an adapter `mlx_vlm.load(base, adapter_path=...)` / `mlx_lm.load(base, adapter_path=...)`),
caption a validation image (or answer a prompt), and their logits on that input are compared with
the in-memory base+adapter the export started from.

The Swift bundles cannot be loaded on this machine. Apple's app bundle is checked against what the
app decodes (weight names and shapes derived from config.json, config keys, processor files, the
`<image>` token, the CoreML package's interface), and its language model is run the way the app
runs it (`simulate_app`: 256 `<image>` tokens whose embeddings are replaced by the projected
tower features, exported weights loaded strictly, quantized layers found by their `.scales`), so
the renaming, the image token and the quantization are checked numerically too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx import nn

DEFAULT_TEXT_PROMPT = "What is the capital of France?"
FULL_PRECISION_TOLERANCE = 1e-4


@dataclass
class Verification:
    loader: str
    prompt: str = ""
    output: str = ""
    max_logit_diff: float | None = None
    tolerance: float | None = None
    reference: str = "base+adapter"
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"loader": self.loader, "ok": self.ok, "status": self.status, "prompt": self.prompt, "output": self.output,
                "max_logit_diff": self.max_logit_diff, "tolerance": self.tolerance, "reference": self.reference,
                "checks": self.checks,
                "problems": self.problems, "warnings": self.warnings}

    @property
    def status(self) -> str:
        """passed / FAILED / approximate: a quantized export's logits are not held to a tolerance,
        so it never claims to have passed a comparison it did not make."""
        if not self.ok:
            return "FAILED"
        if self.tolerance is None and self.max_logit_diff is not None:
            return f"approximate (quantized or half precision): max diff {self.max_logit_diff:.3g}"
        return "passed"

    def lines(self) -> list[str]:
        out = [f"Verification ({self.loader}): {self.status}"]
        if self.prompt:
            out.append(f"  prompt: {self.prompt}")
        if self.output or self.prompt:
            out.append(f"  output: {self.output!r}")
        if self.max_logit_diff is not None:
            tol = f" (tolerance {self.tolerance:g})" if self.tolerance else " (quantized: no tolerance)"
            out.append(f"  max |logit difference| vs {self.reference}: {self.max_logit_diff:.3g}{tol}")
        out += [f"  ok: {c}" for c in self.checks]
        out += [f"  warning: {w}" for w in self.warnings]
        out += [f"  problem: {p}" for p in self.problems]
        return out


def default_image(size: int = 256):
    """A centred red circle on a light background (the demo's kind of picture)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (240, 240, 236))
    r = size * 0.3
    c = (size - 1) / 2
    ImageDraw.Draw(im).ellipse([c - r, c - r, c + r, c + r], fill=(214, 48, 49))
    return im


def load_image(path: str | Path):
    from finetune_app.core.data.images import load_image as _load
    from finetune_app.core.data.sample import ImageRef

    return _load(ImageRef(path=Path(path).resolve(), label=str(path)))


# ---- logits on one prompt -------------------------------------------------------------------------

def model_inputs(base, prompt: str, image=None) -> dict:
    """The tokenised prompt (and processed image) as the libraries' generate() would build it."""
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.generate import conversation

    from finetune_app.core.serving import AUTO, resolve

    enc = Encoder(base, serve_target=resolve(AUTO, base))  # the library's own layout, whatever base records
    n = 1 if (base.kind == "vlm" and image is not None) else 0
    text = enc.prompt_text(conversation(prompt, n))
    if base.kind == "text":
        return {"input_ids": mx.array([enc.text_ids(text)])}
    from mlx_vlm.utils import prepare_inputs

    idx = base.config.get("image_token_index", base.config.get("image_token_id"))
    raw = prepare_inputs(base.processor, images=[image] if n else None, prompts=[text],
                         image_token_index=idx, add_special_tokens=False, padding=False)
    out = {}
    for k, v in raw.items():
        if v is None or isinstance(v, (str, list, dict)):
            continue
        out[k] = v if isinstance(v, mx.array) else mx.array(np.asarray(v))
    return out


def logits(base, inputs: dict, *, projected: mx.array | None = None) -> mx.array:
    """The model's logits on `inputs`. `projected`: FastVLM image features already through the
    projector (mlx-vlm's `cached_image_features`), to run the tower once per export."""
    model = base.model
    model.eval()
    if base.kind == "text":
        out = model(inputs["input_ids"])
    elif projected is not None:
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        emb = model.get_input_embeddings(ids, inputs.get("pixel_values"), mask, cached_image_features=projected)
        out = model.language_model(ids, mask=mask, inputs_embeds=emb.inputs_embeds)
    else:
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
        out = model(inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask"), **extra)
    out = out.logits if hasattr(out, "logits") else out
    out = out.astype(mx.float32)
    mx.eval(out)
    return out


def max_diff(a: mx.array, b: mx.array) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(mx.abs(a - b).max())


def caption(base, prompt: str, image=None, max_tokens: int = 24) -> str:
    from finetune_app.core.generate import GenerationSettings, generate

    images = [image] if (base.kind == "vlm" and image is not None) else None
    return generate(base, prompt, images, settings=GenerationSettings(max_tokens=max_tokens))


# ---- Python bundles ---------------------------------------------------------------------------------

def _base_from(model, processor, kind: str, path: Path, config: dict):
    from finetune_app.core.models import BaseModel

    model.eval()
    return BaseModel(model=model, processor=processor, kind=kind, model_type=str(config["model_type"]).lower(),
                     path=path, config=config, source=str(path))


def load_bundle(folder: Path, kind: str):
    """The bundle through the destination's loader: mlx_vlm.load or mlx_lm.load."""
    from finetune_app.core import patches

    patches.apply()  # tiny FastVLM towers: config-driven sizes (no effect on stock models)
    if kind == "vlm":
        from mlx_vlm import load

        model, processor = load(str(folder))
    else:
        import mlx_lm

        model, processor = mlx_lm.load(str(folder))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return _base_from(model, processor, kind, folder, config)


def load_with_adapter(base_path: Path, adapter_dir: Path, kind: str):
    from finetune_app.core import patches

    patches.apply()
    if kind == "vlm":
        from mlx_vlm import load

        model, processor = load(str(base_path), adapter_path=str(adapter_dir))
    else:
        import mlx_lm

        model, processor = mlx_lm.load(str(base_path), adapter_path=str(adapter_dir))
    config = json.loads((base_path / "config.json").read_text(encoding="utf-8"))
    return _base_from(model, processor, kind, base_path, config)


def verify_python(loaded, *, loader: str, prompt: str, image, reference: mx.array | None,
                  tolerance: float | None, inputs: dict | None = None,
                  reference_label: str = "base+adapter") -> Verification:
    v = Verification(loader=loader, prompt=prompt, tolerance=tolerance, reference=reference_label)
    v.checks.append(f"loaded with {loader}")
    if reference is not None:
        got = logits(loaded, inputs if inputs is not None else model_inputs(loaded, prompt, image))
        v.max_logit_diff = max_diff(got, reference)
        if tolerance is not None:
            if v.max_logit_diff <= tolerance:
                v.checks.append(f"logits match {v.reference} within {tolerance:g}")
            else:
                v.problems.append(f"logits differ from {v.reference} by {v.max_logit_diff:.3g} (tolerance {tolerance:g})")
    v.output = caption(loaded, prompt, image)
    return v


# ---- Apple's FastVLM app bundle --------------------------------------------------------------------

def expected_app_weights(config: dict) -> dict[str, tuple[int, ...]]:
    """Every weight FastVLM.swift declares (float shapes), from config.json alone."""
    h = config["hidden_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = h // heads
    inter, vocab, mm = config["intermediate_size"], config["vocab_size"], config["mm_hidden_size"]
    out = {"language_model.model.embed_tokens.weight": (vocab, h),
           "language_model.model.norm.weight": (h,),
           "multi_modal_projector.linear_0.weight": (h, mm), "multi_modal_projector.linear_0.bias": (h,),
           "multi_modal_projector.linear_2.weight": (h, h), "multi_modal_projector.linear_2.bias": (h,)}
    for i in range(config["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}"
        out.update({
            f"{p}.self_attn.q_proj.weight": (heads * hd, h), f"{p}.self_attn.q_proj.bias": (heads * hd,),
            f"{p}.self_attn.k_proj.weight": (kv * hd, h), f"{p}.self_attn.k_proj.bias": (kv * hd,),
            f"{p}.self_attn.v_proj.weight": (kv * hd, h), f"{p}.self_attn.v_proj.bias": (kv * hd,),
            f"{p}.self_attn.o_proj.weight": (h, heads * hd),
            f"{p}.mlp.gate_proj.weight": (inter, h), f"{p}.mlp.up_proj.weight": (inter, h),
            f"{p}.mlp.down_proj.weight": (h, inter),
            f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
        })
    if not config.get("tie_word_embeddings", True):
        out["language_model.lm_head.weight"] = (vocab, h)
    return out


def _header_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    import struct

    shapes = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                shapes[k] = (tuple(v["shape"]), v["dtype"])
    return shapes


def check_app_structure(folder: Path, *, mlpackage_width: int, image_size: int) -> Verification:
    """Weights, config, processor files, tokenizer and CoreML package against FastVLM.swift."""
    from finetune_app.core.export import bundle_swift as bs

    v = Verification(loader="FastVLM app format check + simulated app forward")
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    want_keys = set(bs.APP_CONFIG_KEYS) | ({"quantization"} if "quantization" in cfg else set())
    if set(cfg) != want_keys:
        v.problems.append(f"config.json keys differ: missing {sorted(want_keys - set(cfg))}, unexpected {sorted(set(cfg) - want_keys)}")
    else:
        v.checks.append(f"config.json has exactly the {len(want_keys)} keys the app decodes")
    shapes = _header_shapes(folder)
    expected = expected_app_weights(cfg)
    q = cfg.get("quantization")
    names = set()
    for name, shape in expected.items():
        base_name = name[: -len(".weight")] if name.endswith(".weight") else None
        if q and base_name and f"{base_name}.scales" in shapes:
            bits, gs = q["bits"], q["group_size"]
            packed = shape[:-1] + (shape[-1] * bits // 32,)
            groups = shape[:-1] + (shape[-1] // gs,)
            for suffix, s in ((".weight", packed), (".scales", groups), (".biases", groups)):
                names.add(base_name + suffix)
                if shapes.get(base_name + suffix, (None,))[0] != s:
                    v.problems.append(f"{base_name + suffix}: shape {shapes.get(base_name + suffix, ('missing',))[0]}, expected {s}")
        else:
            names.add(name)
            if shapes.get(name, (None,))[0] != shape:
                v.problems.append(f"{name}: shape {shapes.get(name, ('missing',))[0]}, expected {shape}")
    unexpected = sorted(set(shapes) - names)
    if unexpected:
        v.problems.append(f"weights the app would reject: {unexpected[:5]}")
    if not any(p.startswith(("language_model", "multi_modal", "weights")) for p in v.problems):
        n_q = sum(1 for k in shapes if k.endswith(".scales"))
        v.checks.append(f"{len(shapes)} weights with the app's names and shapes (no vision_tower keys"
                        + (f", {n_q} quantized layers" if n_q else "") + ")")
    index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
    if set(index.get("weight_map", {})) != set(shapes):
        v.problems.append("model.safetensors.index.json does not list exactly the stored weights")
    for name, want in (("preprocessor_config.json", bs.preprocessor_config(image_size)),
                       ("processor_config.json", bs.processor_config())):
        got = json.loads((folder / name).read_text(encoding="utf-8")) if (folder / name).is_file() else None
        if got != want:
            v.problems.append(f"{name} is not what the app expects: {got}")
        else:
            v.checks.append(f"{name} as the app reads it")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    idx = cfg["image_token_index"]
    ids = tok.encode("hi" + bs.IMAGE_TOKEN * 3 + "\n", add_special_tokens=False).ids
    if tok.token_to_id(bs.IMAGE_TOKEN) != idx or ids.count(idx) != 3 or not 0 <= idx < cfg["vocab_size"]:
        v.problems.append(f"<image> is not the single token {idx} inside the vocabulary ({cfg['vocab_size']})")
    else:
        v.checks.append(f"<image> encodes as one token, id {idx} = image_token_index, inside vocab_size {cfg['vocab_size']}")
    pkg = folder / bs.PACKAGE_NAME
    if not pkg.is_dir():
        v.problems.append(f"{bs.PACKAGE_NAME} is missing")
    else:
        from finetune_app.core.errors import FinetuneError
        from finetune_app.core.export import coreml_encoder

        try:
            info = coreml_encoder.check_mlpackage(pkg, expected_width=mlpackage_width, image_size=image_size)
            v.checks.append(f"{bs.PACKAGE_NAME}: input images {info['input']['shape']}, output image_features {info['output']['shape']}")
        except FinetuneError as exc:
            v.problems.append(str(exc))
    return v


def _app_language_model(folder: Path, cfg: dict):
    """FastVLM.swift's language model and projector, loaded strictly from the bundle's weights."""
    from mlx_vlm.models.fastvlm.config import TextConfig
    from mlx_vlm.models.fastvlm.language import LanguageModel

    weights = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update(mx.load(str(f)))
    tc = TextConfig.from_dict({**cfg, "rope_scaling": None})
    lm = LanguageModel(tc)
    h, mm = cfg["hidden_size"], cfg["mm_hidden_size"]
    proj = {"linear_0": nn.Linear(mm, h), "linear_2": nn.Linear(h, h)}
    holder = nn.Module()
    holder.language_model = lm
    holder.multi_modal_projector = nn.Module()
    holder.multi_modal_projector.linear_0 = proj["linear_0"]
    holder.multi_modal_projector.linear_2 = proj["linear_2"]
    if cfg.get("quantization"):
        q = cfg["quantization"]
        nn.quantize(holder, group_size=q["group_size"], bits=q["bits"],
                    class_predicate=lambda p, m: f"{p}.scales" in weights)
    holder.load_weights(list(weights.items()), strict=True)
    holder.eval()
    return holder


def app_prompt(prompt: str, n_image_tokens: int) -> str:
    """FastVLMProcessor.prepare in the app: system turn, image tokens after the user's text."""
    user = prompt + "<image>" * n_image_tokens
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def simulate_app(folder: Path, tower_features: mx.array, prompt: str, *, max_tokens: int = 16):
    """Run the bundle's language model as the app does; returns (ids, logits, text).

    `tower_features` [1, N, mm_hidden_size]: what fastvithd.mlpackage returns for the image."""
    from tokenizers import Tokenizer

    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    holder = _app_language_model(folder, cfg)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    n = tower_features.shape[1]
    ids = tok.encode(app_prompt(prompt, n), add_special_tokens=False).ids
    idx = cfg["image_token_index"]
    pos = [i for i, t in enumerate(ids) if t == idx]
    if len(pos) != n:
        raise ValueError(f"the prompt holds {len(pos)} image tokens, the tower gives {n} features")
    proj = holder.multi_modal_projector
    feats = proj.linear_2(nn.gelu(proj.linear_0(tower_features)))

    def forward(seq: list[int]) -> mx.array:
        x = mx.array([seq])
        emb = holder.language_model.model.embed_tokens(x)
        emb[:, mx.array(pos), :] = feats.astype(emb.dtype)
        out = holder.language_model(x, inputs_embeds=emb)
        return (out.logits if hasattr(out, "logits") else out).astype(mx.float32)

    first = forward(ids)
    mx.eval(first)
    seq = list(ids)
    eos = {tok.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>") if tok.token_to_id(t) is not None}
    out_ids = []
    logit = first[0, -1]
    vocab_real = tok.get_vocab_size(with_added_tokens=True)
    for _ in range(max_tokens):
        masked = mx.where(mx.arange(logit.shape[-1]) < vocab_real, logit, -mx.inf)
        masked = mx.where(mx.arange(logit.shape[-1]) == idx, -mx.inf, masked)
        nxt = int(mx.argmax(masked))
        if nxt in eos:
            break
        out_ids.append(nxt)
        seq.append(nxt)
        logit = forward(seq)[0, -1]
    return ids, first, tok.decode(out_ids).strip()


def reference_app_logits(ref_base, ids: list[int], image_token_index: int, pixel_values: mx.array,
                         projected: mx.array | None = None) -> mx.array:
    """The in-memory mlx-vlm model on the app's token sequence (its 256 image tokens collapsed to
    mlx-vlm's single -200 placeholder, which it expands to the same 256 positions)."""
    collapsed, seen = [], False
    for t in ids:
        if t == image_token_index:
            if not seen:
                collapsed.append(ref_base.config.get("image_token_index", -200))
                seen = True
            continue
        collapsed.append(t)
    x = mx.array([collapsed])
    return logits(ref_base, {"input_ids": x, "pixel_values": pixel_values, "attention_mask": mx.ones_like(x)},
                  projected=projected)


def tower_features(model, pixel_values: mx.array) -> mx.array:
    from finetune_app.core.families.fastvlm import FastVLM

    feats = FastVLM.tower_features(model, pixel_values)
    mx.eval(feats)
    return feats
