"""verify=True checks every rewrite numerically; bisection finds the first rewrite that makes the output drift.
A deliberately wrong rule (broken_rules.py: RMSNorm without eps) must be named, with its first failing region."""
from __future__ import annotations

import warnings

import pytest

import broken_rules
import models
import slipstream
from slipstream.debug.bisect import bisect


def test_correct_pipeline_is_within_tolerance_everywhere():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an out-of-tolerance region would warn
        opt = slipstream.optimize(models.build("qwen3"), verify=True)
    checks = slipstream.report(opt).checks
    assert len(checks) == 9  # 4 norms + 2 rope + attention + swiglu in the layer graph, the final norm
    assert all(c.ok and c.max_rel <= c.tolerance == 1e-5 for c in checks)
    assert {c.pass_name for c in checks} == {"fuse-rms-norm", "fuse-rope", "fuse-attention", "fuse-swiglu"}
    text = slipstream.diff(opt, times=False)
    assert "verify: 9 region(s) checked · 9 ok" in text
    assert ("  ok  fuse-swiglu:silu-times-up at model.layers.0.mlp (graph 0, %74 -> %81): max abs 0, max rel 0 "
            "vs float32 tolerance 1e-05") in text.splitlines()


def test_bf16_regions_are_judged_by_the_bf16_tolerance():
    import torch
    opt = slipstream.optimize(models.build("llama", dtype=torch.bfloat16), verify=True)
    checks = slipstream.report(opt).checks
    assert checks and all(c.dtype == "bfloat16" and c.tolerance == 2e-2 and c.ok for c in checks)


def test_broken_rule_is_named_with_its_first_failing_region(monkeypatch):
    broken_rules.install(monkeypatch)
    with pytest.warns(UserWarning, match="first region out of tolerance: fuse-rms-norm:dropped-eps at "
                                         "model.layers.0.input_layernorm"):
        opt = slipstream.optimize(models.build("llama"), verify=True)
    checks = slipstream.report(opt).checks
    bad = [c for c in checks if not c.ok]
    assert [(c.rule, c.path) for c in bad] == [("dropped-eps", "model.layers.0.input_layernorm"),
                                                ("dropped-eps", "model.layers.0.post_attention_layernorm"),
                                                ("dropped-eps", "model.norm")]
    assert all(1e-4 < c.max_rel < 1e-2 and c.max_abs > 0 for c in bad)  # eps=1e-6 against mean(x^2) ~ 1e-3
    assert all(c.ok for c in checks if c.rule != "dropped-eps")  # the other rewrites are judged on their own
    text = slipstream.diff(opt, times=False)
    assert "verify: FIRST REGION OUT OF TOLERANCE: fuse-rms-norm:dropped-eps at model.layers.0.input_layernorm " \
           "(graph 0, %7 -> %61)" in text


def test_bisect_finds_the_broken_rule(monkeypatch):
    broken_rules.install(monkeypatch)
    model = models.build("llama")
    result = bisect(model)
    assert result.found and result.full_drift > result.tolerance == 1e-5
    assert (result.pass_name, result.rule, result.path) == ("fuse-rms-norm", "dropped-eps",
                                                            "model.layers.0.input_layernorm")
    assert (result.application, result.applications, result.replaces) == (1, 3, "%7 -> %61")
    assert ("first 1 pass(es)", 0.0) in result.probes  # fuse-lora-linear alone changes nothing
    assert "forward" not in model.model.layers[0].__dict__  # the model is restored afterwards


def test_bisect_on_a_correct_pipeline_finds_nothing():
    result = bisect(models.build("llama", num_hidden_layers=1))
    assert not result.found and result.full_drift == 0.0
    assert "no drift out of tolerance" in str(result)
