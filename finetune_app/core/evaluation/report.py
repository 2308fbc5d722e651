"""The evaluation as one self-contained HTML file: loss curves as inline SVG, the metrics table with
deltas and bootstrap intervals, and the rows that changed most with their pictures as data: URIs.
No scripts, no fonts or styles from the network: it opens the same offline, mailed or archived."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

THUMB = 128  # longest side of a row's picture in the report, pixels

STYLE = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.better{color:#137333;font-weight:600}.worse{color:#c5221f;font-weight:600}.ci{color:#777;font-size:11px}
.meta{color:#555;font-size:13px}.charts{display:flex;flex-wrap:wrap;gap:16px}code{font-size:12px}
img.thumb{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;border:1px solid #ddd}
"""

LABELS = {"bleu": "BLEU (sacreBLEU)", "chrf": "chrF (sacreBLEU)", "rouge1": "ROUGE-1 F1", "rouge2": "ROUGE-2 F1",
          "rougeL": "ROUGE-L F1", "exact_match": "Exact match", "normalised_match": "Normalised match",
          "perplexity": "Perplexity", "nll_per_token": "NLL per token"}


def accuracy_label(key: str) -> str:
    slot = key.split("/", 1)[1]
    return "Accuracy: every label" if slot == "all" else f"Accuracy: {slot}"


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(name: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if name in ("bleu", "chrf"):
        return f"{value:.2f}"
    if name.startswith("accuracy/") or name in ("exact_match", "normalised_match"):
        return f"{value:.1%}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _fmt_delta(name: str, value) -> str:
    if name.startswith("accuracy/") or name in ("exact_match", "normalised_match"):
        return f"{value * 100:+.1f} pt"
    return f"{value:+.2f}" if name in ("bleu", "chrf") or abs(value) >= 10 else f"{value:+.4f}"


def _ci(name: str, ci, delta: bool = False) -> str:
    if not ci:
        return ""
    f = (lambda v: _fmt_delta(name, v)) if delta else (lambda v: _fmt(name, v))
    return f"<div class='ci'>95% CI [{esc(f(ci[0]))}, {esc(f(ci[1]))}]</div>"


# ---- loss curves --------------------------------------------------------------------------------

def loss_svg(title: str, series: list[tuple[str, str, list]], width: int = 520, height: int = 260) -> str:
    """A line chart as inline SVG: series are (name, colour, [[step, value], ...])."""
    points = [(x, y) for _, _, pts in series for x, y in pts if y is not None and math.isfinite(y)]
    if not points:
        return ""
    left, right, top, bottom = 56, 12, 28, 36
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{esc(title)}'>",
           f"<rect x='0' y='0' width='{width}' height='{height}' fill='white'/>",
           f"<text x='{left}' y='18' font-size='13' font-weight='600'>{esc(title)}</text>"]
    for k in range(5):  # horizontal grid with value labels
        v = y0 + (y1 - y0) * k / 4
        y = sy(v)
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>")
        out.append(f"<text x='{left - 6}' y='{y + 4:.1f}' font-size='10' text-anchor='end' fill='#555'>{v:.3g}</text>")
    for v in sorted({round(x0 + (x1 - x0) * k / 4) for k in range(5)}):  # whole steps
        out.append(f"<text x='{sx(v):.1f}' y='{height - bottom + 14}' font-size='10' text-anchor='middle' fill='#555'>{v}</text>")
    out.append(f"<text x='{left + pw / 2:.1f}' y='{height - 6}' font-size='11' text-anchor='middle' fill='#555'>step</text>")
    out.append(f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>")
    for i, (name, colour, pts) in enumerate(series):
        pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        if not pts:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f"<polyline class='series' data-name='{esc(name)}' fill='none' stroke='{colour}' stroke-width='2' points='{path}'/>")
        if len(pts) < 30:
            out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{colour}'/>" for x, y in pts]
        lx = left + 10 + i * 130
        out.append(f"<line x1='{lx}' x2='{lx + 18}' y1='{top + 12}' y2='{top + 12}' stroke='{colour}' stroke-width='3'/>")
        out.append(f"<text x='{lx + 22}' y='{top + 16}' font-size='11'>{esc(name)}</text>")
    out.append("</svg>")
    return "".join(out)


# ---- pictures -----------------------------------------------------------------------------------

