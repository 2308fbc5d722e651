"""Trained as served: for every family and serve target, the engine's input_ids (and pixels) for a
row equal what the runtime builds for the same row at inference.

Runtimes: mlx-vlm (`apply_chat_template(processor, config, prompt, num_images=N)` + `prepare_inputs`,
as mlx_vlm.generate calls them), mlx-lm (the tokenizer's chat template, tokenized, as mlx_lm.generate
does), and Apple's FastVLM app (a Python transcription of FastVLMProcessor, below)."""

import json

import numpy as np
import pytest
from PIL import Image

from finetune_app.core.data.sample import ImageRef, Sample, Turn
from finetune_app.core.data.tokenize import Encoder
from finetune_app.core.models import load_base

PROMPT = "Describe the image."
ANSWER = "a red circle"
IMAGE = Image.new("RGB", (80, 64), (210, 40, 40))


@pytest.fixture(scope="module")
def bases(tiny_model):
    cache = {}

    def get(family, **over):
        key = (family, json.dumps(over, sort_keys=True))
        if key not in cache:
            cache[key] = load_base(tiny_model(family, **over))
        return cache[key]

    return get


def caption(n_images=1, system=None, history=()):
    turns = ((Turn("system", system),) if system else ()) + tuple(history)
    turns += (Turn("user", PROMPT, n_images), Turn("assistant", ANSWER))
    return Sample(turns, tuple(ImageRef(label=f"i{k}") for k in range(n_images)))


def encoder(base, target="auto"):
    return Encoder(base, image_loader=lambda ref: IMAGE, serve_target=target)


def mlx_vlm_prompt_inputs(base, messages, n_images):
    """What mlx_vlm.generate feeds the model for this prompt (generate/dispatch.py)."""
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

    prompt = apply_chat_template(base.processor, base.config, messages, num_images=n_images)
    out = prepare_inputs(base.processor, images=[IMAGE] * n_images or None, prompts=prompt,
                         image_token_index=base.config.get("image_token_index"),
                         add_special_tokens=should_add_special_tokens(base.config["model_type"], base.processor))
    return prompt, {k: np.asarray(v) for k, v in out.items() if v is not None and not isinstance(v, (list, str))}


def check_prompt_then_answer(enc, ex, prompt_ids, *, single_turn=True):
    """The training row = the runtime's prompt, token for token, then the supervised answer."""
    ids = ex.input_ids
    assert list(ids[:len(prompt_ids)]) == list(prompt_ids)
    answer = enc.tokenizer.decode(list(ids[len(prompt_ids):]))
    assert answer.lstrip().startswith(ANSWER)  # some templates end the prompt at "Assistant:" and the answer brings its space
    if single_turn:
        assert not ex.target_mask[:len(prompt_ids)].any()
    assert ex.target_mask[len(prompt_ids):len(prompt_ids) + 3].all()


# every VLM family the engine trains (tests/test_more_vlm_families.py trains the generic ones)
MLX_VLM_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "fastvlm", "qwen3_5", "gemma3", "idefics3", "smolvlm",
                    "pixtral", "mistral3", "mllama", "deepseek_vl_v2", "llava", "llava_next", "phi3_v", "paligemma"]


@pytest.mark.parametrize("family", MLX_VLM_FAMILIES)
def test_mlx_vlm_prompt_is_the_runtime_prompt(family, bases):
    base = bases(family)
    enc = encoder(base)
    sample = caption()
    ex = enc.encode(sample)
    prompt, runtime = mlx_vlm_prompt_inputs(base, PROMPT, 1)
    assert enc.prompt_text(sample) == prompt
    check_prompt_then_answer(enc, ex, runtime["input_ids"].reshape(-1))
    np.testing.assert_array_equal(ex.images["pixel_values"], runtime["pixel_values"])
    if "image_grid_thw" in runtime:
        np.testing.assert_array_equal(ex.images["image_grid_thw"], runtime["image_grid_thw"])


def test_qwen2_vl_puts_the_image_after_the_text(bases):
    """mlx-vlm's layout for qwen2_vl is LIST_WITH_IMAGE (image after the text); qwen2.5/3-VL put it
    first (LIST_WITH_IMAGE_FIRST). The engine follows the runtime, not a rule of its own."""
    q2 = encoder(bases("qwen2_vl")).prompt_text(caption())
    q25 = encoder(bases("qwen2_5_vl")).prompt_text(caption())
    assert q2.index(PROMPT) < q2.index("<|vision_start|>")
    assert q25.index("<|vision_start|>") < q25.index(PROMPT)


