"""One declaration per setting: every TrainConfig field reaches the CLI and the settings form (both
generated from core.config.settings()), and steps are estimated in one place with one epochs default."""

from __future__ import annotations

import contextlib
import io

import pytest


def other_value(s):
    """A valid value for setting `s` that is not its default, and how to say it on the command line."""
    if s.kind is bool:
        return (not s.default), None
    if s.choices:
        value = next(v for _, v in s.choices if v is not None and v != s.default)
        return value, str(value)
    if s.kind is list:
        return ["q_proj", "v_proj"], "q_proj, v_proj"
    if s.kind is int:
        value = (s.default or 0) + 7 if s.default is not None else 7
        return value, str(value)
    if s.kind is float:
        value = 0.25 if s.default != 0.25 else 0.5
        return value, str(value)
    return "some/where", "some/where"


def test_every_setting_has_a_flag_that_sets_it():
    from finetune_app.cli import build_parser
    from finetune_app.cli.train import build_config
    from finetune_app.core.config import settings

    parser = build_parser()
    from dataclasses import fields

    from finetune_app.core.config import TrainConfig

    undeclared = [f.name for f in fields(TrainConfig) if "group" not in f.metadata]
    assert undeclared == [], "declare each TrainConfig field with setting(...)"
    flags = [s.flag for s in settings()]
    assert len(set(flags)) == len(flags)
    for s in settings():
        value, text = other_value(s)
        argv = ["train", s.flag] + ([text] if text is not None else [])
        cfg, _ = build_config(parser.parse_args(argv))
        assert getattr(cfg, s.name) == value, (s.flag, text)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert all(s.flag in out.getvalue() for s in settings()) and "about 30% slower" in out.getvalue()
    # a flag not given changes nothing: the preset's values stay
    cfg, _ = build_config(parser.parse_args(["train", "--preset", "quick test"]))
    assert cfg.iters == 50 and cfg.lora_rank == 8 and cfg.compile is True
    # flags kept their spellings and meaning
    cfg, _ = build_config(parser.parse_args(["train", "--no-completion-only", "--report-to", "", "--epochs", "2"]))
    assert cfg.completion_only is False and cfg.report_to is None and cfg.epochs == 2.0 and cfg.iters is None


@pytest.mark.gui
def test_every_setting_has_a_form_field_that_sets_it(app_env):
    from finetune_app.core.config import settings
    from finetune_app.ui.hyperparams import CHOSEN_ELSEWHERE, HyperparamForm

    form = HyperparamForm()
    for s in settings():
        if s.name in CHOSEN_ELSEWHERE:  # the model picker and the dataset browser: form.config(model=, data=)
            assert s.name not in form.fields
            continue
        field = form.fields[s.name]
        assert field.editor.toolTip() == s.help, s.name
        value, _ = other_value(s)
        field.set_value(value)
        got, problem = field.value()
        assert problem is None and got == value, (s.name, got, problem)
        assert getattr(form.config(), s.name) == value, s.name
    assert form.config(model="m", data="d").model == "m"
    form.deleteLater()


def test_steps_have_one_estimate_and_one_epochs_default():
    from finetune_app.core import estimates
    from finetune_app.core.config import DEFAULT_EPOCHS, TrainConfig

    cfg = TrainConfig(batch_size=4, grad_accumulation=2)
    # 10 rows -> 3 batches -> 2 steps per epoch; no epochs given -> DEFAULT_EPOCHS of them
    assert estimates.total_steps_for_rows(cfg, 10) == estimates.total_steps(cfg, 3) == 2 * DEFAULT_EPOCHS
    assert estimates.total_steps(cfg.replace(epochs=1.5), 3) == 3
    assert estimates.total_steps(cfg.replace(iters=11, epochs=5.0), 3) == 11
    assert estimates.total_steps_for_rows(cfg.replace(batch_size=0), 10) is None


def test_memory_estimate_grows_with_batch_and_shrinks_with_quantization():
    from finetune_app.core import estimates
    from finetune_app.core.config import TrainConfig

    sizes = estimates.model_sizes({"text_config": {"hidden_size": 512, "num_hidden_layers": 8,
                                                   "num_attention_heads": 8, "intermediate_size": 1024}})
    assert sizes["hidden_size"] == 512 and sizes["num_layers"] == 8 and sizes["head_dim"] == 64

    def gb(**changes):
        return estimates.run_memory_gb(TrainConfig().replace(**changes), parameters=10**9, dtype="bfloat16",
                                       quantization="none", sizes=sizes, seq_len=512)

    assert gb(batch_size=8) > gb(batch_size=1)
    assert gb(quantize_bits=4) < gb()
    assert gb(fine_tune_type="full") > gb()
    assert gb(batch_size="x") == gb(batch_size=1)  # a value being typed: estimated as the smallest batch
