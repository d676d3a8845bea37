"""Generator metadata: the text chunks and EXIF fields image generators write, matched against one data table.

The table is ``generators.json`` next to this module (one rule per generator
and field layout, tried in order; see its ``about``). It is validated when this
module is imported, so a broken table fails the worker at start-up, not on the
first matching upload.

What comes out is the generator's name, the model (checkpoint) name where the
generator writes one, the rule id and the fields that matched; never the prompt
or any other free text: the AUTOMATIC1111 parser reads only the settings line,
the JSON parsers only the paths the table names, and every value is cut to one
line of at most 128 characters.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.ingest.provenance.models import Container, GeneratorSignal, SignalStatus, Strength, TextField

_MAX_VALUE = 128
# One "Key: value" pair of an AUTOMATIC1111 settings line; values may be quoted (and then hold commas).
_A1111_PAIR = re.compile(r'(?:^|,)\s*([A-Za-z][\w \-/.]{0,40}?):\s*("(?:\\.|[^\\"])*"|[^,]*)')


class ModelFrom(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    json_paths: list[str] = Field(default_factory=list, alias="json")
    regex: str | None = None


class Rule(BaseModel):
    """One row of the table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    generator: str = Field(min_length=1, max_length=80)
    fields: list[str] = Field(min_length=1)
    parser: Literal["a1111", "json", "comfyui_prompt", "comfyui_workflow", "text"]
    require: dict[str, str] | list[str] = Field(default_factory=dict)
    model: str | list[str] | None = None
    match: str | None = None
    model_from: ModelFrom | None = None
    prefix: dict[str, str] = Field(default_factory=dict)
    loaders: dict[str, str | int] = Field(default_factory=dict)
    #: What text that is not JSON means to a JSON-reading rule: a broken generator record (unreadable) or another program's prose (ignore).
    non_json: Literal["unreadable", "ignore"] = "unreadable"

    @field_validator("fields")
    @classmethod
    def _field_names(cls, v: list[str]) -> list[str]:
        for f in v:
            if not re.fullmatch(r"(png|exif):[A-Za-z][\w:.-]*", f):
                raise ValueError(f"field {f!r} is not png:<keyword> or exif:<tag>")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if not set(self.prefix) <= set(self.fields):
            raise ValueError(f"rule {self.id}: prefix names fields the rule does not read")
        if self.parser == "text" and not self.match:
            raise ValueError(f"rule {self.id}: a text rule needs a match regex")
        if self.non_json != "unreadable" and self.parser not in ("json", "comfyui_prompt", "comfyui_workflow"):
            raise ValueError(f"rule {self.id}: non_json applies to JSON-reading parsers only")
        return self


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    about: str
    rules: list[Rule] = Field(min_length=1)


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    require: dict[str, re.Pattern[str]]
    match: re.Pattern[str] | None
    model_regex: re.Pattern[str] | None


def _load() -> tuple[Table, list[_Compiled], str]:
    raw = resources.files("worker.ingest.provenance").joinpath("generators.json").read_bytes()
    table = Table.model_validate_json(raw)
    ids = [r.id for r in table.rules]
    if len(set(ids)) != len(ids):
        raise ValueError("generators.json: rule ids must be unique")
    compiled = [
        _Compiled(
            r,
            {k: re.compile(v) for k, v in r.require.items()} if isinstance(r.require, dict) else {},
            re.compile(r.match) if r.match else None,
            re.compile(r.model_from.regex) if r.model_from and r.model_from.regex else None,
        )
        for r in table.rules
    ]
    return table, compiled, hashlib.sha256(raw).hexdigest()


TABLE, _RULES, TABLE_SHA256 = _load()

#: PNG text keywords any rule reads (only these are inflated by the container walk).
TEXT_KEYS: frozenset[str] = frozenset(
    f.split(":", 1)[1] for r in TABLE.rules for f in [*r.fields, *([r.model_from.field] if r.model_from else [])] if f.startswith("png:")
)


