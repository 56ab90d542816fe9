"""The pipeline text form: `fuse-rms-norm, fuse-swiglu{geglu=false}, fuse-rope{exclude=*.q_norm|*.k_norm}`.

Parse and print round-trip: `Pipeline.parse(str(p)) == p`. `str(p)` is canonical (options at their default are
left out); `p.full_text()` spells every option. Errors name the bad token, its column and the nearest valid choice.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any

from .base import Pass
from .registry import PASSES, PRESETS


class PipelineError(ValueError):
    pass


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: Any

    def text(self, full: bool = False) -> str:
        parts = []
        for f in dataclasses.fields(self.options):
            value = getattr(self.options, f.name)
            if full or value != f.default:
                parts.append(f"{f.name.replace('_', '-')}={_format(value)}")
        return f"{self.name}{{{' '.join(parts)}}}" if parts else self.name


@dataclass(frozen=True)
class Pipeline:
    specs: tuple[PassSpec, ...]

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        text = text.strip()
        if text in PRESETS:
            text = PRESETS[text]
        return cls(tuple(_Parser(text).specs()))

    def __str__(self) -> str:
        return ", ".join(s.text() for s in self.specs)

    def full_text(self) -> str:
        return ", ".join(s.text(full=True) for s in self.specs)

    def build(self) -> list[Pass]:
        return [PASSES[s.name](s.options) for s in self.specs]


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if text and re.fullmatch(r"[^\s{}=,\"]+", text) else '"' + text.replace('"', '\\"') + '"'


def _nearest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.0)
    return f"; did you mean '{close[0]}'?" if close else ""


_TOKEN = re.compile(r'\s*(?:(?P<punct>[{},=])|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<word>[^\s{},="]+))')


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens = text, []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                self.fail(pos, f"unexpected character {text[pos]!r}")
            kind = next(k for k in ("punct", "quoted", "word") if m.group(k) is not None)
            value = m.group(kind)
            self.tokens.append((kind, value.replace('\\"', '"') if kind == "quoted" else value, m.start(kind)))
            pos = m.end()
        self.i = 0

    def fail(self, pos: int, message: str):
        raise PipelineError(f"pipeline text, column {pos + 1}: {message}\n  {self.text}\n  {' ' * pos}^")

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "", len(self.text))

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def specs(self) -> list[PassSpec]:
        if not self.tokens:
            raise PipelineError("empty pipeline text; valid passes: " + ", ".join(PASSES) +
                                "; presets: " + ", ".join(PRESETS))
        specs = [self.spec()]
        while self.peek()[0] != "end":
            kind, value, pos = self.take()
            if value != ",":
                self.fail(pos, f"expected ',' between passes, found {value!r}" +
                          (" (unbalanced '}')" if value == "}" else ""))
            specs.append(self.spec())
        return specs

    def spec(self) -> PassSpec:
        kind, name, pos = self.take()
        if kind != "word":
            self.fail(pos, f"expected a pass name, found {name or 'end of text'!r}")
        if name not in PASSES:
            hint = " (presets can only stand alone)" if name in PRESETS else _nearest(name, PASSES)
            self.fail(pos, f"unknown pass '{name}'{hint}")
        options = PASSES[name].Options
        values: dict[str, Any] = {}
        if self.peek()[1] == "{" and self.peek()[0] == "punct":
            open_pos = self.take()[2]
            while not (self.peek()[0] == "punct" and self.peek()[1] == "}"):
                if self.peek()[0] == "end":
                    self.fail(open_pos, f"unbalanced braces: '{{' after '{name}' is never closed")
                self.option(name, options, values)
            self.take()
        try:
            return PassSpec(name, options(**values))
        except ValueError as e:  # an option's own validation (e.g. a value outside its choices)
            self.fail(pos, f"bad options for '{name}': {e}")

    def option(self, pass_name: str, options: type, values: dict) -> None:
        kind, key, pos = self.take()
        fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(options)}
        if kind != "word":
            self.fail(pos, f"expected an option name in '{pass_name}{{...}}', found {key!r}")
        if key not in fields:
            self.fail(pos, f"unknown option '{key}' for pass '{pass_name}'{_nearest(key, fields)} "
                           f"(valid: {', '.join(fields)})")
        if self.take()[1] != "=":
            self.fail(pos, f"option '{key}' needs a value: {key}=VALUE")
        vkind, raw, vpos = self.take()
        if vkind not in ("word", "quoted"):
            self.fail(vpos, f"option '{key}' needs a value, found {raw or 'end of text'!r}")
        values[fields[key].name] = self.convert(fields[key], raw, vpos)

    def convert(self, field: dataclasses.Field, raw: str, pos: int) -> Any:
        kind = field.type if isinstance(field.type, type) else str(field.type)
        try:
            if kind in (bool, "bool"):
                if raw not in ("true", "false"):
                    raise ValueError("expected true or false")
                return raw == "true"
            if kind in (int, "int"):
                return int(raw)
            if kind in (float, "float"):
                return float(raw)
        except ValueError as e:
            self.fail(pos, f"bad value {raw!r} for option '{field.name.replace('_', '-')}': {e}")
        return raw
