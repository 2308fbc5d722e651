"""Verifiable rewards for GRPO: functions of (completion, row's answer) that need no network and
no second model, combined by a weighted sum written as a string in the settings.

The spec is a comma-separated list of terms, each `name[:argument]:weight` (weight 1 when left
out):

    match            the completion equals the answer (surrounding whitespace ignored)
    normalized       equal after lower-casing, collapsing whitespace and dropping punctuation
    regex:PATTERN    the pattern is found in the completion (write /PATTERN/ when it holds , or :)
    json[:SCHEMA]    the completion is a JSON value; with SCHEMA (a .json file), valid against it
    length:MIN-MAX   the completion has MIN to MAX characters

e.g. "match:1.0,json:0.5,length:20-80:0.2". Each term scores 0 or 1; the reward is the weighted
sum. A spec is parsed once (`parse`), with errors that say which term and character are wrong.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from finetune_app.core.errors import ConfigError

SETTING = "grpo_rewards"
TERMS = {"match": 0, "normalized": 0, "regex": 1, "json": 0, "length": 1}  # name -> required arguments
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def exact_match(completion: str, answer: str) -> float:
    return float(completion.strip() == answer.strip())


def normalized_match(completion: str, answer: str) -> float:
    return float(normalize(completion) == normalize(answer))


def regex_reward(pattern: re.Pattern) -> Callable[[str, str], float]:
    return lambda completion, answer: float(pattern.search(completion) is not None)


def length_reward(low: int, high: int) -> Callable[[str, str], float]:
    return lambda completion, answer: float(low <= len(completion.strip()) <= high)


def json_reward(schema: dict | None = None) -> Callable[[str, str], float]:
    """1 for a completion that is one JSON value (and, with a schema, valid against it)."""
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.validators.validator_for(schema)(schema)

    def score(completion: str, answer: str) -> float:
        try:
            value = json.loads(completion.strip())
        except ValueError:
            return 0.0
        return float(validator is None or validator.is_valid(value))

    return score


@dataclass(frozen=True)
class Term:
    name: str  # as written, with its argument: "regex:^A", "length:20-80"
    weight: float
    fn: Callable[[str, str], float]


@dataclass(frozen=True)
class Reward:
    """A parsed spec: `score(completion, answer) -> (total, {term: 0 or 1})`."""

    spec: str
    terms: tuple[Term, ...]

    def score(self, completion: str, answer: str) -> tuple[float, dict[str, float]]:
        parts = {t.name: t.fn(completion, answer) for t in self.terms}
        return sum(t.weight * parts[t.name] for t in self.terms), parts


def _error(spec: str, at: int, what: str) -> ConfigError:
    return ConfigError(f"The reward spec '{spec}' is wrong at character {at + 1}: {what}.",
                       "Write terms like \"match:1.0,json:0.5,length:20-80:0.2\" (names: "
                       f"{', '.join(TERMS)}; regex:/PATTERN/ when the pattern holds , or :).", field=SETTING)


def _split(spec: str) -> list[tuple[int, str, list[tuple[int, str]]]]:
    """[(offset, name, [(offset, argument), ...])] for each comma-separated term."""
    terms, i, n = [], 0, len(spec)
    while i < n:
        while i < n and spec[i] == " ":
            i += 1
        start = i
        while i < n and (spec[i].isalnum() or spec[i] == "_"):
            i += 1
        name, args = spec[start:i], []
        if not name:
            raise _error(spec, start, "a term name is missing")
        while i < n and spec[i] == ":":
            i += 1
            at = i
            if i < n and spec[i] == "/":  # /pattern/: may hold , and :
                j = i + 1
                while j < n and spec[j] != "/":
                    j += 2 if spec[j] == "\\" else 1
                if j >= n:
                    raise _error(spec, i, "the pattern opened with / is not closed")
                args.append((at, spec[i + 1:j]))
                i = j + 1
            else:
                while i < n and spec[i] not in ":,":
                    i += 1
                args.append((at, spec[at:i].strip()))
        while i < n and spec[i] == " ":
            i += 1
        if i < n and spec[i] != ",":
            raise _error(spec, i, f"expected ',' or ':' after '{name}'")
        terms.append((start, name, args))
        i += 1
    return terms


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def parse(spec: str, *, base_dir: str | Path | None = None) -> Reward:
    """The Reward a spec describes; a ConfigError (field grpo_rewards) naming the bad character.
    `base_dir`: where relative schema paths are looked up."""
    if not spec or not spec.strip():
        raise ConfigError("The reward spec is empty.", "Give at least one term, e.g. \"match:1.0\".", field=SETTING)
    terms, seen = [], set()
    for at, name, args in _split(spec):
        if name not in TERMS:
            raise _error(spec, at, f"unknown reward '{name}'")
        weight = 1.0
        if len(args) > TERMS[name] and _number(args[-1][1]) is not None:
            weight = _number(args.pop()[1])
        if len(args) < TERMS[name]:
            raise _error(spec, at, f"'{name}' needs an argument ({'regex:PATTERN' if name == 'regex' else 'length:MIN-MAX'})")
        if len(args) > (1 if name == "json" else TERMS[name]):
            raise _error(spec, args[-1][0], f"'{name}' takes {'at most one argument' if name == 'json' else 'no argument' if not TERMS[name] else 'one argument'} before its weight")
        label = name + "".join(":" + a for _, a in args)
        if label in seen:
            raise _error(spec, at, f"'{label}' is given twice")
        seen.add(label)
        terms.append(Term(label, weight, _make(spec, name, args, base_dir)))
    return Reward(spec, tuple(terms))


def _make(spec: str, name: str, args: list, base_dir) -> Callable[[str, str], float]:
    if name == "match":
        return exact_match
    if name == "normalized":
        return normalized_match
    at, arg = args[0] if args else (None, None)
    if name == "regex":
        try:
            return regex_reward(re.compile(arg))
        except re.error as exc:
            raise _error(spec, at, f"the pattern '{arg}' is not a regular expression ({exc})") from None
    if name == "length":
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", arg)
        if not m or int(m.group(1)) > int(m.group(2)):
            raise _error(spec, at, f"'{arg}' is not a window MIN-MAX of characters (e.g. 20-80)")
        return length_reward(int(m.group(1)), int(m.group(2)))
    if arg is None:
        return json_reward()
    return json_reward(_schema(spec, at, arg, base_dir))


def data_dir(data: str | Path | None) -> Path | None:
    """Where a spec's relative schema paths are looked up: the dataset's folder (the dataset
    itself when it is a folder)."""
    if not data:
        return None
    path = Path(data).expanduser()
    return path if path.is_dir() else path.parent


def _schema(spec: str, at: int, arg: str, base_dir) -> dict:
    path = Path(arg).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"The JSON schema '{path}' of the reward spec cannot be read ({exc.strerror or exc}).",
                          "Give the path of a JSON Schema file (relative to the dataset's folder or absolute).",
                          file=path, field=SETTING) from None
    except ValueError as exc:
        raise ConfigError(f"The JSON schema '{path}' is not valid JSON ({exc}).",
                          "Fix the schema file.", file=path, field=SETTING) from None
    try:
        import jsonschema
    except ImportError:
        raise ConfigError("A JSON schema was given in the reward spec, but the 'jsonschema' package is not installed.",
                          "Install it (pip install jsonschema), or use 'json' without a schema.",
                          field=SETTING) from None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"'{path}' is not a valid JSON Schema ({exc.message}).", "Fix the schema file.",
                          file=path, field=SETTING) from None
    return schema
