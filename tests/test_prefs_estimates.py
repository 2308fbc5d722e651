"""Estimates count what preference and reward training puts through the model (issue 17): a pair
is two sequences (chosen and rejected), a GRPO prompt its G sampled answers of up to
grpo_max_tokens more tokens plus their generation's KV cache; the settings form and `data check`
say so."""

from __future__ import annotations

import json

import pytest

from finetune_app.core import estimates
from finetune_app.core.config import TrainConfig
from finetune_app.testing.preference_tasks import make_format_preferences
from helpers import run_cli

SIZES = {"hidden_size": 896, "num_layers": 24, "intermediate_size": 4864, "kv_heads": 2, "head_dim": 64}


def memory(cfg, seq=256):
    return estimates.run_memory_gb(cfg, parameters=500_000_000, dtype="bfloat16", quantization="", sizes=SIZES,
                                   seq_len=seq)


def test_a_pair_is_two_sequences_and_a_grpo_prompt_g_plus_generation():
    sft, dpo = TrainConfig(batch_size=4), TrainConfig(objective="dpo", batch_size=2)
    assert [estimates.sequences_per_example(TrainConfig(objective=o)) for o in ("sft", "dpo", "ipo", "orpo")] == [1, 2, 2, 2]
    # 2 pairs are 4 sequences, as 4 SFT rows of the same length; SFT's frozen head runs fused (its
    # [K, V] logits never whole: chunked_ce.fused_ce_sum), a pair's log-probabilities do not
    assert memory(sft) < memory(dpo) < 1.1 * memory(sft), "2 pairs cost about what 4 SFT rows of the same length do"
    assert memory(TrainConfig(objective="orpo", batch_size=2)) > memory(TrainConfig(batch_size=2))

    grpo = TrainConfig(objective="grpo", batch_size=2, grpo_group_size=6, grpo_max_tokens=32)
    assert estimates.sequences_per_example(grpo) == 6
    kv_cache = 12 * (256 + 32) * 24 * 2 * (2 * 64) * 2 / 1e9  # 12 sequences' keys and values, 2 bytes each
    assert estimates.generation_gb(grpo, SIZES, 12, 256 + 32) == pytest.approx(kv_cache)
    # 12 sequences (as 6 pairs: neither runs the fused SFT head) plus the generation's keys and values
    assert memory(grpo) == pytest.approx(memory(TrainConfig(objective="dpo", batch_size=6), seq=256 + 32) + kv_cache)
    assert estimates.generation_gb(sft, SIZES, 12, 256) == 0.0
    # steps are counted in examples (pairs, prompts), as the trainer batches them
    assert estimates.total_steps_for_rows(dpo.replace(epochs=1), 10) == 5
    assert estimates.sequences_text(dpo, 10) == "10 pairs = 20 sequences (chosen and rejected)"
    assert estimates.sequences_text(grpo, 10).startswith("10 prompts × 6 sampled answers = 60 sequences")


def test_data_check_counts_pairs_as_two_sequences(tmp_path):
    data = make_format_preferences(tmp_path / "pairs", n_train=6, n_valid=2)
    text = run_cli("data", "check", data)
    assert text.returncode == 0, text.stderr
    assert "Sequences: 8 pairs = 16 sequences (chosen and rejected) for DPO" in text.stdout
    out = run_cli("data", "check", data, "--objective", "grpo", "--grpo-group-size", 3, "--json")
    seq = json.loads(out.stdout)["sequences"]
    assert (seq["objective"], seq["per_row"], seq["total"]) == ("grpo", 3, 24)


def test_the_form_shows_pairs_in_steps_and_memory(app_env, qtbot, tiny_model):
    from finetune_app.core.models import describe, load_base
    from finetune_app.ui.hyperparams import HyperparamForm
    from finetune_app.ui.workers import ModelChoice

    form = HyperparamForm()
    qtbot.addWidget(form)
    path = tiny_model("llama")
    base = load_base(path, lazy=True)
    form.set_model(ModelChoice(source=str(path), path=path, info=describe(base),
                               arch=estimates.model_sizes(base.config)))
    form.set_config(TrainConfig(objective="dpo", batch_size=2, epochs=1))
    form.set_dataset_stats(10, 40, True)
    assert "10 pairs = 20 sequences (chosen and rejected)" in form.steps_note.text()
    assert "for batch 2 (4 sequences: pairs of 2)" in form.memory.text.text()
    pairs_gb = form.memory_estimate()[0]
    form.set_config(TrainConfig(objective="sft", batch_size=2, epochs=1))
    form.set_dataset_stats(10, 40, True)
    assert "sequences" not in form.steps_note.text() and form.memory_estimate()[0] < pairs_gb
