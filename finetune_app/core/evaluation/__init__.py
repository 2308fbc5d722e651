"""Did it get better? Before/after evaluation of a fine-tune: generations scored with sacreBLEU and
rouge-score, label accuracy, token perplexity through the engine's loss, bootstrap confidence
intervals, a cache so re-running is instant, and a self-contained HTML report.

    result = evaluate(EvalRequest(model=..., after=TunedSource.detect("runs/x"), data="data/"))
    write_outputs(result, "runs/x/eval")   # eval.json + report.html
"""

from finetune_app.core.evaluation.evaluate import EvalRequest, Side, evaluate, write_outputs

__all__ = ["EvalRequest", "Side", "evaluate", "write_outputs"]
