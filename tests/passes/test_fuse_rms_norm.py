"""fuse-rms-norm: fires, refuses with a reason, agrees with eager."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models
import slipstream
from helpers import assert_agrees, optimize_with


class LlamaStyleNorm(nn.Module):
    def __init__(self, n: int, eps: float = 1e-6, weight_shape=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(weight_shape or (n,)))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class GemmaStyleNorm(LlamaStyleNorm):
    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class HeliumStyleNorm(LlamaStyleNorm):
    """Upcasts the weight before weighting (Helium): `(w.to(float32) * norm(x)).to(dtype)`."""
    weight_dtype = torch.float32

    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.to(self.weight_dtype) * h).to(x.dtype)


class HalfWeightNorm(HeliumStyleNorm):
    """Rounds the weight to fp16 first: not what the op computes."""
    weight_dtype = torch.float16


class LeakyNorm(LlamaStyleNorm):
    """Returns its normalized intermediate too: fusing would have to recompute it, so the pass must refuse."""
    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype), h.sum(-1)


class TwoNorms(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.a, self.b = LlamaStyleNorm(n, eps), GemmaStyleNorm(n, eps)

    def forward(self, x):
        return self.b(self.a(x) + x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [97, 64])
def test_fires_and_agrees(dtype, hidden):
    module = TwoNorms(hidden, eps=1e-5).to(dtype)
    x = torch.randn(3, 5, hidden, dtype=dtype)
    opt, ref, report = optimize_with(module, "fuse-rms-norm", x)
    assert report.fused("fuse-rms-norm") == 2
    rules = {rule for rule, _ in report.passes["fuse-rms-norm"].matches}
    assert rules == {"weight-times-cast", "cast-of-offset-weighted"}
    assert report.refusals() == []
    assert_agrees(opt, ref, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fires_on_an_upcast_weight_and_agrees_exactly(dtype):
    module = HeliumStyleNorm(97).to(dtype)
    x = torch.randn(3, 5, 97, dtype=dtype)
    opt, ref, report = optimize_with(module, "fuse-rms-norm", x)
    assert report.passes["fuse-rms-norm"].matches == {("cast-of-weighted", ""): 1}
    with torch.no_grad():
        assert torch.equal(opt(x), ref(x))
    assert_agrees(opt, ref, x)


def _refused(module: nn.Module, x: torch.Tensor):
    """(refusal reasons, optimized module) once nothing fused and the output still agrees with eager."""
    opt, ref, report = optimize_with(module, "fuse-rms-norm", x)
    assert report.fused("fuse-rms-norm") == 0
    assert_agrees(opt, ref, x)
    return [reason for _, _, reason in report.refusals("fuse-rms-norm")], opt


def test_refuses_a_weight_cast_to_another_dtype():
    reasons, _ = _refused(HalfWeightNorm(64), torch.randn(3, 5, 64))
    assert reasons == ["the weight is cast to torch.float16, not to the norm's torch.float32"]


def test_eps_is_captured_not_matched():
    for eps in (1e-5, 1e-6, 0.1):
        module = LlamaStyleNorm(32, eps=eps)
        x = torch.randn(2, 4, 32)
        opt, ref, report = optimize_with(module, "fuse-rms-norm", x)
        assert report.fused("fuse-rms-norm") == 1
        assert_agrees(opt, ref, x)


def test_refuses_mismatched_weight_shape():
    # one refusal per graph: the symbolic capture, then the static one of the gradient variant (size 32)
    reasons, opt = _refused(LlamaStyleNorm(32, weight_shape=(1,)), torch.randn(2, 4, 32))
    assert "weight shape (1,) does not match the normalized size 32" in reasons
    assert all("weight shape (1,) does not match the normalized size" in r for r in reasons)
    assert "weight shape (1,)" in slipstream.explain(opt)


def test_refuses_reused_intermediate():
    [reason], _ = _refused(LeakyNorm(32), torch.randn(2, 4, 32))
    assert "also used outside the pattern" in reason


def test_refuses_float64_model():
    model = models.build("llama", dtype=torch.float64)
    reference = models.build("llama", dtype=torch.float64)
    opt = slipstream.optimize(model)
    report = slipstream.report(opt)
    assert report.fused("fuse-rms-norm") == 0
    reasons = {reason for _, _, reason in report.refusals("fuse-rms-norm")}
    assert reasons == {"dtype float64 is not supported by slipstream::rms_norm (supported: float32, float16, bfloat16)"}
    assert len(report.refusals("fuse-rms-norm")) == models.expected_sites(reference)["fuse-rms-norm"]
    assert "model.layers.0.input_layernorm: refused" in slipstream.explain(opt)
    ids = models.token_batch()
    assert torch.equal(opt(ids).logits, reference(ids).logits)


def test_include_exclude_options():
    model = models.build("qwen3")
    opt = slipstream.optimize(model, pipeline="fuse-rms-norm{exclude=*.q_norm|*.k_norm}")
    report = slipstream.report(opt)
    assert report.fused("fuse-rms-norm") == 5
    assert all("excluded" in reason for _, _, reason in report.refusals())
