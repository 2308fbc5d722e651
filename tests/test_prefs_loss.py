"""DPO, IPO and ORPO losses equal an independent computation (issue 17).

The independent side loads the base and the trained adapter with the libraries' own loaders
(`mlx_lm.load` / `mlx_vlm.load`, which also proves the adapter format), runs one plain forward
pass per sequence, locates the answer by searching its own tokens, and applies the papers'
formulas in float64: DPO −log σ(β·h), IPO (h − 1/(2β))² on mean token log-probs, ORPO
−mean log P(y_w) − λ·log σ(log-odds ratio). The reference is the base loaded without the adapter.
"""

import json
import math

import numpy as np
import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.training.trainer import Trainer
from helpers import find_last, log_softmax64

PROMPTS = ["Say the words number 0.", "Say the words number 1.", "Say the words number 2."]
ANSWERS = ["a red circle", "a blue square", "a green triangle"]


def write_pairs(folder, with_images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, answer in enumerate(ANSWERS):
        wrong = ANSWERS[(i + 1) % 3] + " again"
        if with_images:
            Image.new("RGB", (64, 64), answer.split()[1]).save(folder / f"{i}.png")
            rows.append({"images": [f"{i}.png"], "prompt": "Describe this image.", "chosen": answer, "rejected": wrong})
        else:
            rows.append({"prompt": PROMPTS[i], "chosen": [{"role": "assistant", "content": answer}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pairs.jsonl", rows


def answer_logps(model_dir, family, folder, rows, adapter=None):
    """[(summed log-prob, tokens)] of chosen then rejected answers, one plain forward each."""
    import mlx.core as mx

    out = {"chosen": [], "rejected": []}
    if family in ("llama", "qwen2"):
        import mlx_lm

        model, tok = mlx_lm.load(str(model_dir), adapter_path=adapter)
        for row, prompt in zip(rows, PROMPTS):
            for side in out:
                answer = row[side][0]["content"]
                text = tok.apply_chat_template([{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": answer}], tokenize=False)
                ids = tok.encode(text, add_special_tokens=False)
                start = find_last(ids, tok.encode(answer, add_special_tokens=False))
                lp = log_softmax64(np.array(model(mx.array([ids]))[0]))
                out[side].append((sum(lp[t - 1, ids[t]] for t in range(start, len(ids))), len(ids) - start))
        return out["chosen"] + out["rejected"]

    from PIL import Image
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load, prepare_inputs

    model, processor = load(str(model_dir), adapter_path=adapter)
    model.eval()
    tok = processor.tokenizer
    config = json.loads((model_dir / "config.json").read_text())
    image_token = config.get("image_token_index", config.get("image_token_id"))
    for row in rows:
        image = Image.open(folder / row["images"][0]).convert("RGB")
        for side in out:
            messages = [{"role": "user", "content": "Describe this image."}, {"role": "assistant", "content": row[side]}]
            text = apply_chat_template(processor, config, messages, add_generation_prompt=False, num_images=1)
            inputs = prepare_inputs(processor, images=[image], prompts=[text], image_token_index=image_token,
                                    add_special_tokens=False, padding=False)
            ids = np.array(inputs["input_ids"]).reshape(-1).tolist()
            kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")
                      and isinstance(v, mx.array)}
            logits = np.array(model(mx.array([ids]), inputs["pixel_values"], inputs["attention_mask"], **kwargs).logits[0])
            start = find_last(ids, tok.encode(row[side], add_special_tokens=False))
            lp = log_softmax64(logits)
            out[side].append((sum(lp[t - 1, ids[t]] for t in range(start, len(ids))), len(ids) - start))
    return out["chosen"] + out["rejected"]


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def paper_loss(objective, beta, policy, reference):
    """Mean over pairs of the paper's loss, from [(logp, n)] chosen then rejected."""
    P = len(policy) // 2
    losses = []
    for i in range(P):
        (pc, nc), (pr, nr) = policy[i], policy[P + i]
        (rc, _), (rr, _) = reference[i], reference[P + i]
        if objective == "dpo":
            losses.append(-log_sigmoid(beta * ((pc - pr) - (rc - rr))))
        elif objective == "ipo":
            h = (pc / nc - pr / nr) - (rc / nc - rr / nr)
            losses.append((h - 1 / (2 * beta)) ** 2)
        else:  # orpo
            mc, mr = pc / nc, pr / nr
            log_odds = (mc - math.log1p(-math.exp(mc))) - (mr - math.log1p(-math.exp(mr)))
            losses.append(-mc - beta * log_sigmoid(log_odds))
    return sum(losses) / P


def perturb_adapter(model, seed=1):
    """LoRA's B starts at zero (policy = reference); give it values so the two differ."""
    import mlx.core as mx

    from finetune_app.core.adapters import is_adapter_layer

    mx.random.seed(seed)
    for _, m in model.named_modules():
        if is_adapter_layer(m):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.5
    mx.eval(model.parameters())


@pytest.mark.parametrize("family,fast", [("llama", True), ("qwen2_vl", True), ("qwen2_vl", False)])
def test_preference_losses_match_papers_formulas(family, fast, tiny_model, tmp_path):
    """One fixed batch of three pairs; the trainer's compiled step (DPO) and each objective's loss
    and metrics against the independent computation."""
    from finetune_app.core import adapters
    from finetune_app.core.training.objectives import objective

    model_dir = tiny_model(family)
    data_file, rows = write_pairs(tmp_path / "data", with_images=family != "llama")
    cfg = TrainConfig(model=str(model_dir), data=str(data_file), output=str(tmp_path / "run"), iters=1,
                      batch_size=3, valid_fraction=0.0, sample_count=0, grad_clip=None, objective="dpo",
                      beta=0.3, compile=fast, cache_vision=fast)
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.family.fast == fast and len(trainer.data.train) == 3
    perturb_adapter(trainer.base.model)
    adapters.save(trainer.base.model, trainer.adapter_config, tmp_path / "adapter")
    batch = trainer.make_batch(trainer.data.train)
    assert batch.input_ids.shape[0] == 6 and batch.units == 3  # chosen rows, then rejected rows

    policy = answer_logps(model_dir, family, data_file.parent, rows, adapter=str(tmp_path / "adapter"))
    reference = answer_logps(model_dir, family, data_file.parent, rows)
    order = [e.index for e in trainer.data.train]  # the engine's pairs, in its order
    policy = [policy[i] for i in order] + [policy[3 + i] for i in order]
    reference = [reference[i] for i in order] + [reference[3 + i] for i in order]
    assert batch.n_targets == sum(n for _, n in policy), "only the answers' tokens are compared"
    # the cached reference is the base: the adapter switched off
    assert batch.extra["ref_logps"] == pytest.approx([lp for lp, _ in reference], rel=1e-4, abs=1e-3)
    P = 3
    for name in ("dpo", "ipo", "orpo"):
        obj = objective(name, cfg.replace(objective=name))
        total, count, metrics = obj.loss(trainer.base.model, trainer.family, trainer.step.inputs(batch))
        expected = paper_loss(name, 0.3, policy, reference)
        assert float(count.item()) == P
        assert float(total.item()) / P == pytest.approx(expected, rel=1e-4, abs=1e-5), name
        assert float(metrics["chosen_logps"].item()) / P == pytest.approx(sum(lp for lp, _ in policy[:P]) / P, rel=1e-4)
        assert float(metrics["rejected_logps"].item()) / P == pytest.approx(sum(lp for lp, _ in policy[P:]) / P, rel=1e-4)
    # the step (compiled on the fast path) reports the same DPO loss and its metrics per pair
    loss, _ = trainer.step([batch])
    assert float(loss.item()) == pytest.approx(paper_loss("dpo", 0.3, policy, reference), rel=1e-4, abs=1e-5)
    rewards = [(0.3 * (policy[i][0] - reference[i][0]), 0.3 * (policy[P + i][0] - reference[P + i][0])) for i in range(P)]
    assert float(trainer.step.metrics["reward_accuracy"].item()) == pytest.approx(sum(c > r for c, r in rewards) / P)
    assert float(trainer.step.metrics["reward_margin"].item()) == pytest.approx(sum(c - r for c, r in rewards) / P, rel=1e-3, abs=1e-4)


def test_a_rank_without_pairs_joins_the_step_with_nothing_counted(tiny_model, tmp_path):
    """Data parallel: a rank left without pairs plans a placeholder pair that weighs nothing (no
    reference computed, count 0, zero loss and metrics) and still runs the same step."""
    from finetune_app.core.training.objectives import objective

    data_file, _ = write_pairs(tmp_path / "data", with_images=False)
    cfg = TrainConfig(model=str(tiny_model("llama")), data=str(data_file), output=str(tmp_path / "run"), iters=1,
                      batch_size=3, valid_fraction=0.0, sample_count=0, objective="dpo")
    trainer = Trainer(cfg)
    trainer.setup()
    placeholder = [trainer.data.train[0].without_targets()]
    batch = trainer.make_batch(placeholder)
    assert batch.units == 0 and batch.n_targets == 0 and not trainer.reference.cache
    for name in ("dpo", "orpo"):
        total, count, metrics = objective(name, cfg.replace(objective=name)).loss(
            trainer.base.model, trainer.family, trainer.step.inputs(batch))
        assert float(total.item()) == 0.0 and float(count.item()) == 0.0
        assert all(float(v.item()) == 0.0 for v in metrics.values())
