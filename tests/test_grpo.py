"""GRPO: the engine's loss equals the paper's formula computed independently (plain library forward
passes of the adapted model and of a separately loaded base, float64), for a tiny text model and a
tiny Qwen2-VL; the reference model (adapter off) is exactly the base."""

import json
import statistics

import numpy as np
import pytest

from finetune_app.core.config import TrainConfig
from finetune_app.core.data.tokenize import Example
from finetune_app.core.training.objectives import grpo
from finetune_app.core.training.trainer import Trainer

PROMPTS = ["Name a colour.", "Name a shape."]
G = 3
REWARDS = [1.0, 0.0, 0.5, 0.0, 0.0, 2.0]  # G per prompt
BETA, EPS = 0.1, 0.2


def write_rows(folder, with_images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, prompt in enumerate(PROMPTS):
        row = {"prompt": prompt, "answer": "red"}
        if with_images:
            Image.new("RGB", (64, 64), ("red", "blue")[i]).save(folder / f"{i}.png")
            row["images"] = [f"{i}.png"]
        rows.append(row)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "data.jsonl"


def log_softmax64(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def trainer_for(model_dir, data, out, **kw):
    cfg = TrainConfig(model=str(model_dir), data=str(data), output=str(out), iters=1, batch_size=2,
                      valid_fraction=0.0, sample_count=0, grad_clip=None, lora_rank=4, objective="grpo",
                      grpo_group_size=G, grpo_beta=BETA, grpo_clip=EPS, **kw)
    trainer = Trainer(cfg)
    trainer.setup()
    return trainer


def randomise_adapter(model, seed=1):
    """LoRA's B starts at zero (adapter = base); give it values so policy and reference differ."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    rng = np.random.default_rng(seed)
    new = [(k, mx.array(rng.normal(0, 0.5, v.shape).astype(np.float32)).astype(v.dtype))
           for k, v in tree_flatten(model.trainable_parameters()) if k.endswith("lora_b")]
    assert new, "no LoRA layers"
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())


def completions(trainer):
    """Fixed 'sampled' answers: G per prompt, lengths 2-4, ending with end-of-turn for some."""
    tok = trainer.base.tokenizer
    eos = sorted(trainer.rollout.eos)[0]
    words = [tok.encode(w, add_special_tokens=False) for w in (" red", " a blue square", " star", "circle")]
    out = []
    for p in range(len(PROMPTS)):
        for g in range(G):
            toks = (words[(p + g) % 4] + [5 + g])[:4]
            out.append(toks + ([eos] if g % 2 == 0 else []))
    return out


def engine_batch(trainer):
    rows = []
    sampled = completions(trainer)
    for k, ex in enumerate(sorted(trainer.data.train, key=lambda e: e.index)):
        P = grpo.prompt_length(ex)
        for g in range(G):
            toks = np.asarray(sampled[k * G + g], np.int32)
            ids = np.concatenate([ex.input_ids[:P], toks])
            mask = np.zeros(len(ids), bool)
            mask[P:] = True
            rows.append(Example(index=ex.index, input_ids=ids, target_mask=mask, images=ex.images, n_images=ex.n_images))
    return rows, trainer.rollout.layout(rows, np.array(REWARDS, np.float32), len(rows))


def library_logits(model, family, ids, data_file, index):
    """The library's own forward of one row, as its generate runs it: mlx-lm `model(ids)`;
    mlx-vlm `model(ids, pixel_values, mask, **processor fields)` on mlx-vlm's own prompt."""
    import mlx.core as mx

    if family == "llama":
        return np.array(model(mx.array([ids]))[0])
    pixel_values, extra = VLM_CACHE[(str(data_file), index)]
    return np.array(model(mx.array([ids]), pixel_values, mx.ones((1, len(ids)), mx.int32), **extra).logits[0])


VLM_CACHE: dict = {}


def vlm_prompt(model_dir, data_file, index):
    """mlx-vlm's own prompt ids for a row (apply_chat_template + prepare_inputs), cached with its
    pixel inputs for library_logits."""
    import mlx.core as mx
    from PIL import Image
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load_processor, prepare_inputs

    processor = load_processor(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    row = json.loads(data_file.read_text().splitlines()[index])
    text = apply_chat_template(processor, config, row["prompt"], add_generation_prompt=True, num_images=1)
    image = Image.open(data_file.parent / row["images"][0]).convert("RGB")
    inputs = prepare_inputs(processor, images=[image], prompts=[text],
                            image_token_index=config.get("image_token_id"), add_special_tokens=False)
    VLM_CACHE[(str(data_file), index)] = (inputs["pixel_values"], {
        k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask") and isinstance(v, mx.array)})
    return np.array(inputs["input_ids"]).reshape(-1).tolist()


def load_base_copy(model_dir, family):
    """A second, adapter-free copy of the base: the reference model, loaded independently."""
    if family == "llama":
        import mlx_lm

        return mlx_lm.load(str(model_dir))[0]
    from mlx_vlm.utils import load

    from finetune_app.core import patches

    patches.apply()
    model = load(str(model_dir))[0]
    model.eval()
    return model


def independent_loss(trainer, family, model_dir, data_file, rows, old):
    """The paper's eq. 3 (TRL's per-token form) in float64 from plain forward passes."""
    base_copy = load_base_copy(model_dir, family)
    policy = trainer.base.model
    seqs = []
    for r in rows:
        P = int(np.flatnonzero(r.target_mask)[0])
        if family != "llama":
            assert vlm_prompt(model_dir, data_file, r.index) == r.input_ids[:P].tolist(), \
                "GRPO's prompt is mlx-vlm's own prompt for the row"
        lp = log_softmax64(library_logits(policy, family, r.input_ids.tolist(), data_file, r.index))
        ref = log_softmax64(library_logits(base_copy, family, r.input_ids.tolist(), data_file, r.index))
        # FastVLM's one image placeholder id becomes its image features inside the model: the
        # answer's positions move by the difference
        d = lp.shape[0] - len(r.input_ids)
        ts = range(P, len(r.input_ids))
        seqs.append(([lp[t - 1 + d, r.input_ids[t]] for t in ts], [ref[t - 1 + d, r.input_ids[t]] for t in ts]))
    total, k = 0.0, 0
    for p in range(len(rows) // G):
        group = REWARDS[p * G:(p + 1) * G]
        mean, std = statistics.fmean(group), statistics.stdev(group)
        for g in range(G):
            A = (group[g] - mean) / (std + 1e-4)
            lps, refs = seqs[p * G + g]
            terms = []
            for lp, ref in zip(lps, refs):
                ratio = np.exp(lp - old[k])
                k += 1
                surrogate = min(ratio * A, np.clip(ratio, 1 - EPS, 1 + EPS) * A)
                kl = np.exp(ref - lp) - (ref - lp) - 1
                terms.append(-(surrogate - BETA * kl))
            total += sum(terms) / len(terms)
    return total / len(rows)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl", "fastvlm"])
def test_grpo_loss_matches_paper_formula(family, tiny_model, tmp_path):
    import mlx.core as mx

    model_dir = tiny_model(family, **({"image_size": 256} if family == "fastvlm" else {}))  # 16 image features
    data_file = write_rows(tmp_path / "data", with_images=family != "llama")
    trainer = trainer_for(model_dir, data_file, tmp_path / "run")
    assert not trainer.family.fast, "GRPO runs on the library path"
    randomise_adapter(trainer.base.model)
    rows, batch = engine_batch(trainer)
    # the old policy differs from the current one by up to +-0.4 nats per token, so both sides of
    # the clip are exercised
    mask = np.asarray(batch.scale) > 0
    shift = np.where(mask, np.random.default_rng(0).uniform(-0.4, 0.4, mask.shape), 0.0)
    batch.old_logps = batch.old_logps + mx.array(shift.astype(np.float32))
    old = np.asarray(batch.old_logps)[mask].astype(np.float64)
    ratios = np.exp(-shift[mask])
    assert (ratios > 1 + EPS).any() and (ratios < 1 - EPS).any()
    expected = independent_loss(trainer, family, model_dir, data_file, rows, old)
    loss, _ = trainer.step([batch], norm=len(rows))  # the loss before the update, as the trainer reports it
    assert float(loss.item()) == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_reference_is_the_base_and_the_adapter_comes_back(method, tiny_model, tmp_path):
    """DoRA too: its learned magnitude would still rescale the weight at LoRA scale 0."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from finetune_app.core.training.reference import adapters_off

    model_dir = tiny_model("llama")
    trainer = trainer_for(model_dir, write_rows(tmp_path / "data", False), tmp_path / "run", fine_tune_type=method)
    model = trainer.base.model
    randomise_adapter(model)
    if method == "dora":  # move the magnitudes off their initial norms
        model.update(tree_unflatten([(k, v * 1.5) for k, v in tree_flatten(model.trainable_parameters())
                                     if k.endswith(".m")]))
    ids = mx.array([[1, 50, 60, 70, 80]])
    adapted = np.array(model(ids))
    with adapters_off(model):
        off = np.array(model(ids))
    base = np.array(load_base_copy(model_dir, "llama")(ids))
    np.testing.assert_allclose(off, base, rtol=1e-5, atol=1e-5)
    assert np.abs(adapted - base).max() > 1e-2
    np.testing.assert_array_equal(np.array(model(ids)), adapted)


def test_grpo_trains_fastvlm_and_mlx_vlm_loads_the_adapter(tiny_model, tmp_path):
    """A few GRPO steps on a tiny FastVLM (pictures in the prompts): finite losses, every sampled
    answer's reward recorded, and the adapter loads with mlx-vlm's own `load(adapter_path=...)`."""
    import math

    from mlx_vlm.utils import load as vlm_load

    from finetune_app.core.training.events import MetricsLog

    model_dir = tiny_model("fastvlm", image_size=256)
    cfg = TrainConfig(model=str(model_dir), data=str(write_rows(tmp_path / "data", with_images=True)),
                      output=str(tmp_path / "run"), iters=3, batch_size=2, valid_fraction=0.0, sample_count=0,
                      lora_rank=4, learning_rate=1e-2, steps_per_report=1, objective="grpo", grpo_group_size=2,
                      grpo_max_tokens=2, grpo_beta=0.1, grpo_rewards="regex:/^ [a-z]/")
    assert Trainer(cfg).run().status == "finished"
    rows = MetricsLog.read(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    recorded = (tmp_path / "run" / "rewards.jsonl").read_text().splitlines()
    assert len(recorded) == 3 * 2 * 2
    loaded, _ = vlm_load(str(model_dir), adapter_path=str(tmp_path / "run"))
    assert any("lora" in type(m).__name__.lower() for _, m in loaded.named_modules())


# ---- learning: a verifiable task on a tiny random model ------------------------------------------

LOWER_WORD = r"^ [a-z]"  # the answer starts with a lower-case word: 105 of the tiny vocabulary's 576 tokens


def task_data(folder):
    import random

    words = ["red", "blue", "green", "circle", "square", "star", "oval", "yellow", "big", "small"]
    rows = [{"prompt": f"Describe the {a} {b}.", "answer": "any"} for a in words for b in words if a != b]
    random.Random(0).shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:60]))
    (folder / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[60:80]))
    return folder


def expected_reward(model, tokenizer, prompts):
    """The exact mean held-out reward of one-token answers: the probability the model gives the
    first token to tokens whose text matches (no sampling noise)."""
    import re

    import mlx.core as mx

    good = np.array([bool(re.search(LOWER_WORD, tokenizer.decode([i]))) for i in range(len(tokenizer))])
    out = []
    for ids in prompts:
        logits = model(mx.array(ids[None]))[0, -1].astype(mx.float32)
        out.append(float(np.array(mx.softmax(logits[:len(tokenizer)]))[good].sum()))
    return float(np.mean(out))


def test_grpo_raises_the_held_out_reward(tiny_model, tmp_path):
    """12 steps of 4 prompts x 6 sampled one-token answers, reward regex '^ [a-z]': the exact
    held-out mean reward goes from 0.18 (the base; LoRA starts as the identity) to about 0.5."""
    import mlx_lm

    from finetune_app.core.training.events import MetricsLog

    model_dir = tiny_model("llama")
    cfg = TrainConfig(model=str(model_dir), data=str(task_data(tmp_path / "data")), output=str(tmp_path / "run"),
                      iters=12, batch_size=4, learning_rate=3e-2, lr_schedule="constant", lora_rank=8,
                      sample_count=0, steps_per_eval=1000, steps_per_report=1, objective="grpo",
                      grpo_group_size=6, grpo_max_tokens=1, grpo_beta=0.0, grpo_rewards=f"regex:/{LOWER_WORD}/")
    trainer = Trainer(cfg)
    assert trainer.run().status == "finished"
    prompts = [e.input_ids[:grpo.prompt_length(e)] for e in trainer.data.valid]
    base, tok = mlx_lm.load(str(model_dir))
    before = expected_reward(base, tok, prompts)
    after = expected_reward(trainer.base.model, tok, prompts)
    print(f"held-out expected reward {before:.3f} -> {after:.3f}")
    assert after - before >= 0.3
    rows = MetricsLog.read(tmp_path / "run" / "metrics.jsonl")
    train = [r["metrics"] for r in rows if r.get("kind") == "objective" and r["split"] == "train"]
    valid = [r["metrics"] for r in rows if r.get("kind") == "objective" and r["split"] == "valid"]
    assert len(train) == 12 and len(valid) == 1
    assert {"reward_mean", "reward_std", "reward_group_std", f"reward_regex:{LOWER_WORD}"} <= set(train[0])
    assert valid[0]["reward_mean"] >= before + 0.3, "the sampled held-out reward of the run's own evaluation"
    recorded = [json.loads(line) for line in (tmp_path / "run" / "rewards.jsonl").read_text().splitlines()]
    assert len(recorded) == 12 * 4 * 6 + 20 * 6, "every sampled answer's reward is recorded"


# ---- resume: sampling is a function of (seed, step) -----------------------------------------------

def test_sigkill_and_resume_reproduces_grpo(tiny_model, tmp_path):
    """A GRPO run killed with SIGKILL between checkpoints and resumed samples the same answers and
    reproduces the uninterrupted run's per-step losses, rewards and KL (dropout on, KL to the base)."""

    from finetune_app.core.training.events import MetricsLog
    from helpers import popen_cli, run_cli, sigkill_between_checkpoints

    steps = 8
    data = task_data(tmp_path / "data")

    def args(out):
        return ["train", "--model", tiny_model("llama"), "--data", data, "--output", out, "--iters", steps,
                "--batch-size", 2, "--learning-rate", "2e-2", "--lora-rank", 4, "--lora-dropout", "0.1",
                "--steps-per-report", 1, "--steps-per-eval", 100, "--save-every", 3, "--sample-count", 0,
                "--seed", 3, "--objective", "grpo", "--grpo-group-size", 3, "--grpo-max-tokens", 2,
                "--grpo-beta", "0.1", "--grpo-rewards", "regex:/^ [a-z]/,length:1-6:0.5", "--quiet"]

    def record(run):
        rows = MetricsLog.read(run / "metrics.jsonl")
        train = {r["step"]: r["loss"] for r in rows if r.get("kind") == "train"}
        objective = {(r["step"], r["split"]): r["metrics"] for r in rows if r.get("kind") == "objective"}
        sampled = [json.loads(line) for line in (run / "rewards.jsonl").read_text().splitlines()]
        return train, objective, sampled

    ref_dir, killed = tmp_path / "reference", tmp_path / "killed"
    done = run_cli(*args(ref_dir))
    assert done.returncode == 0, done.stderr
    reference = record(ref_dir)
    assert sorted(reference[0]) == list(range(1, steps + 1))
    assert all(m["kl"] >= 0 for m in reference[1].values()) and any(m["kl"] > 0 for m in reference[1].values())

    proc = popen_cli(*args(killed))
    sigkill_between_checkpoints(proc, killed, 3, 4)  # after step 3's checkpoint, before the end
    assert 4 <= max(record(killed)[0]) < steps

    resumed = run_cli("train", "--resume", killed, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from step-" in resumed.stderr
    assert record(killed) == reference, "losses, reward metrics and every sampled answer equal the uninterrupted run's"