def thumbnail_uri(path: str) -> str | None:
    """A small PNG of a row's picture as a data: URI (None when it cannot be read)."""
    if not path:
        return None
    try:
        from PIL import Image, ImageOps

        with Image.open(Path(path)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except Exception:
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---- the page -----------------------------------------------------------------------------------

def render(result: dict) -> str:
    from finetune_app.core.evaluation.evaluate import changed_most

    sides = result["sides"]
    b, a = result["metrics"]["before"], result["metrics"]["after"]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>Evaluation: {esc(sides['after']['label'])}</title><style>{STYLE}</style></head><body>",
             "<h1>Did it get better?</h1>",
             f"<p class='meta'>Before: <b>{esc(sides['before']['label'])}</b> &nbsp;·&nbsp; After: <b>{esc(sides['after']['label'])}</b><br>"
             f"Base model: <code>{esc(result['model'])}</code> &nbsp;·&nbsp; Data: <code>{esc(result['data'])}</code> "
             f"({esc(result['split'])} rows: {result['rows']}, scored: {result['scored']})<br>"
             f"Generation: max {result['settings']['max_tokens']} tokens, temperature {result['settings']['temperature']}, "
             f"top-p {result['settings']['top_p']} (the same for both sides) &nbsp;·&nbsp; {esc(result['created'])}</p>"]

    curves = result.get("loss_curves") or {}
    charts = []
    for side, c in curves.items():
        series = [("train loss", "#1a73e8", c["train"]), ("validation loss", "#e8710a", c["val"])]
        charts.append(loss_svg(f"Loss of run {Path(c['run']).name} ({side})", series))
    if any(charts):
        parts.append("<h2>Loss curves</h2><div class='charts'>" + "".join(charts) + "</div>")

    parts.append("<h2>Metrics</h2><table class='metrics'><tr><th>Metric</th><th>Before</th><th>After</th><th>Change</th></tr>")
    ci_b, ci_a = result["ci95"]["before"], result["ci95"]["after"]
    order = [k for k in a if k.startswith("accuracy/")] + [k for k in LABELS if k in a]
    for k in order:
        d = result["deltas"].get(k)
        cls = ""
        if d and d.get("ci95"):
            lo, hi = d["ci95"]
            sign = -1 if d["lower_is_better"] else 1
            if lo * sign > 0 and hi * sign > 0:
                cls = "better"
            elif lo * sign < 0 and hi * sign < 0:
                cls = "worse"
        name = LABELS.get(k) or accuracy_label(k)
        if d and d["lower_is_better"]:
            name += " (lower is better)"
        parts.append(f"<tr><td>{esc(name)}</td><td class='num'>{_fmt(k, b.get(k))}{_ci(k, ci_b.get(k))}</td>"
                     f"<td class='num'>{_fmt(k, a.get(k))}{_ci(k, ci_a.get(k))}</td>"
                     f"<td class='num {cls}'>{esc(_fmt_delta(k, d['delta'])) if d else ''}{_ci(k, d.get('ci95') if d else None, True)}</td></tr>")
    parts.append("</table>")
    boot = result["bootstrap"]
    parts.append(f"<p class='meta'>Intervals: paired bootstrap over the scored rows, {boot['resamples']} resamples; "
                 "a change is coloured when its whole 95% interval lies on one side of zero.")
    if result["label_slots"]:
        slots = "; ".join(f"<b>{esc(s['name'])}</b>: {esc(', '.join(s['values']))}" for s in result["label_slots"])
        parts.append(f"<br>Label sets detected from the references: {slots}.")
    parts.append("</p>")

    rows = changed_most(result)
    parts.append("<h2>Rows that changed most</h2>")
    if not rows:
        parts.append("<p class='meta'>The two sides wrote the same text on every scored row.</p>")
    else:
        has_images = any(r.get("image") for r in rows)
        parts.append("<table class='rows'><tr><th>#</th>" + ("<th>Picture</th>" if has_images else "")
                     + "<th>Reference</th><th>Before</th><th>After</th><th>ROUGE-L</th></tr>")
        for r in rows:
            pic = ""
            if has_images:
                uri = thumbnail_uri(r.get("image", ""))
                pic = f"<td><img class='thumb' alt='{esc(r['label'])}' src='{uri}'></td>" if uri else "<td>–</td>"
            sb, sa = r["scores"]["before"]["rouge_l"], r["scores"]["after"]["rouge_l"]
            cls = "better" if r["change"] > 0 else "worse" if r["change"] < 0 else ""
            parts.append(f"<tr><td>{esc(r['index'])}</td>{pic}<td>{esc(r['reference'])}</td><td>{esc(r['outputs']['before'])}</td>"
                         f"<td>{esc(r['outputs']['after'])}</td><td class='num {cls}'>{sb:.2f} → {sa:.2f}</td></tr>")
        parts.append("</table>")

    sig = result["signatures"]
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    parts.append(f"<h2>Reproducing these numbers</h2><p class='meta'>BLEU: <code>{esc(sig['bleu'])}</code><br>"
                 f"chrF: <code>{esc(sig['chrf'])}</code><br>ROUGE: rouge-score, F1, Porter stemmer, mean over rows.<br>"
                 f"Perplexity: exp(mean negative log-likelihood per answer token) through the training loss.<br>"
                 f"Libraries: {esc(versions)}. Every output and score is in <code>eval.json</code> beside this file.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
