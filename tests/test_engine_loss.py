"""The trainer's loss equals an independent computation: the library's own forward pass on the
processor's inputs and a float64 cross-entropy over the answer tokens only, located by searching
the answer's own tokens. For FastVLM this also proves the labels stay aligned after the model
expands each image placeholder into its feature positions."""

import json

import numpy as np
import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.trainer import Trainer
from helpers import find_last, log_softmax64

ANSWERS = ["a red circle", "a blue square", "a green triangle"]


def write_rows(folder, with_images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, answer in enumerate(ANSWERS):
        if with_images:
            colour = answer.split()[1]
            Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
            rows.append({"images": [f"{i}.png"], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]},
                {"role": "assistant", "content": answer}]})
        else:
            rows.append({"messages": [{"role": "user", "content": f"Say the words number {i}."},
                                      {"role": "assistant", "content": answer}]})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "data.jsonl"


def independent_loss(model_dir, family, data_file):
    """Sum of -log p(answer token) over every answer token (answer text and end of turn)."""
    import mlx.core as mx

    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    total, count = 0.0, 0
    if family == "llama":
        import mlx_lm

        model, tok = mlx_lm.load(str(model_dir))
        for row in rows:
            text = tok.apply_chat_template(row["messages"], tokenize=False)
            ids = tok.encode(text, add_special_tokens=False)
            start = find_last(ids, tok.encode(row["messages"][1]["content"], add_special_tokens=False))
            logits = np.array(model(mx.array([ids]))[0])
            lp = log_softmax64(logits)
            total -= sum(lp[t - 1, ids[t]] for t in range(start, len(ids)))
            count += len(ids) - start
        return total, count

    from PIL import Image
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load, prepare_inputs

    from finetune_app.core import patches

    patches.apply()
    model, processor = load(str(model_dir))
    model.eval()
    tok = processor.tokenizer
    config = json.loads((model_dir / "config.json").read_text())
    image_token = config.get("image_token_index", config.get("image_token_id"))
    for row in rows:
        image = Image.open(data_file.parent / row["images"][0]).convert("RGB")
        text = apply_chat_template(processor, config, row["messages"], add_generation_prompt=False, num_images=1)
        inputs = prepare_inputs(processor, images=[image], prompts=[text], image_token_index=image_token,
                                add_special_tokens=False, padding=False)
        ids = np.array(inputs["input_ids"]).reshape(-1).tolist()
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")
                  and isinstance(v, mx.array)}
        out = model(mx.array([ids]), inputs["pixel_values"], inputs["attention_mask"], **kwargs)
        logits = np.array(out.logits[0])
        shift = logits.shape[0] - len(ids)  # FastVLM: one placeholder became (shift + 1) features
        image_pos = ids.index(image_token)
        start = find_last(ids, tok.encode(row["messages"][1]["content"], add_special_tokens=False))
        lp = log_softmax64(logits)
        for t in range(start, len(ids)):
            pos = t - 1 + (shift if t - 1 >= image_pos else 0)
            total -= lp[pos, ids[t]]
            count += 1
    return total, count


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "fastvlm", "llama"])
def test_trainer_loss_matches_independent_computation(family, path, tiny_model, tmp_path):
    """Both training paths: the fast one (cached tower features, compiled step; Qwen3-VL's deepstack
    features included) and the reference one (the library's own forward)."""
    model_dir = tiny_model(family)
    data_file = write_rows(tmp_path / "data", with_images=family != "llama")
    fast = path == "fast"
    cfg = TrainConfig(model=str(model_dir), data=str(data_file), output=str(tmp_path / "run"), iters=1,
                      batch_size=3, valid_fraction=0.0, sample_count=0, grad_clip=None,
                      compile=fast, cache_vision=fast)
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.family.fast == fast
    assert len(trainer.data.train) == 3
    batch = trainer.make_batch(trainer.data.train)
    if fast and family == "qwen3_vl":  # its deepstack features are in the fast step
        assert "deep" in trainer.family.inputs(batch)
    loss, _ = trainer.step([batch])  # the loss before the update, as the trainer reports it
    total, count = independent_loss(model_dir, family, data_file)
    assert batch.n_targets == count, "the trainer supervises exactly the answer tokens"
    assert float(loss.item()) == pytest.approx(total / count, rel=2e-5)
