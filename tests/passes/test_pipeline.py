"""Pipeline text: parse <-> print round trip, presets, and errors that name the bad token and the way out."""
from __future__ import annotations

import pytest

from slipstream.passes import PASSES, PRESETS, Pipeline, PipelineError


@pytest.mark.parametrize("text", [
    "fuse-rms-norm",
    "fuse-rms-norm, fuse-swiglu, fuse-rope",
    "fuse-swiglu{geglu=false}, fuse-rms-norm{exclude=*.q_norm|*.k_norm}",
    'fuse-rope{include="model.layers.0.*"}',
])
def test_round_trip(text):
    p = Pipeline.parse(text)
    assert Pipeline.parse(str(p)) == p
    assert Pipeline.parse(p.full_text()) == p
    assert str(Pipeline.parse(str(p))) == str(p)


def test_canonical_form_drops_defaults_and_normalises_spacing():
    p = Pipeline.parse("  fuse-swiglu { geglu=true   exclude=x }   ,fuse-rope  ")
    assert str(p) == "fuse-swiglu{exclude=x}, fuse-rope"
    assert p.full_text() == 'fuse-swiglu{include=* exclude=x geglu=true}, fuse-rope{include=* exclude=""}'


def test_full_text_spells_every_option():
    text = Pipeline.parse("default").full_text()
    for spec in Pipeline.parse("default").specs:
        assert spec.text(full=True) in text
    assert "include=*" in text and "geglu=true" in text


def test_presets_expand():
    assert set(PRESETS) >= {"default", "train"}
    assert str(Pipeline.parse("default")) == PRESETS["default"]
    assert {s.name for s in Pipeline.parse("train").specs} <= set(PASSES)


@pytest.mark.parametrize("text,message", [
    ("fuse-rms-nrom", "unknown pass 'fuse-rms-nrom'; did you mean 'fuse-rms-norm'?"),
    ("fuse-rms-norm{bogus=1}", "unknown option 'bogus' for pass 'fuse-rms-norm'"),
    ("fuse-swiglu{gelgu=true}", "did you mean 'geglu'?"),
    ("fuse-rms-norm{include=*", "unbalanced braces"),
    ("fuse-rms-norm}", "unbalanced '}'"),
    ("fuse-swiglu{geglu=maybe}", "bad value 'maybe' for option 'geglu': expected true or false"),
    ("fuse-rms-norm,", "expected a pass name"),
    ("fuse-rms-norm fuse-rope", "expected ',' between passes"),
    ("", "empty pipeline text"),
    ("fuse-rope{include}", "option 'include' needs a value"),
    ("fuse-attention{impl=flash}", "impl must be one of auto, triton, reference, not 'flash'"),
])
def test_errors_name_the_problem(text, message):
    with pytest.raises(PipelineError) as err:
        Pipeline.parse(text)
    assert message in str(err.value)


def test_error_points_at_the_column():
    with pytest.raises(PipelineError) as err:
        Pipeline.parse("fuse-rms-norm, fuse-swigl")
    assert "column 16" in str(err.value)
    assert str(err.value).splitlines()[-1] == " " * 17 + "^"


def test_optimize_rejects_bad_pipeline_before_touching_the_model():
    import models
    import slipstream
    model = models.build("llama")
    with pytest.raises(PipelineError, match="did you mean 'fuse-rms-norm'"):
        slipstream.optimize(model, pipeline="fuse-rms-nrom")
    assert "forward" not in model.model.layers[0].__dict__
