"""The memory estimate the form and `data check` show (core/estimates.py) against MLX's measured
peak of real runs (tiny Llama, CPU), and the will-it-fit verdict built on it."""

import json

import pytest

from finetune_app.core import estimates
from finetune_app.core.config import TrainConfig
from finetune_app.testing.fit_check import predicted_vs_measured


def rows(folder, words, n):
    folder.mkdir(parents=True, exist_ok=True)
    row = {"messages": [{"role": "user", "content": "say alpha alpha alpha"},
                        {"role": "assistant", "content": " ".join(["beta gamma"] * (words // 2))}]}
    (folder / "train.jsonl").write_text((json.dumps(row) + "\n") * n)
    return folder / "train.jsonl"


@pytest.mark.parametrize("words, batch", [(50, 2), (200, 4)])
def test_estimate_is_within_20_percent_of_the_measured_peak(words, batch, tiny_model, tmp_path):
    """Within 20%: the constants were fitted on these tiny Llamas (measured ratios 1.05-1.11), and
    the peak is MLX's from just before the run (reset so an earlier test in this process does not
    count; loading and preparing are included, as from a process start). The GPU target is 15%, checked
    on the benchmark models by the harness (`predicted_vs_measured`)."""
    import gc

    import mlx.core as mx

    gc.collect()  # earlier tests' arrays: freed, or subtracted as held (predicted_vs_measured)
    mx.clear_cache()
    mx.reset_peak_memory()
    r = predicted_vs_measured(tiny_model("llama"), rows(tmp_path / "d", words, batch), output=tmp_path,
                              batch_size=batch)
    assert r["measured_gb"] > 0
    assert 0.8 <= r["ratio"] <= 1.2, r


def test_will_it_fit_gives_the_largest_batch_and_row_that_fit():
    sizes = estimates.model_sizes({"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                                   "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256})
    model = dict(parameters=1_200_000_000, dtype="bfloat16", quantization="", sizes=sizes)
    cfg = TrainConfig(batch_size=4)
    fit = estimates.will_it_fit(cfg, budget_bytes=16 * 10**9, seq_len=1024, **model)
    limit = estimates.FIT_SHARE * 16

    def need(b, n):
        return estimates.run_memory_gb(cfg.replace(batch_size=b), seq_len=n, **model)

    assert fit.fits == (need(4, 1024) <= limit) and fit.need_gb == need(4, 1024)
    assert need(fit.largest_batch, 1024) <= limit < need(fit.largest_batch + 1, 1024)
    assert need(4, fit.longest_row) <= limit < need(4, fit.longest_row + 1)
    small = estimates.will_it_fit(cfg, budget_bytes=2 * 10**9, seq_len=1024, **model)
    assert not small.fits and small.verdict().startswith("Will not fit")
    assert small.to_dict()["largest_batch"] == small.largest_batch


def test_data_check_says_whether_it_fits(tiny_model, tmp_path, capsys):
    """`data check --model --json` carries the same estimate and verdict as `will_it_fit`."""
    from finetune_app.cli import main
    from finetune_app.core.training.memory import fit_budget

    model = tiny_model("llama")
    data = rows(tmp_path / "d", 40, 3)
    assert main(["data", "check", str(data), "--model", str(model), "--batch-size", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    memory = out["memory"]
    params, dtype, quant = estimates.folder_parameters(model)
    fit = estimates.will_it_fit(TrainConfig(batch_size=2), budget_bytes=fit_budget(), seq_len=memory["seq_len"],
                                parameters=params, dtype=dtype, quantization=quant,
                                sizes=estimates.model_sizes(json.loads((model / "config.json").read_text())))
    assert memory == fit.to_dict() and memory["fits"] and memory["batch_size"] == 2
    assert main(["data", "check", str(data), "--model", str(model)]) == 0
    assert "Memory: Fits: about" in capsys.readouterr().out
