"""User-facing errors: one paragraph that names the problem and the fix.

Everything the engine refuses is raised as a FinetuneError, so the CLI can print it and exit
with a stable code, and the GUI can show it in a dialog instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class FinetuneError(Exception):
    """A problem the user can fix. `str(err)` is the one-paragraph message."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "", *, file: str | Path | None = None,
                 line: int | None = None, field: str | None = None):
        self.problem = problem.strip()
        self.fix = fix.strip()
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(self.message)

    @property
    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    @property
    def message(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        if self.fix:
            text = f"{text} {self.fix}"
        return text


class ModelError(FinetuneError):
    """The base model cannot be found, read or trained."""

    exit_code = 3


class DataError(FinetuneError):
    """The dataset cannot be read or has nothing usable."""

    exit_code = 4


class ConfigError(FinetuneError):
    """A hyperparameter or setting is invalid."""

    exit_code = 5


class AdapterError(FinetuneError):
    """An adapter does not match the base model or cannot be read."""

    exit_code = 6


@dataclass(frozen=True)
class Problem:
    """One row-level finding of a validation pass (not raised; collected in a report)."""

    file: str
    line: int | None
    field: str | None
    message: str
    severity: str = "error"  # "error" drops the row, "warning" keeps it

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field,
                "message": self.message, "severity": self.severity}