def _clean(value: object) -> str | None:
    """One line, at most 128 characters, or None for anything that is not a non-empty string/number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = " ".join(str(value).split())[:_MAX_VALUE]
    return text or None


def a1111_settings(text: str) -> dict[str, str]:
    """The key/value pairs of an AUTOMATIC1111-style ``parameters`` text's settings line (its last line); {} when it has none.

    The prompt and negative prompt are the lines above it and are never looked at.
    """
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines or "Steps:" not in lines[-1]:
        return {}
    out: dict[str, str] = {}
    for m in _A1111_PAIR.finditer(lines[-1][:8192]):
        key, value = m.group(1).strip(), m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        out.setdefault(key, value)
    return out


def _json_path(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


class _Unreadable(Exception):
    pass


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Unreadable(f"not JSON ({type(exc).__name__})") from None


def _match(c: _Compiled, name: str, text: str, fields: dict[str, TextField]) -> tuple[bool, str | None]:
    """Does the rule match field ``name``'s text? Returns (matched, model)."""
    r = c.rule
    prefix = r.prefix.get(name)
    if prefix is not None:
        if not text.startswith(prefix):
            return False, None
        text = text[len(prefix) :]
    if r.parser == "a1111":
        settings = a1111_settings(text)
        if not settings or not all(k in settings and p.search(settings[k]) for k, p in c.require.items()):
            return False, None
        return True, _clean(settings.get(r.model)) if isinstance(r.model, str) else None
    if r.parser == "text":
        if c.match is None or not c.match.search(text[:256]):
            return False, None
        return True, _model_from(c, fields)
    try:
        doc = _load_json(text)
    except _Unreadable:
        if r.non_json == "ignore":
            return False, None
        raise
    if r.parser == "json":
        if not isinstance(doc, dict) or not all(_json_path(doc, p) is not None for p in (r.require if isinstance(r.require, list) else [])):
            return False, None
        paths = r.model if isinstance(r.model, list) else [r.model] if r.model else []
        return True, next((m for m in (_clean(_json_path(doc, p)) for p in paths) if m), None) or _model_from(c, fields)
    if r.parser == "comfyui_prompt":
        nodes = [n for n in doc.values() if isinstance(n, dict)] if isinstance(doc, dict) else []
        if not nodes or not all("class_type" in n for n in nodes):
            return False, None
        for n in nodes:
            key = r.loaders.get(str(n.get("class_type")))
            inputs = n.get("inputs")
            if isinstance(key, str) and isinstance(inputs, dict) and (m := _clean(inputs.get(key))):
                return True, m
        return True, None
    # comfyui_workflow
    graph = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(graph, list) or not any(isinstance(n, dict) and "type" in n for n in graph):
        return False, None
    for n in graph:
        if not isinstance(n, dict):
            continue
        index = r.loaders.get(str(n.get("type")))
        widgets = n.get("widgets_values")
        if isinstance(index, int) and isinstance(widgets, list) and len(widgets) > index and (m := _clean(widgets[index])):
            return True, m
    return True, None


def _model_from(c: _Compiled, fields: dict[str, TextField]) -> str | None:
    spec = c.rule.model_from
    if spec is None or spec.field not in fields:
        return None
    text = fields[spec.field].text
    if c.model_regex is not None:
        m = c.model_regex.search(text[:1024])
        return _clean(m.group(1)) if m else None
    try:
        doc = _load_json(text)
    except _Unreadable:
        return None
    return next((m for m in (_clean(_json_path(doc, p)) for p in spec.json_paths) if m), None)


def generator_signal(container: Container) -> GeneratorSignal:
    """Match the container's text fields against the table; first matching rule wins."""
    fields: dict[str, TextField] = {}
    for t in container.texts:
        fields.setdefault(t.where, t)
    problems = list(container.text_problems)
    winner: tuple[Rule, str | None, list[str]] | None = None
    for c in _RULES:
        for name in c.rule.fields:
            if name not in fields:
                continue
            try:
                matched, model = _match(c, name, fields[name].text, fields)
            except _Unreadable as exc:
                problems.append(f"{name}: {exc}")
                continue
            if not matched:
                continue
            if winner is None:
                winner = (c.rule, model, [name])
            elif winner[0].generator == c.rule.generator and name not in winner[2]:
                winner[2].append(name)
                if winner[1] is None and model:
                    winner = (winner[0], model, winner[2])
    if winner is not None:
        rule, model, matched_fields = winner
        return GeneratorSignal(
            status=SignalStatus.found,
            strength=Strength.claimed,
            ai_declared=True,
            generator=rule.generator,
            model=model,
            rule=rule.id,
            fields=matched_fields[:16],
            detail="; ".join(problems)[:300] or None,
        )
    if problems:
        return GeneratorSignal(status=SignalStatus.unreadable, detail="; ".join(problems)[:300])
    return GeneratorSignal(status=SignalStatus.absent)
