"""Config files: TOML holding the canonical pipeline text plus backend and debug settings.

    version = 1
    pipeline = "fuse-rms-norm{exclude=*.k_norm}, fuse-swiglu, fuse-rope"

    [backend]
    name = "module"
    warmup = true

    [debug]
    print-after = "change"      # change | all | none
    verify = false
    bisect = false
    dump-dir = ""

Parse and print round-trip (`parse_config(format_config(c)) == c`). Every mistake is one line naming the file, the
key and the problem; an unknown key names the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .debug.options import DebugOptions
from .passes.pipeline import Pipeline, PipelineError
from .passes.registry import PRESETS

VERSION = 1
BACKEND_NAMES = ("module",)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BackendConfig:
    name: str = "module"          # the backend optimize() uses (export formats are `slipstream export`)
    warmup: bool = True           # one forward inside optimize() so graphs are captured and the report is complete


@dataclass(frozen=True)
class Config:
    pipeline: Pipeline
    backend: BackendConfig = field(default_factory=BackendConfig)
    debug: DebugOptions = field(default_factory=DebugOptions)
    version: int = VERSION


_TABLES = {"backend": BackendConfig, "debug": DebugOptions}
_TOP = ("version", "pipeline", *_TABLES)
_TYPES = {"str": str, "bool": bool, "int": int, "<class 'str'>": str, "<class 'bool'>": bool, "<class 'int'>": int}


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def _nearest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f" (valid: {', '.join(choices)})"


def _key(name: str) -> str:
    return name.replace("_", "-")


def parse_config(text: str, source: str = "<config>") -> Config:
    def fail(message: str):
        raise ConfigError(f"{source}: {message}")

    try:
        data = _toml_loads(text)
    except ValueError as e:  # tomllib.TOMLDecodeError: the message carries line and column
        fail(f"invalid TOML: {e}")
    for key in data:
        if key not in _TOP:
            fail(f"unknown key '{key}'{_nearest(key, _TOP)}")
    if "version" not in data:
        fail(f"missing 'version' (add `version = {VERSION}` as the first line)")
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool):
        fail(f"version must be an integer, not {type(version).__name__} {version!r}")
    if version != VERSION:
        fail(f"unsupported version {version}: this slipstream reads version {VERSION}")
    if "pipeline" not in data:
        fail(f"missing 'pipeline' (canonical pipeline text or a preset: {', '.join(PRESETS)})")
    if not isinstance(data["pipeline"], str):
        fail(f"pipeline must be a string of pipeline text, not {type(data['pipeline']).__name__}")
    try:
        pipeline = Pipeline.parse(data["pipeline"])
    except PipelineError as e:
        fail(f"pipeline: {str(e).splitlines()[0]}")
    tables = {name: _table(data.get(name, {}), name, cls, fail) for name, cls in _TABLES.items()}
    if tables["backend"].name not in BACKEND_NAMES:
        fail(f"backend.name: unknown backend '{tables['backend'].name}'{_nearest(tables['backend'].name, BACKEND_NAMES)}")
    return Config(pipeline, tables["backend"], tables["debug"], version)


def _table(values: Any, name: str, cls: type, fail) -> Any:
    if not isinstance(values, dict):
        fail(f"'{name}' must be a table ([{name}]), not {type(values).__name__}")
    fields = {_key(f.name): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            fail(f"unknown key '{name}.{key}'{_nearest(key, fields)}")
        want = _TYPES[str(fields[key].type)]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            fail(f"{name}.{key} must be {want.__name__}, not {type(value).__name__} {value!r}")
        kwargs[fields[key].name] = value
    try:
        return cls(**kwargs)
    except ValueError as e:  # the options' own validation, e.g. print-after's choices
        fail(f"{name}.{e}" if str(e).startswith(tuple(fields)) else f"{name}: {e}")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    return parse_config(path.read_text(encoding="utf-8"), str(path))


def format_config(config: Config, full: bool = False) -> str:
    """TOML text; `full` spells every pass option and every setting at its default (a template to edit)."""
    lines = [f"version = {config.version}",
             f"pipeline = {_toml_str(config.pipeline.full_text() if full else str(config.pipeline))}"]
    for name in _TABLES:
        table = getattr(config, name)
        entries = [f"{_key(f.name)} = {_toml_value(getattr(table, f.name))}" for f in dataclasses.fields(table)
                   if full or getattr(table, f.name) != f.default]
        if entries:
            lines += ["", f"[{name}]", *entries]
    return "\n".join(lines) + "\n"


def preset_config(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'{_nearest(name, PRESETS)}")
    return Config(Pipeline.parse(name))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_str(value)
    return str(value)


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
