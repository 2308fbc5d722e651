"""Every library patch (core/patches/): written for the installed library version, still needed,
and working. A library upgrade that fixes a gap or moves a private function fails here first."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest

from finetune_app.core import patches
from finetune_app.core.errors import ModelError

PINS = [(m.__name__.rsplit(".", 1)[-1], lib, v) for m in patches.MODULES for lib, v in m.WRITTEN_FOR.items()]


@pytest.mark.parametrize("patch,library,written_for", PINS)
def test_written_for_the_installed_library(patch, library, written_for):
    installed = version(library)
    assert installed.split(".")[:2] == written_for.split(".")[:2], (
        f"{patch} was written for {library} {written_for}, {installed} is installed: check that it is still "
        f"needed and works (this file), then update its WRITTEN_FOR")


@pytest.mark.parametrize("module", patches.MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_still_needed(module):
    assert module.still_needed(), f"{module.__name__}: the library now does this itself; remove the patch"


def test_fastvlm_vision_config_keeps_the_tower_sizes():
    from mlx_vlm.models.fastvlm.config import VisionConfig

    patches.apply(only=("fastvlm_vision_config",))
    patches.apply(only=("fastvlm_vision_config",))  # idempotent
    assert "fastvlm_vision_config" in patches.applied()
    sized = VisionConfig.from_dict({"layers": [1, 1], "embed_dims": [4, 8], "pos_embs_shapes": [[7, 7], None],
                                    "token_mixers": ["repmixer", "attention"]})
    assert sized.layers == [1, 1] and sized.embed_dims == [4, 8]
    assert sized.pos_embs_shapes == [(7, 7), None] and sized.token_mixers == ("repmixer", "attention")
    default = VisionConfig.from_dict({})
    assert default.layers == VisionConfig.layers  # a real config without the keys keeps mlx-vlm's tower
    out = patches.fastvlm_vision_config.fastvlm_vision_dict(sized)
    assert out["pos_embs_shapes"] == [[7, 7], None] and out["token_mixers"] == ["repmixer", "attention"]


def test_no_remote_code_refuses_folder_code():
    from transformers import dynamic_module_utils as dmu

    patches.apply(only=("no_remote_code",))
    patches.apply(only=("no_remote_code",))
    assert dmu.resolve_trust_remote_code(True, "some/model", True, False) is False
    with pytest.raises(ModelError, match="would run Python code"):
        dmu.get_class_in_module("modeling_evil.Evil", "/tmp/model")
    with pytest.raises(ModelError, match="would run Python code"):
        dmu.get_cached_module_file("/tmp/model", "modeling_evil.py")


def test_chat_template_compiles_transformers_tags_and_reports_syntax_errors():
    from jinja2 import TemplateSyntaxError

    from finetune_app.core.patches.chat_template import compile_chat_template

    template = ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
                "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}")
    rendered = compile_chat_template(template).render(messages=[{"role": "user", "content": "hi "},
                                                                {"role": "assistant", "content": "yo"}])
    assert rendered == "hi yo"
    with pytest.raises(TemplateSyntaxError):
        compile_chat_template("{% for m in messages %}{{ m.content }")


def test_sacrebleu_statistics_give_the_corpus_scores():
    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    from finetune_app.core.patches.sacrebleu_stats import corpus_statistics, score_from_statistics

    outputs = ["a red circle", "a blue square on the left", "green"]
    refs = [["a red circle", "a blue square", "a green triangle"]]
    for metric in (BLEU(), CHRF()):
        rows = np.asarray(corpus_statistics(metric, outputs, refs), dtype=np.float64)
        assert rows.shape[0] == 3
        got = score_from_statistics(metric, rows.sum(0).tolist()).score
        assert got == pytest.approx(metric.corpus_score(outputs, refs).score)


def test_hf_tokenizer_is_unwrapped():
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from finetune_app.core.patches.hf_tokenizer import unwrap

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<eos>": 1}, unk_token="a")),
                                 eos_token="<eos>")
    assert unwrap(TokenizerWrapper(hf)) is hf
    assert unwrap(hf) is hf


def test_deepseek_moe_gate_is_differentiable_and_routes_as_the_library():
    import mlx.core as mx

    from finetune_app.core.patches import deepseek_moe_gate as patch

    patches.apply(only=("deepseek_moe_gate",))
    patches.apply(only=("deepseek_moe_gate",))
    gate, x = patch._tiny_gate(), mx.random.normal((2, 3, 8), key=mx.random.key(0))
    gate.weight = mx.random.normal((4, 8), key=mx.random.key(1))
    (inds, scores), (lib_inds, lib_scores) = gate(x), patch._original(gate, x)
    assert mx.array_equal(inds, lib_inds).item() and mx.allclose(scores, lib_scores).item()
    grad = mx.grad(lambda v: gate(v)[1].sum())(x)
    assert grad.shape == x.shape and bool(mx.isfinite(grad).all())


def test_deepseek_tile_count_pads_the_crops_to_the_tile_axis():
    import mlx.core as mx

    from finetune_app.core.patches.deepseek_tile_count import pad_crops

    patches.apply(only=("deepseek_tile_count",))
    patches.apply(only=("deepseek_tile_count",))
    from mlx_vlm.models.deepseek_vl_v2.deepseek_vl_v2 import Model

    assert getattr(Model.get_input_embeddings, "_finetune_patched", False)
    crop = pad_crops(mx.zeros((2, 5, 3, 4, 4)), mx.array([[[2, 2]], [[1, 1]]]))
    assert crop.tolist() == [[[2, 2]] + [[0, 0]] * 4, [[1, 1]] + [[0, 0]] * 4]
    assert pad_crops(None, None) is None


def test_mllama_rows_cross_attend_to_their_own_image(tiny_model):
    import mlx.core as mx
    from mlx_vlm.utils import load

    patches.apply(only=("mllama_vision_batch",))
    patches.apply(only=("mllama_vision_batch",))
    model, _ = load(str(tiny_model("mllama")))
    size = model.config.vision_config.image_size
    pixels = mx.random.normal((2, 1, 4, 3, size, size), key=mx.random.key(0))
    ratio_ids, ratio_mask = mx.array([[6], [6]]), mx.ones((2, 1, 4), dtype=mx.int32)
    ids = mx.zeros((2, 3), dtype=mx.int32)
    both = model.get_input_embeddings(ids, pixels, aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask)
    second = model.get_input_embeddings(ids[1:], pixels[1:], aspect_ratio_ids=ratio_ids[1:],
                                        aspect_ratio_mask=ratio_mask[1:])
    states, alone = both.cross_attention_states, second.cross_attention_states
    assert states.shape[0] == 2 and mx.allclose(states[1], alone[0], atol=1e-5).item()
    assert not mx.allclose(states[0], states[1]).item()


def test_llava_processor_keeps_text_options_from_the_image_processor(tiny_model):
    import numpy as np
    from mlx_vlm.utils import load_processor
    from PIL import Image

    from finetune_app.core.patches.llava_processor_kwargs import image_options

    patches.apply(only=("llava_processor_kwargs",))
    patches.apply(only=("llava_processor_kwargs",))
    processor = load_processor(tiny_model("llava"))
    assert "do_resize" in image_options(processor.image_processor)
    image = Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8))
    out = processor(images=[image], text=["USER: <image>\nhi ASSISTANT:"], padding=True, add_special_tokens=True)
    expected = (28 // 14) ** 2  # CLS + patches, less CLS ("default" strategy)
    assert (np.asarray(out["input_ids"]) == processor.image_token_id).sum() == expected
    assert out["pixel_values"].shape == (1, 3, 28, 28)


def test_phi3v_tower_takes_its_sizes_from_vision_config():
    from types import SimpleNamespace

    from mlx_vlm.models.phi3_v.config import VisionConfig
    from mlx_vlm.models.phi3_v.vision import VisionModel

    from finetune_app.core.patches.phi3v_vision_config import tower_config

    patches.apply(only=("phi3v_vision_config",))
    patches.apply(only=("phi3v_vision_config",))
    real = tower_config(SimpleNamespace(vision_config=VisionConfig.from_dict({})))
    assert vars(real) == vars(VisionModel.CLIP_VIT_LARGE_PATCH14_336_CONFIG)  # a real checkpoint: unchanged
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    tower = VisionModel(SimpleNamespace(model_type="phi3_v", hidden_size=64, vision_config=sizes))
    assert tower.image_dim_out == 32 and len(tower.img_processor.vision_model.encoder.layers) == 2
    assert tower.img_projection[0].weight.shape == (64, 4 * 32) and tower.sub_GN.shape == (1, 1, 1, 128)


@pytest.mark.parametrize("height,width", [(64, 64), (40, 90), (90, 30)])
def test_llava_next_packs_one_feature_per_image_token(tiny_model, height, width):
    import mlx.core as mx
    import numpy as np
    from mlx_vlm.utils import load
    from PIL import Image

    from finetune_app.core.patches.llava_next_anyres import image_features

    patches.apply(only=("llava_next_anyres",))
    patches.apply(only=("llava_next_anyres",))
    model, processor = load(str(tiny_model("llava_next")))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))
    inputs = processor(images=[image], text=["[INST] <image>\nhi [/INST]"], padding=True)
    n_tokens = int((np.asarray(inputs["input_ids"]) == model.config.image_token_index).sum())
    (feats,) = image_features(model, mx.array(inputs["pixel_values"]), mx.array(inputs["image_sizes"]))
    assert feats.shape[0] == n_tokens  # the processor's expansion, counted independently
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    rows = feats[side * side:]  # after the base tile: rows of the unpadded grid, each ending in a newline
    newline = mx.broadcast_to(model.image_newline, rows.shape)
    is_newline = np.asarray(mx.all(mx.isclose(rows, newline), axis=-1))
    width_with_newline = int(np.argmax(is_newline)) + 1
    assert rows.shape[0] % width_with_newline == 0 and is_newline.sum() == rows.shape[0] // width_with_newline
    embeds = model.get_input_embeddings(mx.array(inputs["input_ids"]), mx.array(inputs["pixel_values"]),
                                        image_sizes=mx.array(inputs["image_sizes"])).inputs_embeds
    assert embeds.shape[1] == np.asarray(inputs["input_ids"]).shape[1]


def test_qwen_rope_state_is_cleared_after_host_rope_ids(tiny_model):
    import mlx.core as mx
    from mlx_vlm import load

    from finetune_app.core.patches import qwen_rope_state

    model, _ = load(str(tiny_model("qwen2_vl")))
    lm = model.language_model
    for name in qwen_rope_state.STATE:  # the state the library keeps between calls
        assert hasattr(lm, name), name
    ids = mx.array([[1, 2, 3, 4]])
    lm(ids)  # a forward (as generation's prefill) leaves this prompt's state on the model
    assert lm._rope_deltas is not None or lm._position_ids is not None
    qwen_rope_state.clear(lm)
    assert all(getattr(lm, name) is None for name in qwen_rope_state.STATE)


def test_mlx_launch_select_waits_for_output_and_never_for_writes():
    import os
    import subprocess
    import sys

    from finetune_app.core.patches import mlx_launch

    r, w = os.pipe()
    try:
        assert mlx_launch.calm_select([r], [w], [], 1.0) == ([], [w], [])  # nothing to read, pipe writable
        os.write(w, b"x")
        assert mlx_launch.calm_select([r], [], [], None) == ([r], [], [])
    finally:
        os.close(r)
        os.close(w)
    # the launcher script is mlx.launch itself: its usage text, with the select repaired
    out = subprocess.run([sys.executable, "-c", mlx_launch.LAUNCHER, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "mlx.launch" in out.stdout and "--backend" in out.stdout


def test_mlx_lm_classes_build_a_text_model():
    from finetune_app.core.patches.mlx_lm_classes import model_classes

    cfg = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32,
           "num_attention_heads": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "vocab_size": 64}
    model_class, args_class = model_classes(cfg)
    model = model_class(args_class.from_dict(cfg))
    assert model.model_type == "llama" and len(model.layers) == 1


# finetune_app/ may reach a library's private names only through core/patches/ (one module each,
# pinned and tested above): `from mlx_vlm.x import _y`, `from mlx_lm.x import _y`, `mlx._x`, `mlx_vlm.x._y`
PRIVATE_USE = re.compile(r"from\s+(?:mlx_vlm|mlx_lm|mlx)(?:\.\w+)*\s+import\s+(?:\(\s*)?(?:[\w ,]*,\s*)?_\w"
                         r"|\b(?:mlx|mlx_vlm|mlx_lm)(?:\.\w+)*\._\w")


def test_private_library_names_are_used_only_in_core_patches():
    from pathlib import Path

    import finetune_app

    root = Path(finetune_app.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if root / "core" / "patches" in path.parents:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE_USE.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not found, "wrap these in a core/patches/ module:\n" + "\n".join(found)


def test_private_use_pattern_catches_each_spelling():
    for line in ("from mlx_lm.utils import _get_classes", "from mlx_vlm.models.base import x, _y",
                 "import mlx._distributed_utils.launch as launch", "mlx_vlm.utils._private(1)",
                 "from mlx._distributed_utils import launch"):
        assert PRIVATE_USE.search(line), line
    for line in ("from mlx_lm.utils import load", "import mlx.core as mx", "from mlx_vlm import generate"):
        assert not PRIVATE_USE.search(line), line


def test_mlx_lm_tuner_imports_without_trackers():
    """The tuner's LoRA layers import without wandb/swanlab; the real ones import afterwards."""
    import subprocess
    import sys

    code = ("import sys, importlib.util\n"
            "from finetune_app.core.patches.mlx_lm_tuner_imports import import_module\n"
            "assert import_module('mlx_lm.tuner.utils').linear_to_lora_layers\n"
            "assert 'wandb' not in sys.modules and 'swanlab' not in sys.modules, 'tracker imported'\n"
            "assert sys.modules['mlx_lm.tuner.callbacks'].wandb is None\n"
            "if importlib.util.find_spec('wandb'):\n"
            "    import wandb\n"
            "    assert wandb.__spec__ is not None\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_processor_kwargs_advice_is_not_logged_for_a_vlm_row(tiny_model, shapes_data):
    """Encoding a Qwen2-VL training row renders it through mlx-vlm's apply_chat_template, which
    passes transformers' ProcessorMixin.apply_chat_template an `enable_thinking` of its own:
    transformers then warns "Kwargs passed to `processor.__call__` have to be in `processor_kwargs`
    dict" on every call (6 lines a row on the H200 host). With the patch (applied by load_base) the
    row's log has none, and the ids are those of the row encoded with the message let through."""
    import logging

    from finetune_app.core.data import open_dataset
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.models import load_base
    from finetune_app.core.patches.processor_kwargs_advice import LOGGER, MESSAGE, DropAdvice

    class Seen(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    base = load_base(tiny_model("qwen2_vl"))
    assert "processor_kwargs_advice" in patches.applied()
    logger, seen = logging.getLogger(LOGGER), Seen()
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.WARNING)  # (conftest quiets transformers to errors; a run does not)
    try:
        sample = open_dataset(shapes_data).sample(0)
        quiet = Encoder(base).encode(sample, 0)
        assert not [m for m in seen.messages if MESSAGE in m]
        kept = [f for f in logger.filters if isinstance(f, DropAdvice)]
        for f in kept:
            logger.removeFilter(f)
        try:
            loud = Encoder(base).encode(sample, 0)
        finally:
            for f in kept:
                logger.addFilter(f)
        assert [m for m in seen.messages if MESSAGE in m]  # (the library still says it: the test can fail)
        assert quiet.input_ids.tolist() == loud.input_ids.tolist()
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
