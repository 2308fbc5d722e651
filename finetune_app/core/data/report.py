"""The validation report: counts, one entry per problem, token-length histogram, image sizes.

`summary()` is what the CLI prints and the GUI shows; `to_dict()` is the `--json` output, stable
for scripts: rows_found, rows_usable, problems [{file, line, field, message, severity}], histogram.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from finetune_app.core.errors import Problem

_BAR = 30


@dataclass
class Report:
    rows_found: int
    rows_usable: int
    problems: list[Problem]
    usable_indices: list[int]
    token_lengths: dict[int, int] = field(default_factory=dict)  # row index -> tokens
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # image -> (w, h)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (row, earlier same row)
    row_keys: dict[int, str] = field(default_factory=dict, repr=False)  # row -> content hash
    path: str = ""
    format: str = ""
    container: str = ""
    has_images: bool = False
    rows_with_images: int = 0  # usable rows that have at least one image
    splits: dict[str, int] = field(default_factory=dict)  # own split sizes (usable rows)
    max_length: int | None = None
    images_checked: bool = True
    dataset: object = field(default=None, repr=False, compare=False)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        return self.rows_usable > 0

    def histogram(self, bins: int = 10) -> list[dict]:
        """Token lengths of usable rows in equal-width bins: [{from, to, count}]."""
        values = list(self.token_lengths.values())
        if not values:
            return []
        lo, hi = min(values), max(values)
        if lo == hi:
            return [{"from": lo, "to": hi, "count": len(values)}]
        bins = max(1, min(bins, hi - lo + 1))
        width = (hi - lo + 1) / bins
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, int((v - lo) / width))] += 1
        edge = [math.ceil(lo + k * width) for k in range(bins)] + [hi + 1]
        return [{"from": edge[k], "to": edge[k + 1] - 1, "count": c} for k, c in enumerate(counts)]

    def to_dict(self) -> dict:
        lengths = list(self.token_lengths.values())
        sizes = list(self.image_sizes.values())
        return {
            "path": self.path,
            "format": self.format,
            "container": self.container,
            "rows_found": self.rows_found,
            "rows_usable": self.rows_usable,
            "rows_dropped": self.rows_found - self.rows_usable,
            "has_images": self.has_images,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [p.to_dict() for p in self.problems],
            "duplicates": [list(d) for d in self.duplicates],
            "splits": dict(self.splits),
            "max_length": self.max_length,
            "token_lengths": ({"min": min(lengths), "median": int(statistics.median(lengths)),
                               "max": max(lengths), "mean": round(statistics.fmean(lengths), 1)}
                              if lengths else None),
            "histogram": self.histogram(),
            "images": ({"checked": len(sizes),
                        "min": list(min(sizes, key=lambda s: s[0] * s[1])),
                        "max": list(max(sizes, key=lambda s: s[0] * s[1]))}
                       if sizes else {"checked": 0}),
        }

    def summary(self, max_problems: int = 20) -> str:
        """Human text: counts, the first problems, a token-length histogram, image sizes."""
        dropped = self.rows_found - self.rows_usable
        lines = [f"Dataset: {self.path}  (format {self.format}, {self.container})",
                 f"Rows: {self.rows_found:,} found, {self.rows_usable:,} usable"
                 + (f", {dropped:,} dropped" if dropped else "")]
        if self.splits:
            lines.append("Own split: " + ", ".join(f"{k} {v:,}" for k, v in self.splits.items()))
        lines.append(f"Problems: {len(self.errors):,} error(s), {len(self.warnings):,} warning(s)")
        for p in self.problems[:max_problems]:
            where = p.file + (f" line {p.line}" if p.line is not None else "") + \
                (f" [{p.field}]" if p.field else "")
            lines.append(f"  {p.severity:7} {where}: {p.message}")
        if len(self.problems) > max_problems:
            more = len(self.problems) - max_problems
            lines.append(f"  ... and {more:,} more (use --json for all)")
        if self.duplicates:
            lines.append(f"Duplicates: {len(self.duplicates):,} row(s) repeat an earlier row")
        lines += self._length_lines()
        if self.image_sizes:
            d = self.to_dict()["images"]
            lines.append(f"Images: {d['checked']:,} checked, smallest {d['min'][0]}x{d['min'][1]}, "
                         f"largest {d['max'][0]}x{d['max'][1]}")
        elif self.has_images and not self.images_checked:
            lines.append("Images: not checked")
        if not self.ok:
            lines.append("Nothing usable remains: fix the problems above.")
        return "\n".join(lines)

    def _length_lines(self) -> list[str]:
        if not self.token_lengths:
            return ["Token lengths: not counted (pass --model to count them)"]
        d = self.to_dict()["token_lengths"]
        out = [f"Token lengths: min {d['min']}, median {d['median']}, max {d['max']}"
               + (f" (max length {self.max_length})" if self.max_length else "")]
        hist = self.histogram()
        top = max(b["count"] for b in hist)
        width = len(str(hist[-1]["to"]))
        for b in hist:
            bar = "#" * (round(_BAR * b["count"] / top) if b["count"] else 0)
            out.append(f"  {b['from']:>{width}}-{b['to']:<{width}} | {bar} {b['count']}")
        return out
