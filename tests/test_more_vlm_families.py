"""The families beyond Qwen-VL and FastVLM (tiny_vlm_families): each trains LoRA through the
engine's reference path on a few one-image rows (loss finite and falling), and its adapter loads
with `mlx_vlm.load(model, adapter_path=run)` and generates through `apply_chat_template`, exactly
as an mlx-vlm user runs it (in-process, so with core/patches applied: DeepSeek-VL2, Mllama at batch 2,
LLaVA, LLaVA-NeXT and the tiny Phi-3-Vision need them). PaliGemma is a prefix-LM: its prompt attends
both ways, its answer causally (docs/engine.md)."""

import math

import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.events import TrainReport
from finetune_app.core.training.trainer import Trainer

# family -> batch size
TRAINED = {"gemma3": 2, "idefics3": 2, "smolvlm": 2, "pixtral": 2, "mistral3": 2,
           "mllama": 2, "qwen3_5": 2, "deepseek_vl_v2": 2, "llava": 2, "phi3_v": 2, "llava_next": 2,
           "paligemma": 2}
PREFIX_LM = {"paligemma"}  # the prompt attends both ways, the answer causally


@pytest.fixture(scope="module")
def four_shapes(tmp_path_factory):
    from finetune_app.core.data.demo import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=4, n_valid=2,
                               size=64, seed=0)


@pytest.mark.parametrize("family", sorted(TRAINED))
def test_family_trains_and_its_adapter_generates_in_mlx_vlm(family, tiny_model, four_shapes,
                                                            tmp_path):
    import mlx_vlm
    from mlx_vlm.prompt_utils import apply_chat_template

    model, run = tiny_model(family), tmp_path / "run"
    assert_causal(family, model, four_shapes)
    losses, epoch = [], 4 // TRAINED[family]  # steps per pass over the 4 training rows
    cfg = TrainConfig(model=str(model), data=str(four_shapes), output=str(run), iters=2 * epoch,
                      batch_size=TRAINED[family], lr_schedule="constant", steps_per_report=1,
                      steps_per_eval=100, save_every=100, sample_count=0)
    listener = lambda e: losses.append(e.loss) if isinstance(e, TrainReport) else None  # noqa: E731
    assert Trainer(cfg, listeners=[listener]).run().status == "finished"
    assert len(losses) == 2 * epoch and all(math.isfinite(x) for x in losses)
    # the same rows a second time: the adapter has learnt them
    assert sum(losses[epoch:]) < sum(losses[:epoch]), losses

    loaded, processor = mlx_vlm.load(str(model), adapter_path=str(run))
    assert any("lora" in type(m).__name__.lower() for _, m in loaded.named_modules())
    prompt = apply_chat_template(processor, loaded.config, "Describe the image.", num_images=1)
    image = sorted((four_shapes / "images").glob("*.png"))[0]
    out = mlx_vlm.generate(loaded, processor, prompt, image=[str(image)], max_tokens=4,
                           temperature=0.0, verbose=False)
    assert out.generation_tokens > 0


def assert_causal(family, model_folder, data):
    """The engine's forward must not see later tokens (some mlx-vlm models' __call__ hand the
    padding mask to the language model in place of its causal mask): changing the last tokens of
    a batch leaves every earlier logit as it was."""
    import dataclasses

    import mlx.core as mx

    from finetune_app.core.data import open_dataset
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.families import family_for
    from finetune_app.core.models import load_base

    base = load_base(model_folder)
    encoder, rows = Encoder(base), open_dataset(data)
    fam = family_for(base)
    batch = fam.plan([encoder.encode(rows.sample(i), i) for i in range(TRAINED[family])])
    ids = batch.input_ids.copy()
    k = ids.shape[1] - 3
    if family in PREFIX_LM:  # the tail must lie in every row's answer
        assert all(batch.target_mask[r, k:n].all() for r, n in enumerate(batch.attention_mask.sum(1)))
    ids[:, k:] = ids[:, k - 1:k]  # a different tail
    before = fam.logits(base.model, batch)
    after = fam.logits(base.model, dataclasses.replace(batch, input_ids=ids))
    assert float(mx.abs(before[:, :k] - after[:, :k]).max()) == 0.0
    if family in PREFIX_LM:  # and the prompt does attend both ways: its last token moves the first
        first = int(batch.target_mask[0].argmax())  # the first answer token; the prompt ends before
        ids = batch.input_ids.copy()
        ids[:, first - 2] = ids[:, first - 3]
        after = fam.logits(base.model, dataclasses.replace(batch, input_ids=ids))
        assert float(mx.abs(before[0, :first - 2] - after[0, :first - 2]).max()) > 0.0


def test_every_listed_family_loads_as_a_vision_language_model():
    from finetune_app.core.models import model_kind
    from finetune_app.testing.tiny_models import tiny_config

    for family in TRAINED:
        assert model_kind(tiny_config(family)) == "vlm", family
    # A real Phi-3-Vision config names its tower `img_processor` and has no vision_config.
    assert model_kind({"model_type": "phi3_v", "img_processor": {"name": "clip_vision_model"},
                       "embd_layer": {"embedding_cls": "image"}}) == "vlm"


@pytest.mark.parametrize("family", sorted(TRAINED))
def test_tokenizer_keeps_the_family_tokens_whole(family):
    from finetune_app.testing import tiny_models

    tok = tiny_models.make_tokenizer(family)
    specials, plain, bos, eos, pad = tiny_models._TOKENS[family]
    assert all(len(tok.tokenize(t)) == 1 for t in specials + plain)
    assert tok.eos_token == eos and tok.pad_token == pad and len(tok) % 64 == 0
    named = getattr(tiny_models.SPECS.get(family), "named", {})
    assert all(getattr(tok, name) == token for name, token in named.items())


def test_paligemma_mask_is_transformers_prefix_lm_rule():
    """Rows with different prompt lengths and padding: query q sees key k when k is not padding and
    k is in the prompt (token_type_ids 0) or k <= q (transformers' PaliGemma causal mask)."""
    import mlx.core as mx
    import numpy as np

    from finetune_app.core.families.paligemma import prefix_lm_mask

    token_type = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])  # row 2: 4 tokens, then padding
    padding = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    prefix = (token_type == 0).argmin(axis=1)  # [3, 2]
    got = np.array(prefix_lm_mask(prefix, mx.array(padding)))[:, 0]
    q, k = np.arange(6)[:, None], np.arange(6)[None, :]
    for r in range(2):
        prompt_key = (token_type[r] == 0) & (np.arange(6) < prefix[r])
        want = (padding[r][None, :] == 1) & (prompt_key[None, :] | (k <= q))
        np.testing.assert_array_equal(got[r], want)
