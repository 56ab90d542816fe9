"""TOML config files: every preset round-trips, and every malformed file is one line naming the problem."""
from __future__ import annotations

import pytest

from slipstream.config import (BackendConfig, Config, ConfigError, format_config, load_config, parse_config,
                               preset_config)
from slipstream.debug.options import DebugOptions
from slipstream.passes import PRESETS, Pipeline


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("full", [False, True])
def test_every_preset_round_trips(preset, full):
    config = preset_config(preset)
    text = format_config(config, full=full)
    assert parse_config(text) == config
    assert format_config(parse_config(text), full=full) == text


def test_settings_round_trip_and_defaults_are_left_out():
    config = Config(Pipeline.parse('fuse-rms-norm{exclude="*.q_norm|*.k_norm"}, fuse-rope'),
                    BackendConfig(warmup=False), DebugOptions("all", True, False, "out dir"))
    text = format_config(config)
    assert text == ('version = 1\npipeline = "fuse-rms-norm{exclude=*.q_norm|*.k_norm}, fuse-rope"\n\n'
                    '[backend]\nwarmup = false\n\n[debug]\nprint-after = "all"\nverify = true\ndump-dir = "out dir"\n')
    assert parse_config(text) == config


def test_full_print_spells_every_default():
    text = format_config(preset_config("default"), full=True)
    assert 'fuse-swiglu{include=* exclude=\\"\\" geglu=true}' in text
    for key in ("name = \"module\"", "warmup = true", "print-after = \"change\"", "verify = false",
                "bisect = false", "dump-dir = \"\""):
        assert key in text


def test_load_from_file_and_optimize_reads_it(tmp_path):
    import models
    import slipstream
    path = tmp_path / "slipstream.toml"
    path.write_text('version = 1\npipeline = "fuse-swiglu"\n[debug]\nprint-after = "all"\nverify = true\n')
    assert load_config(path).pipeline == Pipeline.parse("fuse-swiglu")
    opt = slipstream.optimize(models.build("llama", num_hidden_layers=1), config=str(path))
    report = slipstream.report(opt)
    assert report.pipeline == "fuse-swiglu" and report.debug.print_after == "all"
    assert [c.rule for c in report.checks] == ["silu-times-up"]


GOOD = 'version = 1\npipeline = "default"\n'
MALFORMED = [
    ("", "f.toml: missing 'version' (add `version = 1` as the first line)"),
    ('pipeline = "default"', "f.toml: missing 'version'"),
    ('version = 2\npipeline = "default"', "f.toml: unsupported version 2: this slipstream reads version 1"),
    ('version = "1"\npipeline = "default"', "f.toml: version must be an integer, not str '1'"),
    ("version = true\npipeline = \"default\"", "f.toml: version must be an integer, not bool True"),
    ("version = 1", "f.toml: missing 'pipeline'"),
    ("version = 1\npipeline = 3", "f.toml: pipeline must be a string of pipeline text, not int"),
    ('version = 1\npipeline = ""', "f.toml: pipeline: empty pipeline text"),
    ('version = 1\npipeline = "fuse-rms-nrom"',
     "f.toml: pipeline: pipeline text, column 1: unknown pass 'fuse-rms-nrom'; did you mean 'fuse-rms-norm'?"),
    ('version = 1\npipeline = "fuse-swiglu{gelgu=true}"', "unknown option 'gelgu' for pass 'fuse-swiglu'; did you "
                                                          "mean 'geglu'?"),
    (GOOD + 'pipline = "x"', "f.toml: unknown key 'pipline'; did you mean 'pipeline'?"),
    (GOOD + "[debg]\nverify = true", "f.toml: unknown key 'debg'; did you mean 'debug'?"),
    (GOOD + "[debug]\nverfy = true", "f.toml: unknown key 'debug.verfy'; did you mean 'verify'?"),
    (GOOD + "[backend]\nwarm-up = true", "f.toml: unknown key 'backend.warm-up'; did you mean 'warmup'?"),
    (GOOD + '[backend]\nname = "gguf"', "f.toml: backend.name: unknown backend 'gguf'"),
    (GOOD + '[debug]\nprint-after = "always"',
     "f.toml: debug.print-after must be one of change, all, none, not 'always'"),
    (GOOD + '[debug]\nverify = "yes"', "f.toml: debug.verify must be bool, not str 'yes'"),
    (GOOD + "[debug]\ndump-dir = 5", "f.toml: debug.dump-dir must be str, not int 5"),
    (GOOD + 'debug = "verbose"', "f.toml: 'debug' must be a table ([debug]), not str"),
    (GOOD + "[debug]\n[debug.extra]\nx = 1", "f.toml: unknown key 'debug.extra'"),
    ("version = 1\npipeline = 'default", "f.toml: invalid TOML: "),
    ("version = 1\nversion = 1\npipeline = \"default\"", "f.toml: invalid TOML: "),
    ("[debug\nverify = true", "f.toml: invalid TOML: "),
]


@pytest.mark.parametrize("text,message", MALFORMED, ids=[f"malformed-{i}" for i in range(len(MALFORMED))])
def test_malformed_config_is_one_line_naming_the_problem(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "f.toml")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("f.toml: ") and message in str(err.value)


def test_malformed_toml_says_where(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2, column 12"):
        parse_config("version = 1\npipeline = = 'default'", "f.toml")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_unknown_preset_names_the_nearest():
    with pytest.raises(ConfigError, match="unknown preset 'defualt'; did you mean 'default'?"):
        preset_config("defualt")