def test_multi_turn_prompt_equals_generation_prompt(bases):
    """A conversation with a system prompt and an earlier exchange: the images go where
    apply_chat_template puts them (the last user message), and the training prefix of the final
    answer is exactly the generation prompt."""
    base = bases("qwen2_vl")
    enc = encoder(base)
    history = (Turn("user", "Hello.", 1), Turn("assistant", "Hi."))  # the parser put the image first
    sample = caption(n_images=1, system="Be brief.", history=history)
    sample = Sample(sample.turns[:1] + history + (Turn("user", PROMPT, 0), Turn("assistant", ANSWER)), sample.images)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello."},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": PROMPT}]
    prompt, runtime = mlx_vlm_prompt_inputs(base, msgs, 1)
    assert enc.prompt_text(sample) == prompt
    ex = enc.encode(sample)
    check_prompt_then_answer(enc, ex, runtime["input_ids"].reshape(-1), single_turn=False)
    # the earlier answer is supervised too, and lies before the image
    image_at = int(np.argmax(ex.input_ids == base.config["image_token_id"]))
    earlier = enc.tokenizer.decode(ex.input_ids[:image_at][ex.target_mask[:image_at]].tolist())
    assert earlier.startswith("Hi.<|im_end|>")


def test_explicit_image_position_is_kept(tmp_path, bases):
    """A content list placing the image after the text keeps that order even for a model whose
    runtime default is image first (qwen2.5-VL), and it goes through the chat parser."""
    from finetune_app.core.data import open_dataset

    IMAGE.save(tmp_path / "x.png")
    row = {"images": ["x.png"], "messages": [
        {"role": "user", "content": [{"type": "text", "text": PROMPT}, {"type": "image"}]},
        {"role": "assistant", "content": ANSWER}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    sample = open_dataset(tmp_path / "train.jsonl").sample(0)
    assert sample.explicit_images and sample.turns[0].parts == (PROMPT, None)
    base = bases("qwen2_5_vl")
    text = encoder(base).prompt_text(sample)
    assert text.index(PROMPT) < text.index("<|vision_start|>")
    # the runtime, given the same explicit content, renders the same
    prompt, _ = mlx_vlm_prompt_inputs(base, [{"role": "user", "content": row["messages"][0]["content"]}], 1)
    assert text == prompt
    # a string-content row with top-level images is not explicit: the runtime's order (image first)
    row["messages"][0]["content"] = PROMPT
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    plain = open_dataset(tmp_path / "train.jsonl").sample(0)
    assert not plain.explicit_images
    assert encoder(base).prompt_text(plain) == mlx_vlm_prompt_inputs(base, PROMPT, 1)[0]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_mlx_lm_prompt_is_the_chat_template(family, bases):
    base = bases(family)
    enc = encoder(base)
    sample = Sample((Turn("system", "Be brief."), Turn("user", "What is two and two?"), Turn("assistant", "four.")))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two and two?"}]
    # mlx_lm/generate.py main(): apply_chat_template(tokenize=False, add_generation_prompt=True), then
    # tokenizer.encode(prompt, add_special_tokens=not use_chat_template)
    text = base.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    runtime = base.tokenizer.encode(text, add_special_tokens=False)
    assert enc.serve_target == "mlx-lm"
    ex = enc.encode(sample)
    assert list(ex.input_ids[:len(runtime)]) == list(runtime)
    assert enc.tokenizer.decode(list(ex.input_ids[len(runtime):])).startswith("four.")
    assert not ex.target_mask[:len(runtime)].any() and ex.target_mask[len(runtime)]


# ---- Apple's FastVLM app -------------------------------------------------------------------------
# A transcription of apple/ml-fastvlm app/FastVLM/FastVLM.swift (commit 5004c18e), FastVLMProcessor
# (lines 339-428):
#   prepare(prompt:imageTHW:), lines 373-416 - messages = [["role": "user", "content": text]]; insert
#     ["role": "system", "content": "You are a helpful assistant."] at 0 when messages[0] is not a
#     system message; numImageTokens = (h / patchSize) * (w / patchSize) (+ 0 additional, patchSize 64,
#     FastVLMProcessorConfiguration); lastMessage += String(repeating: "<image>", count: n);
#     return messages.map { "<|im_start|>\(role)\n\(content)<|im_end|>" }.joined(separator: "\n")
#            + "\n<|im_start|>assistant\n"
#     (system insert: lines 383-385; image tokens: 396-404; ChatML join: 409-415)
#   preprocess(image:processing:), lines 351-371 - size = fitIn(extent, shortestEdge: size.shortest_edge)
#     (mlx-swift-examples MediaProcessing.fitIn: short edge = S, long edge = S * long / short);
#     resampleBicubic(image, to: size); centerCrop(image, size: crop_size); normalize(mean, std).
#   mergeInputIdsWithImageFeatures - every position whose id is image_token_index gets one image feature.

def app_prepare(text: str, h: int, w: int, patch: int = 64) -> str:
    messages = [{"role": "user", "content": text}]
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
    messages[-1]["content"] += "<image>" * ((h // patch) * (w // patch))
    return "\n".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" for m in messages) + "\n<|im_start|>assistant\n"


def app_preprocess(image, shortest_edge, crop, mean, std):
    w, h = image.size
    size = (shortest_edge, round(shortest_edge * h / w)) if w <= h else (round(shortest_edge * w / h), shortest_edge)
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - crop[1]) // 2, (size[1] - crop[0]) // 2
    arr = np.asarray(image.crop((left, top, left + crop[1], top + crop[0])), dtype=np.float32) / 255.0
    return ((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


def app_positions(tokenizer, prompt: str, image_id: int) -> list:
    """The app's token sequence: `<image>` is one added token in the exported tokenizer
    (bundle_swift), so the text splits at each one."""
    out = []
    pieces = prompt.split("<image>")
    for i, piece in enumerate(pieces):
        out += tokenizer.encode(piece, add_special_tokens=False) if piece else []
        if i < len(pieces) - 1:
            out.append(image_id)
    return out


def test_fastvlm_app_layout_is_the_apps(bases):
    from finetune_app.core.families import family_for

    base = bases("fastvlm", image_size=256)
    enc = Encoder(base, image_loader=lambda ref: IMAGE, serve_target="mlx-swift",
                  image_features=family_for(base).image_features())  # as the trainer builds it
    ip = base.processor.image_processor
    se, crop = ip.size["shortest_edge"], (ip.crop_size["height"], ip.crop_size["width"])
    ex = enc.encode(caption())
    # positions: the engine's one placeholder expands to the app's (h/64)*(w/64) image tokens
    n_feat = family_for(base).image_features()
    assert n_feat == (crop[0] // 64) * (crop[1] // 64)
    placeholder = base.config["image_token_index"]
    expanded = []
    for t in ex.input_ids.tolist():
        expanded += ["IMG"] * n_feat if t == placeholder else [t]
    app = app_positions(base.tokenizer, app_prepare(PROMPT, *crop), "IMG")
    assert expanded[:len(app)] == app
    assert enc.tokenizer.decode(ex.input_ids[ex.input_ids >= 0][-4:].tolist()).strip().endswith("<|im_end|>")
    assert ex.model_length == len(expanded)
    # pixels: shortest edge bicubic to the model's size, centre crop, normalise
    want = app_preprocess(IMAGE, se, crop, ip.image_mean, ip.image_std)
    np.testing.assert_allclose(ex.images["pixel_values"][0], want, atol=1e-6)
    # the mlx-vlm layout of the same model differs (image first, padded square): the target matters
    assert encoder(base).prompt_text(caption()) != enc.prompt_text(caption())


@pytest.mark.parametrize("target", ["auto", "mlx-swift"])
def test_data_check_shows_what_the_trainer_feeds(target, tiny_model, bases, tmp_path, capsys):
    """`data check --examples K --json` prints the trainer's exact text / input_ids / target_mask,
    and they are the runtime's: here checked against mlx-vlm's own prompt for the same row."""
    from finetune_app.cli import main
    from finetune_app.core.data.demo import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", n_train=4, n_valid=1, size=64, jsonl=True)
    family = "fastvlm" if target == "mlx-swift" else "qwen2_vl"
    over = {"image_size": 256} if family == "fastvlm" else {}
    code = main(["data", "check", str(data), "--model", str(tiny_model(family, **over)), "--examples", "2",
                 "--json", "--serve-target", target])
    assert code == 0
    examples = json.loads(capsys.readouterr().out)["examples"]
    assert len(examples) == 2
    ex = examples[0]
    assert len(ex["input_ids"]) == len(ex["target_mask"])
    base = bases(family, **over)
    row = json.loads((data / "train.jsonl").read_text().splitlines()[0])
    answer = row["messages"][1]["content"]
    supervised = [i for i, m in zip(ex["input_ids"], ex["target_mask"]) if m]
    assert base.tokenizer.decode(supervised).startswith(answer + "<|im_end|>")
    if target == "auto":
        from mlx_vlm.prompt_utils import apply_chat_template

        prompt = apply_chat_template(base.processor, base.config, row["messages"][0]["content"], num_images=1)
        assert ex["serve_target"] == "mlx-vlm" and ex["text"].startswith(prompt)
        assert ex["image_sizes"] == [[56, 56]]  # 64 px -> Qwen2-VL's 28-px grid within max_pixels
    else:
        assert ex["serve_target"] == "mlx-swift"
        # the app's prompt with its (h/64)*(w/64) image tokens written as the engine's one placeholder
        assert ex["text"].startswith(app_prepare(row["messages"][0]["content"], 64, 64))
        assert ex["image_sizes"] == [[256, 256]]


def test_paligemma_row_is_the_processors_prefix_and_suffix(bases):
    """mlx-vlm sends PaliGemma the last user message alone; the answer is the processor's suffix,
    and the row records where the prompt (attending both ways) ends."""
    base = bases("paligemma")
    history = (Turn("user", "Earlier question?"), Turn("assistant", "earlier answer"))
    sample = caption(system="Be brief.", history=history)
    ex = encoder(base).encode(sample)
    _, runtime = mlx_vlm_prompt_inputs(base, PROMPT, 1)  # the prompt alone
    prompt_ids = runtime["input_ids"].reshape(-1)
    check_prompt_then_answer(encoder(base), ex, prompt_ids)
    assert ex.target_mask[len(prompt_ids):].all()  # the answer and <eos>
    assert ex.input_ids[-1] == base.tokenizer.eos_token_id
    assert ex.images["prefix_length"].tolist() == [len(prompt_ids)]


# ---- mlx-swift-lm (MLXVLM / MLXLLM) ---------------------------------------------------------------
# A transcription of ml-explore/mlx-swift-examples, Libraries/MLXVLM/Models/: Qwen2VL.swift @fd11b387,
# Qwen25VL.swift @881ad5a1, Qwen3VL.swift @9b6c0315, QwenVL.swift @7de86841 (newest stored versions):
#   Qwen2VLMessageGenerator.generate(message:) (Qwen2VL.swift's last struct; Qwen2VLProcessor and
#     Qwen25VLProcessor use it): ["role": role, "content": [["type": "text", "text": content]]
#     + images.map { ["type": "image"] } + videos.map {...}] -> the image AFTER the text (mlx-vlm puts a
#     Qwen2.5-VL image first); Qwen3VLMessageGenerator (Qwen3VL.swift's last struct): imageContent +
#     videoContent + textContent -> the image FIRST
#   Qwen2VLProcessor.prepare(input:): messages = Qwen2VLMessageGenerator().generate(from: input);
#     promptTokens = tokenizer.applyChatTemplate(messages:) (swift-transformers: render the
#     tokenizer's Jinja chat template with add_generation_prompt true, then
#     encode(text: rendered, addSpecialTokens: false)); then QwenVL.replacePaddingTokens(in:frames:
#     paddingToken: "<|image_pad|>", mergeSize:) - every encode("<|vision_start|><|image_pad|><|vision_end|>")
#     range becomes encode("<|vision_start|>" + "<|image_pad|>" x frame.product / mergeSize² + "<|vision_end|>")
#   Qwen2VLProcessor.preprocess(images:processing:): QwenVL.targetSize(height:width:factor: patchSize *
#     mergeSize, minPixels:maxPixels:) - hBar = max(factor, Int(round(Float(h) / Float(factor))) * factor)
#     (Swift's round: half away from zero), likewise wBar; > maxPixels: beta = sqrt(h*w / maxPixels),
#     floor(h / beta / factor) * factor; < minPixels: beta = sqrt(minPixels / (h*w)), ceil(h * beta /
#     factor) * factor - then toSRGB, resampled bicubic, normalized(mean, std), QwenVL.patchify
#     (reshape (t, tp, c, h/m, m, p, w/m, m, p), transpose (0, 3, 6, 4, 7, 2, 1, 5, 8), reshape (t*h*w, c*tp*p*p);
#     a single image tiled to temporalPatchSize).

def swift_messages(text, n_images, image_first=False):
    text, images = [{"type": "text", "text": text}], [{"type": "image"}] * n_images
    return [{"role": "user", "content": images + text if image_first else text + images}]


def swift_prompt_tokens(base, messages):
    tok = base.tokenizer
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok.encode(rendered, add_special_tokens=False)


def swift_replace_padding_tokens(tok, tokens, frames, merge):
    placeholder = tok.encode("<|vision_start|><|image_pad|><|vision_end|>", add_special_tokens=False)
    out, i, k = [], 0, 0
    while i < len(tokens):
        if tokens[i:i + len(placeholder)] == placeholder:
            t, h, w = frames[k]
            out += tok.encode("<|vision_start|>" + "<|image_pad|>" * (t * h * w // merge ** 2) + "<|vision_end|>",
                              add_special_tokens=False)
            i, k = i + len(placeholder), k + 1
        else:
            out.append(tokens[i])
            i += 1
    assert k == len(frames)  # "Number of placeholder tokens does not match number of frames"
    return out


def swift_target_size(h, w, factor, min_pixels, max_pixels):
    import math

    def rnd(x):
        return math.floor(x + 0.5)  # Swift's round for x >= 0

    hb, wb = max(factor, rnd(h / factor) * factor), max(factor, rnd(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def swift_preprocess(image, ip):
    p, m, tp = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    h, w = swift_target_size(image.height, image.width, p * m, ip.min_pixels, ip.max_pixels)
    arr = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    arr = ((arr - np.asarray(ip.image_mean, np.float32)) / np.asarray(ip.image_std, np.float32)).transpose(2, 0, 1)
    patches = np.tile(arr[None], (tp, 1, 1, 1))
    gh, gw = h // p, w // p
    x = patches.reshape(1, tp, 3, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gh * gw, 3 * tp * p * p), (1, gh, gw)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_mlx_swift_lm_layout_is_mlxvlms(family, bases):
    base = bases(family)
    enc = encoder(base, "mlx-swift-lm")
    assert enc.serve_target == "mlx-swift-lm"
    ex = enc.encode(caption())
    ip = base.processor.image_processor
    pixels, frame = swift_preprocess(IMAGE, ip)
    first = family == "qwen3_vl"
    prompt = swift_replace_padding_tokens(base.tokenizer, swift_prompt_tokens(base, swift_messages(PROMPT, 1, first)),
                                          [frame], ip.merge_size)
    check_prompt_then_answer(enc, ex, prompt)
    assert ex.input_ids[-2:].tolist() == base.tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    np.testing.assert_allclose(ex.images["pixel_values"], pixels, atol=1e-6)
    assert ex.images["image_grid_thw"].tolist() == [list(frame)]
    # Qwen2/2.5-VL: the text before the image, whatever mlx-vlm does for the family; Qwen3-VL: image first
    text = enc.prompt_text(caption())
    assert (text.index(PROMPT) < text.index("<|vision_start|>")) != first
    if family == "qwen2_5_vl":  # mlx-vlm puts the image first: the two targets differ
        assert encoder(base).prompt_text(caption()) != text
    if family == "qwen3_vl":  # 80 px / 32 = 2.5 rounds up in Swift (96 px), down in HF (64 px)
        assert frame == (1, 4, 6)


def test_mlx_swift_lm_rounds_like_swift():
    """Swift's `round` is half away from zero: 80 px at factor 32 is 2.5 -> 3 (96 px), where
    Python's round (and HF's smart_resize) gives 2 (64 px)."""
    from finetune_app.core.serving.mlx_swift_lm import target_size

    assert target_size(64, 80, 32, 3136, 12544) == (64, 96) == swift_target_size(64, 80, 32, 3136, 12544)
    assert target_size(1000, 700, 28, 3136, 12544) == swift_target_size(1000, 700, 28, 3136, 12544)  # > max
    assert target_size(30, 40, 28, 3136, 12544) == swift_target_size(30, 40, 28, 3136, 12544) == (56, 84)  # < min: ceil


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_mlx_swift_lm_text_model_is_the_chat_template(family, bases):
    """MLXLLM: DefaultMessageGenerator's {"role", "content": text} through the same swift-transformers
    applyChatTemplate (render, then encode without special tokens) - mlx-lm's ids."""
    base = bases(family)
    sample = Sample((Turn("system", "Be brief."), Turn("user", "What is two and two?"), Turn("assistant", "four.")))
    ours, lm = encoder(base, "mlx-swift-lm"), encoder(base, "mlx-lm")
    assert ours.serve_target == "mlx-swift-lm"
    np.testing.assert_array_equal(ours.encode(sample).input_ids, lm.encode(sample).input_ids)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two and two?"}]
    assert ours.prompt_text(sample) == base.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                                          add_generation_prompt=True)


def test_mlx_swift_lm_is_refused_for_a_family_it_does_not_cover(bases):
    from finetune_app.core import serving
    from finetune_app.core.errors import ConfigError

    with pytest.raises(ConfigError, match="mlx-swift-lm covers text models and qwen2_vl"):
        serving.resolve("mlx-swift-lm", bases("gemma3"))
