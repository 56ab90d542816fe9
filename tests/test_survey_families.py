"""examples/survey_families.py end to end on two families the tests do not build elsewhere: GPT-NeoX (partial
rotary whose width is read off cos, decode graphs included) and Mixtral (MoE: graph breaks below the layer)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SURVEY = Path(__file__).resolve().parents[1] / "examples" / "survey_families.py"


@pytest.fixture(scope="module")
def survey():
    spec = importlib.util.spec_from_file_location("survey_families", SURVEY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.survey


@pytest.mark.parametrize("family,fused,refused", [
    ("gpt_neox", "fuse-rope 4, fuse-attention 2", ["refused by fuse-swiglu: 'gelu' node"]),
    ("mixtral", "fuse-rms-norm 5, fuse-swiglu 3, fuse-rope 4, fuse-attention 2",
     ["refused by fuse-attention: 'softmax' node 'routing_weights' fits none of this pass's rules"]),
])
@pytest.mark.slow
def test_survey_reports_exact_results_and_reasons(survey, family, fused, refused):
    head, *reasons = survey(family).splitlines()
    assert head == f"{family}: logits max rel error 0.0e+00, greedy generate identical; fused: {fused}"
    assert len(reasons) == len(refused) and all(r.strip().startswith(w) for r, w in zip(reasons, refused))
