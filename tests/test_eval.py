"""`finetune-app eval` on a small trained demo-like run: colour/shape accuracy, BLEU, chrF, ROUGE and
perplexity before and after; the numbers are the libraries' own (recomputed here with sacrebleu and
rouge-score from the outputs in eval.json), perplexity is exp(mean token NLL) of an independent
float64 forward pass, a second run comes from the cache, and report.html renders in Chromium with
its pictures and loss plot."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def evaluated(tiny_model, shapes_data, tmp_path_factory):
    from finetune_app.cli import main
    from finetune_app.core.config import TrainConfig
    from finetune_app.core.training.trainer import Trainer

    model = tiny_model("qwen2_vl")
    root = tmp_path_factory.mktemp("eval-run")
    run_dir = root / "run"
    cfg = TrainConfig(model=str(model), data=str(shapes_data), output=str(run_dir), iters=4, batch_size=2,
                      learning_rate=2e-3, lora_rank=4, steps_per_report=1, steps_per_eval=2, save_every=2,
                      sample_count=0, seed=0)
    assert Trainer(cfg).run().status == "finished"
    out = root / "report"
    assert main(["eval", "--adapter", str(run_dir), "--out", str(out), "--max-tokens", str(MAX_TOKENS),
                 "--bootstrap", "200", "--quiet"]) == 0
    return model, shapes_data, run_dir, out, json.loads((out / "eval.json").read_text())


def test_eval_reports_accuracy_bleu_rouge_perplexity_before_and_after(evaluated):
    _, _, run_dir, out, result = evaluated
    assert [s["name"] for s in result["label_slots"]] == ["colour", "shape"]
    assert result["rows"] == result["scored"] == 8  # the run's validation split
    for side in ("before", "after"):
        m = result["metrics"][side]
        for key in ("accuracy/colour", "accuracy/shape", "accuracy/all", "bleu", "chrf", "rouge1", "rouge2",
                    "rougeL", "exact_match", "normalised_match", "perplexity"):
            assert isinstance(m[key], float) and math.isfinite(m[key]), (side, key)
        assert m["perplexity"] > 1
        lo, hi = result["ci95"][side]["perplexity"]
        assert lo <= hi
    assert result["deltas"]["perplexity"]["lower_is_better"]
    assert result["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert {"sacrebleu", "rouge-score", "mlx"} <= result["versions"].keys()
    assert result["sides"]["after"]["label"].startswith("checkpoint step 4")
    assert [p[0] for p in result["loss_curves"]["after"]["train"]] == [1, 2, 3, 4]
    assert [p[0] for p in result["loss_curves"]["after"]["val"]] == [2, 4]
    html = (out / "report.html").read_text()
    assert "<svg" in html and "data:image/png;base64," in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")


def test_metrics_are_the_libraries_numbers_on_the_outputs(evaluated):
    import sacrebleu
    from rouge_score import rouge_scorer

    *_, result = evaluated
    rows = [r for r in result["results"] if "scores" in r]
    refs = [r["reference"] for r in rows]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for side in ("before", "after"):
        outs = [r["outputs"][side] for r in rows]
        m = result["metrics"][side]
        bleu = sacrebleu.metrics.BLEU()
        assert m["bleu"] == pytest.approx(bleu.corpus_score(outs, [refs]).score, abs=1e-9)
        assert result["signatures"]["bleu"] == bleu.get_signature().format()
        assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outs, [refs]).score, abs=1e-9)
        for key in ("rouge1", "rouge2", "rougeL"):
            mean = sum(scorer.score(r, o)[key].fmeasure for o, r in zip(outs, refs)) / len(refs)
            assert m[key] == pytest.approx(mean, abs=1e-12)
        assert m["exact_match"] == sum(o.strip() == r.strip() for o, r in zip(outs, refs)) / len(refs)


def test_perplexity_is_exp_of_mean_token_nll_from_a_plain_forward_pass(evaluated):
    """Independent of the engine's loss: the model's own forward, float64 log-softmax, the completion
    tokens the trainer supervises."""
    import mlx.core as mx
    import numpy as np

    from finetune_app.core import adapters
    from finetune_app.core.compare import items_from_data
    from finetune_app.core.data.tokenize import Encoder
    from finetune_app.core.models import load_base

    model, data, run_dir, _, result = evaluated
    items = items_from_data(data)
    for side in ("before", "after"):
        base = load_base(model)
        if side == "after":
            adapters.load_into(base, result["sides"]["after"]["path"])
        base.model.eval()
        encoder = Encoder(base, completion_only=True)
        total, count = 0.0, 0
        for it in items:
            ex = encoder.encode(it.sample)
            ids = mx.array(ex.input_ids[None])
            extra = {k: mx.array(v) for k, v in ex.images.items() if k != "pixel_values"}
            out = base.model(ids, mx.array(ex.images["pixel_values"]), mx.ones(ids.shape, dtype=mx.int32), **extra)
            logits = np.asarray((out.logits if hasattr(out, "logits") else out)[0].astype(mx.float32), dtype=np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
            targets = ex.input_ids[1:]
            mask = ex.target_mask[1:]
            total += -logp[np.arange(len(targets)), targets][mask].sum()
            count += int(mask.sum())
        assert result["metrics"][side]["tokens"] == count
        assert result["metrics"][side]["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_a_second_evaluation_comes_from_the_cache(evaluated, tmp_path, capsys):
    from finetune_app.cli import main

    _, _, run_dir, _, first = evaluated
    assert not first["sides"]["before"]["cached"] and not first["sides"]["after"]["cached"]
    assert main(["eval", "--adapter", str(run_dir), "--out", str(tmp_path), "--max-tokens", str(MAX_TOKENS),
                 "--bootstrap", "200"]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["sides"]["before"]["cached"] and again["sides"]["after"]["cached"]
    assert again["results"] == first["results"] and again["metrics"] == first["metrics"]
    err = capsys.readouterr()
    assert "loading" not in err.err  # no model was loaded
    assert "cached: before, after" in err.out and "ROUGE-L F1" in err.out
    # two runs (here: an earlier checkpoint against the latest) and other settings: evaluated anew
    assert main(["eval", "--adapter", str(run_dir), "--against", str(run_dir / "checkpoints" / "step-0000002"),
                 "--out", str(tmp_path), "--max-tokens", "3", "--limit", "1", "--bootstrap", "0", "--quiet"]) == 0
    third = json.loads((tmp_path / "eval.json").read_text())
    assert third["sides"]["before"]["label"].startswith("checkpoint step 2") and third["rows"] == 1
    assert not third["sides"]["before"]["cached"] and not third["sides"]["after"]["cached"]


def test_a_cancelled_evaluation_stops_and_caches_nothing(evaluated, tmp_path):
    from finetune_app.core.compare import TunedSource
    from finetune_app.core.evaluation import EvalRequest, Side, evaluate
    from finetune_app.core.evaluation.evaluate import Cancelled
    from finetune_app.core.generate import GenerationSettings

    model, data, run_dir, *_ = evaluated
    req = EvalRequest(model=str(model), after=Side(TunedSource.detect(run_dir)), data=str(data),
                      settings=GenerationSettings(max_tokens=5), cache_dir=tmp_path / "cache")
    with pytest.raises(Cancelled) as err:
        evaluate(req, progress=False, cancelled=lambda: True)
    assert err.value.exit_code == 130
    assert not list((tmp_path / "cache").glob("*.json"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const lines = [...document.querySelectorAll('svg.chart polyline.series')];
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
    lines: lines.map(l => l.getBBox().width)});
  document.body.appendChild(out);
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_pictures_and_plot(evaluated, tmp_path):
    *_, out, result = evaluated
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", PROBE))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    done = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    probe = json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"'))
    assert probe["images"] and all(ok and w > 0 and h > 0 for ok, w, h in probe["images"]), probe
    assert len(probe["lines"]) == 2 and all(w > 100 for w in probe["lines"]), probe  # train and validation loss
    if os.environ.get("FINETUNE_EVAL_SCREENSHOT"):  # docs/screenshots/eval-report.png is made this way
        shot = Path(os.environ["FINETUNE_EVAL_SCREENSHOT"])
        subprocess.run(flags + ["--hide-scrollbars", "--window-size=1200,1500", f"--screenshot={shot}",
                                (out / "report.html").as_uri()], capture_output=True, timeout=120)
        assert shot.stat().st_size > 10_000
