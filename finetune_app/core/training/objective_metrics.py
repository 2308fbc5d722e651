"""The numbers a preference or reward objective reports besides its loss, named once for every
front end (the Training screen's plot, the run History, the CLI line, the trackers).

They arrive two ways: DPO/IPO/ORPO put window means in a TrainReport's `metrics`; GRPO sends an
ObjectiveReport per step (its rollouts' rewards), and one per evaluation with split "valid" (the
held-out reward). `from_row` reads either, as an event dict or a metrics.jsonl / run-database row;
held-out values are named "valid/<name>".
"""

from __future__ import annotations

import math

# name -> label, in the order a metric selector lists them
LABELS = {
    "reward_accuracy": "reward accuracy",
    "reward_margin": "reward margin",
    "chosen_logps": "chosen log-probability",
    "rejected_logps": "rejected log-probability",
    "nll": "chosen NLL (ORPO)",
    "kl": "KL to the reference",
    "reward_mean": "reward mean",
    "reward_std": "reward spread (std)",
    "reward_group_std": "reward spread within groups",
}
VALID = "valid/"


def shown(name: str) -> bool:
    """A metric worth plotting: a known one, or a GRPO reward term's mean (reward_<term>)."""
    return name in LABELS or (name.startswith("reward_") and name != "reward_")


def label(name: str) -> str:
    held_out = name.startswith(VALID)
    base = name[len(VALID):] if held_out else name
    text = LABELS.get(base) or f"reward: {base[len('reward_'):]}"
    return f"{text} (held out)" if held_out else text


def from_row(row: dict) -> dict[str, float]:
    """name -> value of the objective metrics in one event dict / metrics row (none: {})."""
    kind = row.get("kind")
    if kind == "train":
        prefix = ""
    elif kind == "objective":
        prefix = "" if row.get("split", "train") == "train" else VALID
    else:
        return {}
    out = {}
    for k, v in (row.get("metrics") or {}).items():
        try:
            value = float(v)
        except (TypeError, ValueError):
            continue
        if shown(k) and math.isfinite(value):
            out[prefix + k] = value
    return out


def order_key(name: str) -> tuple:
    base = name[len(VALID):] if name.startswith(VALID) else name
    known = list(LABELS)
    return (known.index(base) if base in known else len(known), base, name.startswith(VALID))


def series(rows) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (steps, values) over rows in step order (a later row of a step replaces an earlier one)."""
    by_name: dict[str, dict[int, float]] = {}
    for row in rows:
        if "step" not in row:
            continue
        for name, value in from_row(row).items():
            by_name.setdefault(name, {})[int(row["step"])] = value
    return {name: (sorted(points), [points[s] for s in sorted(points)])
            for name, points in sorted(by_name.items(), key=lambda kv: order_key(kv[0]))}


def text(m: dict) -> str:
    """' | reward acc 0.75 margin 0.123 logp chosen/rejected -12.3/-15.6' (DPO, IPO, ORPO) or
    ' | reward 0.53±0.21 kl 0.0100' (GRPO); '' for SFT."""
    out = ""
    if "reward_accuracy" in m:
        out += f" | reward acc {m['reward_accuracy']:.2f} margin {m.get('reward_margin', 0.0):.3f}"
        if "chosen_logps" in m and "rejected_logps" in m:
            out += f" logp chosen/rejected {m['chosen_logps']:.1f}/{m['rejected_logps']:.1f}"
    if "reward_mean" in m:
        out += f" | reward {m['reward_mean']:.3f}±{m.get('reward_std', 0.0):.3f}"
    if "kl" in m:
        out += f" kl {m['kl']:.4f}" if out else f" | kl {m['kl']:.4f}"
    return out
